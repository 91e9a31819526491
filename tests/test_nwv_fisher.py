"""nwv.fisher: the vectorised diagonal Fisher against a slow per-sample loop, and
against the Fisher stored with the reference mnist network."""
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from nwv import fisher
from nwv.fisher import FisherDefinition


def _tiny_model(seed=0, outputs=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(6, activation="tanh", name="fc1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs, name="logits")(x))


def _slow_fisher(model, x, definition, multilabel=False):
    """One GradientTape per sample and per output: the definition, literally."""
    total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    for i in range(len(x)):
        logits = model(x[i:i + 1]).numpy()[0]
        if multilabel:
            p_on = 1 / (1 + np.exp(-logits))
            terms = [(a, v) for a in range(len(logits)) for v in (True, False)]
            if definition == "predicted":
                terms = [(a, bool(logits[a] >= 0)) for a in range(len(logits))]
        else:
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            terms = range(len(logits)) if definition == "expected" else \
                [int(np.argmax(logits))]
        for term in terms:
            with tf.GradientTape() as tape:
                z = model(x[i:i + 1])[0]
                if multilabel:
                    a, on = term
                    log_p = tf.math.log_sigmoid(z[a] if on else -z[a])
                    weight = p_on[a] if on else 1 - p_on[a]
                else:
                    log_p = tf.nn.log_softmax(z)[term]
                    weight = probs[term]
            for t, g in zip(total, tape.gradient(log_p, model.trainable_variables)):
                t += weight * g.numpy().astype(np.float64) ** 2
    return [t / len(x) for t in total]


@pytest.mark.parametrize("definition", ["expected", "predicted"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_vectorised_equals_per_sample_loop(definition, multilabel):
    model = _tiny_model()
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    fast = fisher.diagonal_fisher(model, x, num_samples=7, definition=definition,
                                  multilabel=multilabel, batch_size=3)
    slow = _slow_fisher(model, x, definition, multilabel)
    assert [f.shape for f in fast] == [tuple(v.shape) for v in model.trainable_variables]
    for a, b in zip(fast, slow):
        assert a.dtype == np.float32 and np.all(a >= 0)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_dataset_input_num_samples_and_expected_dominates_predicted():
    model = _tiny_model(1)
    x = np.random.default_rng(1).normal(size=(10, 5)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(10, np.int64))).batch(4)
    from_ds = fisher.diagonal_fisher(model, ds, num_samples=6)
    from_array = fisher.diagonal_fisher(model, x[:6], num_samples=100)   # runs out at 6
    for a, b in zip(from_ds, from_array):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    predicted = fisher.diagonal_fisher(model, x, num_samples=10,
                                       definition=FisherDefinition.PREDICTED)
    expected = fisher.diagonal_fisher(model, x, num_samples=10, definition="expected")
    # the predicted-class term is one of the non-negative terms of the expectation
    assert all(np.all(e >= p - 1e-6) for e, p in zip(expected, predicted))


def test_errors_are_clear():
    model = _tiny_model()
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="expected a Fisher definition"):
        fisher.diagonal_fisher(model, x, num_samples=2, definition="empirical")
    with pytest.raises(ValueError, match="num_samples >= 1"):
        fisher.diagonal_fisher(model, x, num_samples=0)
    with pytest.raises(ValueError, match="at least one input example"):
        fisher.diagonal_fisher(model, x[:0], num_samples=2)


def _mnist_sample(shared_dir, every=250):
    """Every `every`-th training digit of the shared tarball (all classes), /255."""
    images, i = [], 0
    with tarfile.open(f"{shared_dir}/datasets/mnist_train.tar.gz", "r|gz") as archive:
        for member in archive:
            if member.isfile():
                i += 1
                if i % every == 0:
                    png = archive.extractfile(member).read()
                    images.append(tf.io.decode_png(png, channels=1).numpy())
    return np.stack(images).astype(np.float32) / 255.0


def test_predicted_definition_correlates_with_reference_fisher(shared_dir):
    import models
    from models import artifacts

    path = f"{shared_dir}/reference/nwv/mnist.npz"
    net = artifacts.load_model(path, "nwv_mnist")
    ours = np.concatenate([f.ravel() for f in fisher.diagonal_fisher(
        net, _mnist_sample(shared_dir), num_samples=240, definition="predicted")])
    stored = np.concatenate([f.ravel() for f in models.load_reference_fisher(path)])
    correlation = np.corrcoef(ours, stored)[0, 1]
    print(f"Pearson correlation with the stored mnist Fisher: {correlation:.3f}, "
          f"mass ratio {ours.sum() / stored.sum():.2f}")
    # Both are noisy estimates (the reference used 100 random samples): related, not equal.
    assert correlation > 0.6
