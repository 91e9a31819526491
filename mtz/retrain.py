"""Light joint retraining of a zipped multi-task model (TMC Sec. 2.3.3).

All tasks train together: each step draws one batch per task and minimises the
weighted sum of the per-task losses, so shared blocks receive every task's
gradient. Each task's loss is its labels' cross-entropy, or with `distill` = β > 0
the distillation loss (1 − β) CE + β T² KL(teacher ‖ task) of `models.losses`,
the teacher being the task's network before zipping: the zipped network learns
to keep computing what the separate ones computed. Batches come from `tf.data`
datasets of (x, y), repeated as needed.

Under a `tf.distribute.Strategy` in scope (variables of the zipped model created
in its scope), every step runs on every replica with its share of each global
batch, losses scaled for the global batch and gradients all-reduced by the
optimizer.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from models import losses


@dataclasses.dataclass
class Retrainer:
    """Callable for `zip_state(retrain=...)`: `steps` joint Adam steps per call.

    Attributes:
      datasets: one (x, y) dataset per task (batched: the global batch); repeated.
      steps: optimisation steps per zipped layer (0: none).
      learning_rate: Adam step size.
      task_weights: loss weight per task (default 1 each).
      multilabel: per task, sigmoid cross-entropy instead of softmax.
      teachers: per task, the network before zipping (Keras model or callable
        x -> logits) for distillation; required when `distill` > 0.
      distill: β in [0, 1], weight of the distillation term.
      temperature: T > 0 of the distillation.
      total_steps: steps run so far (over all calls).
      trace_from: steps per call from which the step is traced into a graph
        (`tf.function`). The model is rebuilt after each zipped layer, so every
        call traces anew, which costs seconds; fewer steps than this run eagerly
        (same maths, faster in total). Under a strategy with several replicas the
        step is always traced.
    """

    datasets: list
    _: dataclasses.KW_ONLY
    steps: int = 100
    learning_rate: float = 1e-4
    task_weights: list | None = None
    multilabel: list | None = None
    teachers: list | None = None
    distill: float = 0.0
    temperature: float = 2.0
    total_steps: int = 0
    trace_from: int = 16

    def __post_init__(self):
        if self.distill > 0 and (self.teachers is None
                                 or len(self.teachers) != len(self.datasets)):
            raise ValueError(f"distill={self.distill} needs one teacher per task "
                             f"({len(self.datasets)}), received "
                             f"{None if self.teachers is None else len(self.teachers)}")
        losses.distillation_loss(np.zeros(1, np.int64), np.zeros((1, 2), np.float32),
                                 np.zeros((1, 2), np.float32) if self.distill else None,
                                 beta=self.distill, temperature=self.temperature)  # checks
        strategy = tf.distribute.get_strategy()
        repeated = [ds.repeat() for ds in self.datasets]
        if strategy.num_replicas_in_sync > 1:
            repeated = [strategy.experimental_distribute_dataset(ds) for ds in repeated]
        self._iterators = [iter(ds) for ds in repeated]

    def _task_loss(self, t, x, y, output):
        multilabel = (self.multilabel or [False] * len(self.datasets))[t]
        teacher = None
        if self.distill > 0:
            teacher = tf.stop_gradient(_call(self.teachers[t], x))
        per_example = losses.distillation_loss(y, output, teacher, beta=self.distill,
                                               temperature=self.temperature,
                                               multilabel=multilabel)
        return tf.nn.compute_average_loss(per_example)   # / global batch (all replicas)

    def __call__(self, model: keras.Model, state=None) -> dict:
        """Runs `steps` joint steps on `model` (in place).

        Args:
          model: the multi-task Keras model (one input and output per task).
          state: the `ZipState` (unused; the signature of `zip_state`'s callback).
        Returns:
          {"steps", "loss_first", "loss_last"}.
        Raises:
          FloatingPointError: a non-finite loss.
        """
        if self.steps <= 0:
            return {"steps": 0}
        weights = self.task_weights or [1.0] * len(self.datasets)
        strategy = tf.distribute.get_strategy()
        variables = model.trainable_variables
        with strategy.scope():                 # slots made here, not in the first step
            optimizer = keras.optimizers.Adam(self.learning_rate)
            optimizer.build(variables)

        def replica_step(batches):
            with tf.GradientTape() as tape:
                outputs = model([x for x, _ in batches], training=True)
                if len(batches) == 1:
                    outputs = [outputs]
                total = tf.add_n([w * self._task_loss(t, x, y, o) for t, (w, (x, y), o)
                                  in enumerate(zip(weights, batches, outputs))])
            grads = tape.gradient(total, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return total

        def step(batches):
            per_replica = strategy.run(replica_step, args=(batches,))
            return strategy.reduce("SUM", per_replica, axis=None)

        if self.steps >= self.trace_from or strategy.num_replicas_in_sync > 1:
            step = tf.function(step)

        history = []
        for _ in range(self.steps):
            loss = float(step([next(it) for it in self._iterators]))
            if not np.isfinite(loss):
                raise FloatingPointError(f"retraining diverged: loss {loss}")
            history.append(loss)
        self.total_steps += self.steps
        return {"steps": self.steps, "loss_first": history[0], "loss_last": history[-1]}


def _call(model, x):
    return model(x, training=False) if isinstance(model, keras.Model) else model(x)
