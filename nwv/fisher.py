"""Diagonal Fisher information of a classifier's weights, from per-sample gradients.

Neural weight virtualization (Lee & Nirjon, MobiSys 2020) scores how much each
weight matters by the diagonal of the Fisher information: page matching costs
Σ(F₁+F₂)(w₁−w₂)² and the round-robin optimisation penalises λ·Σ F (w − w')².
Two definitions are offered (`FisherDefinition`):

  * `EXPECTED` (default), the true Fisher: the expectation over the model's own
    predictive distribution,

        F = mean_x Σ_y p(y|x) · (∂ log p(y|x) / ∂w)²

    It is the curvature (expected Hessian of −log p) of the loss at the model's
    optimum, so (w − w*)ᵀ diag(F) (w − w*) is the Laplace estimate of the loss
    increase that the matching cost and the penalty stand for. It needs no
    labels and does not vanish where the model is confident but not certain.
  * `PREDICTED`, the original NWV code's estimate: only the predicted class
    ŷ = argmax_y p(y|x), weighted by its probability,

        F = mean_x p(ŷ|x) · (∂ log p(ŷ|x) / ∂w)²

    It is the single largest term of the expectation; cheaper (one gradient per
    sample instead of one per class) but biased low, most where the model is
    unsure. The reference `.npz` files store this one (100 random samples).

Neither uses the labels (that would be the "empirical Fisher", which is not a
curvature). For a multi-label (sigmoid) head each attribute is an independent
Bernoulli, whose Fisher adds up: the sums run over the attributes and their two
values.

Per-sample gradients are vectorised: one `GradientTape.jacobian` with
`experimental_use_pfor=True` of the [batch, K] log-probabilities per chunk of
examples, in one traced graph, never one graph per sample. The chunk is kept
small enough that the [batch, K, n_weights] Jacobian stays below
`max_jacobian_bytes`. Under a `tf.distribute.Strategy` with several replicas each
replica computes its share of every batch and the sums are reduced (SUM).

Example (arrays or a `tf.data` dataset of batches):

    >>> import models
    >>> net = models.build("lenet_300_100", units=(8, 4))
    >>> f = diagonal_fisher(net, np.random.rand(16, 28, 28, 1), num_samples=16)
    >>> [x.shape for x in f] == [tuple(v.shape) for v in net.trainable_variables]
    True
"""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from models.choices import Choice

__all__ = ["FisherDefinition", "diagonal_fisher", "fisher_log_probs"]

DEFAULT_MAX_JACOBIAN_BYTES = 256 << 20


class FisherDefinition(Choice):
    """Which diagonal Fisher to estimate; a string ("expected", "predicted") is accepted."""
    EXPECTED = "expected"
    PREDICTED = "predicted"

    @classmethod
    def _label(cls) -> str:
        return "Fisher definition"


def fisher_log_probs(logits, definition=FisherDefinition.EXPECTED, multilabel=False):
    """The log-probabilities whose squared gradients the Fisher averages, and their weights.

    Args:
      logits: [batch, C] classifier outputs (pre-softmax / pre-sigmoid).
      definition: `FisherDefinition` (or its string).
      multilabel: C independent sigmoid attributes instead of one softmax.

    Returns:
      (log_p [batch, K], weight [batch, K]) with F = mean_b Σ_k weight_bk (∂ log_p_bk/∂w)²;
      `weight` is a constant (no gradient). K = C (expected, softmax), 1 (predicted,
      softmax), 2C (expected, multi-label) or C (predicted, multi-label).
    """
    definition = FisherDefinition.parse(definition)
    logits = tf.convert_to_tensor(logits, tf.float32)
    if multilabel:
        log_p = tf.concat([tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)], 1)
        if definition is FisherDefinition.PREDICTED:
            on = logits >= 0                                   # predicted value per attribute
            log_p = tf.where(on, tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits))
    else:
        log_p = tf.nn.log_softmax(logits, axis=-1)
        if definition is FisherDefinition.PREDICTED:
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            log_p = tf.gather(log_p, predicted[:, None], axis=1, batch_dims=1)
    return log_p, tf.stop_gradient(tf.exp(log_p))


@contextlib.contextmanager
def _without_remapper():
    """Grappler's remapper fails on the pfor-vectorised LeakyReLU gradient (harmless,
    but it logs an ERROR line); it is switched off while the Fisher graph runs."""
    previous = tf.config.optimizer.get_experimental_options().get("remapping", True)
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": previous})


