"""Light joint retraining of a zipped multi-task model (TMC Sec. 2.3.3).

All tasks train together: each step draws one batch per task and minimises the
weighted sum of the per-task losses, so shared blocks receive every task's
gradient. Batches come from `tf.data` datasets of (x, y), repeated as needed.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Retrainer:
    """Callable for `zip_state(retrain=...)`: `steps` joint Adam steps per call.

    Attributes:
      datasets: one (x, y) dataset per task (batched); repeated indefinitely.
      steps: optimisation steps per zipped layer (0: none).
      learning_rate: Adam step size.
      task_weights: loss weight per task (default 1 each).
      multilabel: per task, sigmoid cross-entropy instead of softmax.
    """

    datasets: list
    _: dataclasses.KW_ONLY
    steps: int = 100
    learning_rate: float = 1e-4
    task_weights: list | None = None
    multilabel: list | None = None
    total_steps: int = 0

    def __post_init__(self):
        self._iterators = [iter(ds.repeat()) for ds in self.datasets]

    def _losses(self):
        multilabel = self.multilabel or [False] * len(self.datasets)
        return [keras.losses.BinaryCrossentropy(from_logits=True) if m else
                keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                for m in multilabel]

    def __call__(self, model: keras.Model, state=None) -> dict:
        if self.steps <= 0:
            return {"steps": 0}
        weights = self.task_weights or [1.0] * len(self.datasets)
        losses = self._losses()
        optimizer = keras.optimizers.Adam(self.learning_rate)
        variables = model.trainable_variables

        @tf.function
        def step(batches):
            with tf.GradientTape() as tape:
                outputs = model([x for x, _ in batches], training=True)
                per_task = [w * fn(y, o) for w, fn, (_, y), o in
                            zip(weights, losses, batches, outputs)]
                total = tf.add_n(per_task)
            grads = tape.gradient(total, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return total

        history = []
        for _ in range(self.steps):
            loss = float(step([next(it) for it in self._iterators]))
            if not np.isfinite(loss):
                raise FloatingPointError(f"retraining diverged: loss {loss}")
            history.append(loss)
        self.total_steps += self.steps
        return {"steps": self.steps, "loss_first": history[0], "loss_last": history[-1]}
