"""Training with validation-based checkpoint selection, and evaluation, for one task.

Checkpoints are selected on the validation split only; the test split is read
once, after selection, to report.
"""
from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

import data
from models import artifacts


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and makes TF ops deterministic.

    Args:
      seed: the seed.
    Returns:
      None.
    Raises:
      Nothing.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def loss_and_metric(task: str):
    """(loss, accuracy metric) for the task's head: softmax or multi-label sigmoid."""
    spec = data.get(task)
    if spec.multilabel:
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"))
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"))


def build_for_task(model_name: str | None, task: str) -> keras.Model:
    """Builds `model_name` (default: the task's default model) with the task's
    number of classes, e.g. `nwv_mnist` with 2 outputs for `mnist_parity`."""
    from models import registry

    spec = data.get(task)
    name = model_name or spec.default_model
    overrides = {}
    if registry.info(name).num_classes != spec.num_classes:
        overrides["num_classes"] = spec.num_classes
    return registry.build(name, **overrides)


def check_compatible(model: keras.Model, task: str) -> None:
    """Raises ValueError when the model's input or output does not fit the task."""
    spec = data.get(task)
    if tuple(model.input_shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"model {model.name!r} takes inputs {tuple(model.input_shape[1:])}"
                         f" but task {task!r} yields {spec.input_shape}")
    if model.output_shape[-1] != spec.num_classes:
        raise ValueError(f"model {model.name!r} has {model.output_shape[-1]} outputs but "
                         f"task {task!r} has {spec.num_classes} classes")


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar over the epochs of `fit`, showing the validation accuracy.

    Args:
      epochs: the epochs `fit` runs; description: the bar's label.
    """

    def __init__(self, epochs: int, description: str):
        super().__init__()
        from tqdm import tqdm
        self.bar = tqdm(total=epochs, desc=description, unit="epoch", leave=False)

    def on_epoch_end(self, epoch, logs=None):
        """Advances the bar."""
        self.bar.set_postfix(val_accuracy=f"{(logs or {}).get('val_accuracy', 0.0):.4f}")
        self.bar.update()

    def on_train_end(self, logs=None):
        """Closes the bar."""
        self.bar.close()


def train(model: keras.Model, task: str, out_dir: str, *, data_dir: str | None = None,
          epochs: int = 10, batch_size: int = 128, learning_rate: float = 1e-3,
          seed: int = 0, limit: int | None = None, verbose: int = 1,
          progress: str | None = None) -> dict:
    """Trains `model` on `task`, keeps the epoch with the best validation accuracy.

    Adam with a cosine learning-rate decay from `learning_rate` to 0 over all epochs.
    Writes `<out_dir>/model.keras` (the selected epoch) and `metrics.json`
    (validation and test accuracy of the selected model, history, wall time).

    Args:
      model: a Keras model fitting the task (`check_compatible`); trained in place.
      task: registered task.
      out_dir: output folder (created).
      data_dir: local data folder or tarball(s); None: TFDS.
      epochs, batch_size, learning_rate: Adam with cosine decay over all steps.
      seed: seed of the data order and augmentation (seed the initialisation with
        `set_seed` before building the model).
      limit: at most this many examples per split (quick runs).
      verbose: Keras verbosity (1: a progress bar per epoch).
      progress: label of a tqdm bar over the epochs (with verbose=0: one bar for
        the whole training).
    Returns:
      The metrics dictionary written to `metrics.json`.
    Raises:
      ValueError: the model does not fit the task; data errors of `data.load`.
    """
    check_compatible(model, task)
    set_seed(seed)
    loss, metric = loss_and_metric(task)
    train_ds = data.load(task, "train", data_dir, batch_size, seed=seed, augment=True,
                         limit=limit)
    steps = int(train_ds.cardinality()) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1))
    model.compile(keras.optimizers.Adam(schedule), loss, metrics=[metric])
    val_ds = data.load(task, "validation", data_dir, batch_size, limit=limit)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, artifacts.MODEL_FILE)
    checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="val_accuracy", mode="max",
                                                 save_best_only=True)
    start = time.time()
    callbacks = [checkpoint] + ([EpochProgress(epochs, progress)] if progress else [])
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False,
                        callbacks=callbacks, verbose=verbose)   # the dataset is shuffled
    seconds = time.time() - start
    best = artifacts.load_model(path)
    best_epoch = int(np.argmax(history.history["val_accuracy"]))
    test = evaluate(best, task, "test", data_dir=data_dir, batch_size=batch_size, limit=limit)
    metrics = {
        "task": task, "model": model.name, "seed": seed, "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "limit": limit,
        "best_epoch": best_epoch + 1,
        "val_accuracy": float(history.history["val_accuracy"][best_epoch]),
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "train_seconds": round(seconds, 2),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    artifacts.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def evaluation_batches(task: str, split: str = "test", *, data_dir: str | None = None,
                       batch_size: int = 256, limit: int | None = None) -> tf.data.Dataset:
    """The (x, y) batches `evaluate` reads, in order, kept in memory after the first
    pass: a loop that evaluates every round preprocesses its split once (the keyword
    MFCCs, the image scaling) instead of every round. Same batches, same numbers."""
    return data.load(task, split, data_dir, batch_size, shuffle=False, limit=limit).cache()


def evaluate(model, task: str, split: str = "test", *, data_dir: str | None = None,
             batch_size: int = 256, limit: int | None = None, batches=None) -> dict:
    """Accuracy and mean loss of `model` (any callable x -> logits) on a split.

    Args:
      model: a Keras model (called with training=False) or a callable x -> logits.
      task: registered task; split: "train", "validation" or "test".
      data_dir: local data; None: TFDS.
      batch_size: examples per call.
      limit: at most this many examples (a fixed random subset, see `data.load`).
      batches: the split's (x, y) batches already loaded (`evaluation_batches`);
        then `data_dir`, `batch_size` and `limit` are not used.
    Returns:
      {"task", "split", "accuracy", "loss", "examples"}.
    Raises:
      ValueError: an empty split; data errors of `data.load`.
    """
    loss_fn, metric = loss_and_metric(task)
    total_loss, count = 0.0, 0
    if batches is None:
        batches = data.load(task, split, data_dir, batch_size, shuffle=False, limit=limit)
    for x, y in batches:
        logits = model(x, training=False) if isinstance(model, keras.Model) else model(x)
        metric.update_state(y, logits)
        total_loss += float(loss_fn(y, logits)) * int(tf.shape(x)[0])
        count += int(tf.shape(x)[0])
    if count == 0:
        raise ValueError(f"task {task!r} split {split!r} holds no examples")
    return {"task": task, "split": split, "accuracy": float(metric.result()),
            "loss": total_loss / count, "examples": count}