def _as_dataset(inputs) -> tf.data.Dataset:
    """Unbatched examples x from a dataset of x or (x, y) batches, or an array [N, ...]."""
    if isinstance(inputs, tf.data.Dataset):
        spec = inputs.element_spec
        ds = inputs.map(lambda *xy: xy[0]) if isinstance(spec, tuple) else inputs
        return ds.unbatch()
    array = np.asarray(inputs, np.float32)
    if array.ndim < 2:
        raise ValueError(f"expected inputs of shape [N, ...], received {array.shape}")
    return tf.data.Dataset.from_tensor_slices(array)


def diagonal_fisher(model: keras.Model, inputs, *, num_samples: int = 256,
                    definition=FisherDefinition.EXPECTED, multilabel: bool = False,
                    batch_size: int = 32,
                    max_jacobian_bytes: int = DEFAULT_MAX_JACOBIAN_BYTES) -> list:
    """Diagonal Fisher information of every trainable variable of `model`.

    F = mean_x Σ_k weight_k(x) · (∂ log p_k(x) / ∂w)², see `fisher_log_probs` and the
    module docstring for the two definitions. The model is only read (inference mode).

    Args:
      model: Keras classifier returning logits [batch, C].
      inputs: `tf.data.Dataset` of x or (x, y) batches (labels are ignored), or an
        array [N, *input_shape]; the first `num_samples` examples are used.
      num_samples: number of examples averaged (N ≥ 1); fewer if `inputs` runs out.
      definition: `FisherDefinition.EXPECTED` (default) or `PREDICTED` (original NWV).
      multilabel: the head is C independent sigmoids.
      batch_size: examples per vectorised Jacobian (reduced to fit `max_jacobian_bytes`).
      max_jacobian_bytes: bound on the float32 [batch, K, n_weights] Jacobian.

    Returns:
      list of float32 arrays ≥ 0 shaped like `model.trainable_variables`.

    Raises:
      ValueError: num_samples < 1, no examples, an unknown definition, a model without
        trainable variables, or non-finite Fisher values (naming the variable).
    """
    definition = FisherDefinition.parse(definition)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"expected num_samples >= 1, received {num_samples!r}")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(f"model {model.name!r} has no trainable variables")
    n_weights = sum(int(np.prod(v.shape)) for v in variables)
    k = int(model.output_shape[-1])
    k = (2 * k if multilabel else k) if definition is FisherDefinition.EXPECTED else \
        (k if multilabel else 1)
    chunk = int(max(1, min(batch_size, max_jacobian_bytes // (4 * k * n_weights))))

    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]

    @tf.function(input_signature=signature)
    def chunk_sum(x):
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            log_p, weight = fisher_log_probs(logits, definition, multilabel)
        jacobians = tape.jacobian(log_p, variables, experimental_use_pfor=True)
        flat_weight = tf.reshape(weight, [-1])
        sums = []
        for jac, var in zip(jacobians, variables):      # jac: [batch, K, *var.shape]
            squares = tf.reshape(tf.square(jac), [tf.size(flat_weight), -1])
            sums.append(tf.reshape(tf.linalg.matvec(squares, flat_weight, transpose_a=True),
                                   var.shape))
        return sums

    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def distributed_sum(x):       # each replica its share of the batch; sums reduced
        parts = strategy.run(lambda xb: chunk_sum(tf.cast(xb, tf.float32)) + [
            tf.cast(tf.shape(xb)[0], tf.float32)], args=(x,))
        return [strategy.reduce("SUM", p, axis=None) for p in parts]

    totals = [np.zeros(v.shape, np.float64) for v in variables]
    count = 0
    # one trace per network is by design (each has its own function): TensorFlow's
    # "excessive retracing" warning over several networks is silenced here
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")
    with _without_remapper(), contextlib.ExitStack() as restore:
        restore.callback(logger.setLevel, level)
        ds = _as_dataset(inputs).take(int(num_samples)).batch(chunk * replicas)
        if replicas > 1:
            ds = strategy.experimental_distribute_dataset(ds)
        for x in ds:
            *parts, n = (distributed_sum(x) if replicas > 1
                         else chunk_sum(tf.cast(x, tf.float32)) + [float(x.shape[0])])
            for total, part in zip(totals, parts):
                total += np.asarray(part, np.float64)
            count += int(round(float(n)))
    if count == 0:
        raise ValueError("expected at least one input example for the Fisher, received 0")
    fisher = [(t / count).astype(np.float32) for t in totals]
    for value, var in zip(fisher, variables):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"Fisher of variable {var.path!r} holds NaN/inf values: check "
                             f"the weights and inputs of model {model.name!r}")
    return fisher
