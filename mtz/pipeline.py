"""Zip trained networks on their tasks' data and report accuracy at every stage.

`zip_trained` is what `scripts/zip.py` and the LeNet benchmark run: evaluate
the separate networks, zip without retraining, zip with joint retraining, and
evaluate again (validation and test splits; nothing is selected on test).
"""
from __future__ import annotations

import time

import numpy as np

import data
from models import training
from mtz.api import zip_models
from mtz.retrain import Retrainer


def hessian_inputs(task: str, data_dir, samples: int, seed: int) -> np.ndarray:
    """`samples` shuffled training examples of `task` [samples, *input_shape]."""
    batch = next(iter(data.load(task, "train", data_dir, batch_size=samples, seed=seed)))
    return batch[0].numpy()


def member_names(tasks) -> list[str]:
    """Task names, suffixed `_0`, `_1`, ... where a task appears more than once."""
    return [t if list(tasks).count(t) == 1 else f"{t}_{i}" for i, t in enumerate(tasks)]


def accuracies(members, tasks, data_dir, limit=None) -> dict:
    """{member name: {"validation": acc, "test": acc}} for per-task callables."""
    return {name: {split: training.evaluate(m, task, split, data_dir, limit=limit)["accuracy"]
                   for split in ("validation", "test")}
            for m, task, name in zip(members, tasks, member_names(tasks))}


def zip_trained(models_, tasks, data_dir=None, share="1.0", method="greedy",
                retrain_steps=100, batch_size=64, learning_rate=3e-4, hessian_samples=1000,
                seed=0, eval_limit=None, no_retrain_baseline=True, progress=print):
    """Zips `models_` (one per task) and returns (ZippedModel, report dict).

    Args:
      retrain_steps: joint retraining steps after each zipped layer (0: none).
      no_retrain_baseline: also zip once without retraining and report it.
    """
    for model, task in zip(models_, tasks):
        training.check_compatible(model, task)
    start = time.time()
    names = member_names(tasks)
    report = {"tasks": list(tasks), "members": names, "share": share, "method": method, "seed": seed,
              "retrain_steps_per_layer": retrain_steps, "batch_size": batch_size,
              "learning_rate": learning_rate, "hessian_samples": hessian_samples}
    report["before"] = accuracies(models_, tasks, data_dir, eval_limit)
    inputs = [hessian_inputs(t, data_dir, hessian_samples, seed) for t in tasks]
    if no_retrain_baseline:
        plain = zip_models(models_, inputs, names=names, share=share, method=method, seed=seed,
                           hessian_samples=hessian_samples)
        report["after_zip"] = accuracies([plain.member(i) for i in range(len(tasks))], tasks,
                                         data_dir, eval_limit)
        report["records_no_retrain"] = plain.records
    retrainer = None
    if retrain_steps > 0:
        datasets = [data.load(t, "train", data_dir, batch_size, seed=seed + i, augment=True)
                    for i, t in enumerate(tasks)]
        retrainer = Retrainer(datasets, retrain_steps, learning_rate,
                              multilabel=[data.get(t).multilabel for t in tasks])
    zipped = zip_models(models_, inputs, names=names, share=share, method=method, seed=seed,
                        hessian_samples=hessian_samples, retrain=retrainer, progress=progress)
    report["after_retrain"] = accuracies([zipped.member(i) for i in range(len(tasks))],
                                         tasks, data_dir, eval_limit)
    report["retrain_iterations"] = retrainer.total_steps if retrainer else 0
    report["records"] = zipped.records
    report["parameters"] = zipped.parameter_counts()
    report["seconds"] = round(time.time() - start, 2)
    zipped.extra["member_tasks"] = list(tasks)
    return zipped, report
