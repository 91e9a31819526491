"""Zip trained networks on their tasks' data and report accuracy at every stage.

`zip_trained` is what `scripts/zip.py`, the demo and the LeNet benchmark run:
evaluate the separate networks, zip without retraining, zip with joint
retraining, and evaluate again (validation and test splits; nothing is
selected on test).
"""
from __future__ import annotations

import time

import numpy as np

import data
from models import training
from mtz.api import ZippedModel, zip_models
from mtz.retrain import Retrainer
from mtz.zipper import ZipConfig


def hessian_inputs(task: str, data_dir: str | None = None, *, samples: int,
                   seed: int = 0) -> np.ndarray:
    """Shuffled training examples of a task for the layer-wise Hessians.

    Args:
      task: registered task; data_dir: local data (None: TFDS).
      samples: number of examples; seed: shuffling seed.
    Returns:
      [samples, *input_shape] float32 (fewer if the split is smaller).
    Raises:
      ValueError / FileNotFoundError: as `data.load`.
    """
    batch = next(iter(data.load(task, "train", data_dir, batch_size=samples, seed=seed)))
    return batch[0].numpy()


def member_names(tasks) -> list[str]:
    """Task names, suffixed `_0`, `_1`, ... where a task appears more than once.

    Args:
      tasks: the members' task names.
    Returns:
      One unique name per member.
    """
    return [t if list(tasks).count(t) == 1 else f"{t}_{i}" for i, t in enumerate(tasks)]


def accuracies(members, tasks, *, data_dir=None, limit=None) -> dict:
    """Validation and test accuracy of one callable or model per task.

    Args:
      members: Keras models or callables x -> logits, one per task.
      tasks: their tasks; data_dir, limit: as `training.evaluate`.
    Returns:
      {member name: {"validation": accuracy, "test": accuracy}}.
    """
    return {name: {split: training.evaluate(m, task, split, data_dir=data_dir,
                                            limit=limit)["accuracy"]
                   for split in ("validation", "test")}
            for m, task, name in zip(members, tasks, member_names(tasks))}


def task_retrainer(models, tasks, *, data_dir=None, steps: int, batch_size: int = 64,
                   learning_rate: float = 3e-4, distill: float = 0.0,
                   temperature: float = 2.0, seed: int = 0,
                   limit: int | None = None) -> Retrainer:
    """The joint retrainer of zipping on the tasks' augmented training splits.

    Args:
      models: the networks before zipping, one per task (the teachers when
        `distill` > 0).
      tasks: the registered task of each model (may repeat).
      data_dir: local data (None: TFDS).
      steps: retraining steps after each zipped layer.
      batch_size, learning_rate: of the retraining (Adam).
      distill, temperature: distillation from `models` (β = 0: labels only).
      seed: shuffling seed of the first task (task i: seed + i).
      limit: at most this many training examples per task.
    Returns:
      An `mtz.Retrainer` for `zip_models(retrain=...)`.
    Raises:
      ValueError / FileNotFoundError: as `data.load` and `mtz.Retrainer`.
    """
    datasets = [data.load(t, "train", data_dir, batch_size, seed=seed + i, augment=True,
                          limit=limit) for i, t in enumerate(tasks)]
    return Retrainer(datasets, steps=steps, learning_rate=learning_rate,
                     multilabel=[data.get(t).multilabel for t in tasks],
                     teachers=list(models) if distill > 0 else None,
                     distill=distill, temperature=temperature)


def zip_trained(models, tasks, *, data_dir=None, config: ZipConfig | None = None,
                retrain_steps: int = 100, batch_size: int = 64, learning_rate: float = 3e-4,
                distill: float = 0.0, temperature: float = 2.0,
                eval_limit: int | None = None, no_retrain_baseline: bool = True,
                progress=print) -> tuple[ZippedModel, dict]:
    """Zips trained networks (one per task) and reports accuracy at every stage.

    Args:
      models: trained Keras models of one architecture (`mtz.zip_models`).
      tasks: the registered task of each model (may repeat).
      data_dir: local data (None: TFDS).
      config: `ZipConfig` (default: all neurons, greedy); its `hessian_samples`
        training examples per task feed the Hessians.
      retrain_steps: joint retraining steps after each zipped layer (0: none).
      batch_size, learning_rate: of the joint retraining (Adam).
      distill, temperature: distillation of each task from its network before
        zipping during retraining (β = 0: labels only; `mtz.Retrainer`).
      eval_limit: evaluate on at most this many examples per split.
      no_retrain_baseline: also zip once without retraining and report it.
      progress: callable told about every zipped layer (None: silent).
    Returns:
      (ZippedModel, report) with the report's "before", "after_zip" and
      "after_retrain" accuracies, records, parameters and seconds.
    Raises:
      ValueError: a model that does not fit its task; errors of `mtz.zip_models`.
    """
    config = config or ZipConfig()
    for model, task in zip(models, tasks):
        training.check_compatible(model, task)
    start = time.time()
    names = member_names(tasks)
    report = {"tasks": list(tasks), "members": names, "share": str(config.share),
              "method": config.method.value, "seed": config.seed,
              "retrain_steps_per_layer": retrain_steps, "batch_size": batch_size,
              "learning_rate": learning_rate, "distill": distill,
              "temperature": temperature, "hessian_samples": config.hessian_samples}
    report["before"] = accuracies(models, tasks, data_dir=data_dir, limit=eval_limit)
    inputs = [hessian_inputs(t, data_dir, samples=config.hessian_samples, seed=config.seed)
              for t in tasks]
    if no_retrain_baseline:
        plain = zip_models(models, inputs, names=names, config=config)
        report["after_zip"] = accuracies([plain.member(i) for i in range(len(tasks))], tasks,
                                         data_dir=data_dir, limit=eval_limit)
        report["records_no_retrain"] = plain.records
    retrainer = None
    if retrain_steps > 0:
        retrainer = task_retrainer(models, tasks, data_dir=data_dir, steps=retrain_steps,
                                   batch_size=batch_size, learning_rate=learning_rate,
                                   distill=distill, temperature=temperature,
                                   seed=config.seed)
    zipped = zip_models(models, inputs, names=names, config=config, retrain=retrainer,
                        progress=progress)
    report["after_retrain"] = accuracies([zipped.member(i) for i in range(len(tasks))],
                                         tasks, data_dir=data_dir, limit=eval_limit)
    report["retrain_iterations"] = retrainer.total_steps if retrainer else 0
    report["records"] = zipped.records
    report["parameters"] = zipped.parameter_counts()
    report["seconds"] = round(time.time() - start, 2)
    report.update(alpha=config.alpha, damping=config.damping, sparse=config.sparse,
                  per_tap=config.per_tap)
    zipped.extra["member_tasks"] = list(tasks)
    return zipped, report
