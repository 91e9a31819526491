"""The main job's application code (`scripts/demo.py`): train, zip, virtualize, switch, export.

Application code, not library: it strings the library's verbs together, times
them and draws figures.

1. Train (or reuse) one network per task with validation-based selection; a
   cached network is reused only if it was trained with the same settings.
2. Zip the networks of one architecture with MTZ (joint retraining with
   distillation from the separate networks).
3. Store the zipped model in a page pool, add the other networks by Fisher
   page matching (NWV), jointly optimise the pool (distillation, one schedule,
   selection on validation).
4. Report per-task test accuracy apart and pooled (also with int8 pages),
   memory, switching latency (in-memory page-table switch vs reload from disk,
   page cache evicted), and export one SavedModel and one TFLite file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

import _bench
import data
import mtz
import nwv
from models import artifacts, training
from nwv import export, state


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Settings of `run_demo`; `quick()` gives the one-minute variant used by tests.

    Every task here exists in TensorFlow Datasets, so the default runs with or
    without `--data_dir`. The separate networks train with batches of 32 under a
    cosine schedule for the epochs after which the ten-network benchmark's
    networks of the same architectures stop gaining on validation (with batches
    of 128 and 6 / 5 / 15 epochs, mnist and cifar10 stopped 1.6 and 6.6 points
    lower on test). The zip retrains 1000 steps and the pool optimises 12 rounds of
    400 joint steps: with 200 and 6 x 200, mnist ended 0.58 points below its
    separate network (0.56 of them lost in the zip); with 1000 and 6 x 200, 0.50.
    """

    zip_tasks: tuple = ("mnist", "mnist_parity")
    other_tasks: tuple = ("cifar10",)
    epochs: dict = dataclasses.field(default_factory=lambda: {
        "mnist": 12, "mnist_parity": 10, "cifar10": 30, "tts_commands": 60})
    default_epochs: int = 10
    batch_size: int = 32
    limit: int | None = None
    share: str = "0.9"
    retrain_steps: int = 1000
    rounds: int = 12
    steps: int = 400
    distill: float = 0.7
    page_size: int = 100
    switches: int = 20
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        """A one-minute run of the same path (64 examples per split, a step or two)."""
        return cls(**{**dict(epochs={}, default_epochs=1, limit=64, retrain_steps=3,
                             rounds=1, steps=3, switches=3), **overrides})

    def epochs_for(self, task: str) -> int:
        return self.epochs.get(task, self.default_epochs)


def _train(task, out_dir, data_dir, config):
    """The task's separate network, trained once for these settings."""
    model = data.get(task).default_model
    folder = _bench.trained(
        task, model, data_dir=data_dir, cache_dir="", epochs=config.epochs_for(task),
        seed=config.seed, limit=config.limit, overrides=_bench.class_overrides(model, task),
        learning_rate=1e-3, batch_size=config.batch_size,
        folder=os.path.join(out_dir, "nets", task), progress=f"training {task}",
        log=lambda line: tqdm.write(line))
    return artifacts.load_model(folder)


def _accuracy(model, task, data_dir, config):
    return training.evaluate(model, task, "test", data_dir=data_dir,
                             limit=config.limit)["accuracy"]


def _zip(nets, data_dir, config):
    zip_config = mtz.ZipConfig(share=config.share, hessian_samples=500, seed=config.seed)
    return mtz.zip_trained([nets[t] for t in config.zip_tasks], list(config.zip_tasks),
                           data_dir=data_dir, config=zip_config,
                           retrain_steps=config.retrain_steps, distill=config.distill,
                           eval_limit=config.limit, no_retrain_baseline=False, progress=None)


def _pool(pool_dir, zipped, nets, data_dir, config):
    shutil.rmtree(pool_dir, ignore_errors=True)
    nwv.save_zipped(pool_dir, zipped, page_size=config.page_size, data_dir=data_dir,
                    fisher_samples=128, seed=config.seed,
                    teachers={t: nets[t] for t in config.zip_tasks})
    for t in config.other_tasks:
        nwv.add_network(pool_dir, nets[t], name=t, task=t, model_name=data.get(t).default_model,
                        model_overrides=_bench.class_overrides(data.get(t).default_model, t),
                        data_dir=data_dir, page_size=config.page_size, fisher_samples=128,
                        seed=config.seed)


def _optimise(pool_dir, data_dir, config):
    return nwv.optimize_pool(pool_dir, nwv.OptimizeConfig(
        mode="joint", rounds=config.rounds, steps=config.steps, distill=config.distill,
        seed=config.seed, limit=config.limit), data_dir=data_dir, log=None)


def run_demo(out_dir: str, data_dir: str | None, config: DemoConfig) -> dict:
    """Runs the whole workflow into `out_dir`; returns (and writes) `summary.json`."""
    start = time.time()
    tasks = list(config.zip_tasks) + list(config.other_tasks)
    stages = tqdm(total=6, desc="demo", unit="stage")
    nets = {t: _train(t, out_dir, data_dir, config) for t in tasks}
    stages.update()
    before = {t: _accuracy(nets[t], t, data_dir, config) for t in tasks}
    zipped, zip_report = _zip(nets, data_dir, config)
    stages.update()
    pool_dir = os.path.join(out_dir, "pool")
    _pool(pool_dir, zipped, nets, data_dir, config)
    stages.update()
    opt = _optimise(pool_dir, data_dir, config)
    stages.update()
    runtime = nwv.VirtualizedNetworks.load(pool_dir)
    after = {t: _accuracy(lambda x, t=t: runtime.run(t, x), t, data_dir, config)
             for t in tasks}
    quantized = nwv.VirtualizedNetworks.load(pool_dir, storage="int8")
    after_int8 = {t: _accuracy(lambda x, t=t: quantized.run(t, x), t, data_dir, config)
                  for t in tasks}
    x_by_name = {t: next(iter(data.load(t, "test", data_dir, 1)))[0] for t in tasks}
    latency = _bench.switch_latency(runtime, tasks, x_by_name, switches=config.switches,
                                    seed=config.seed)
    stages.update()
    shutil.rmtree(os.path.join(out_dir, "savedmodel"), ignore_errors=True)
    info = export.export_savedmodel(runtime, os.path.join(out_dir, "savedmodel"))
    tflite = nwv.export_tflite(runtime, os.path.join(out_dir, "pool.tflite"))
    stages.update()
    stages.close()
    separate = int(sum(m.count_params() for m in nets.values()))
    loaded = state.load_state(pool_dir, with_fisher=False)
    summary = {
        "tasks": tasks, "zipped": list(config.zip_tasks),
        "config": dataclasses.asdict(config), "data": data_dir or "TFDS",
        "accuracy_before": before, "accuracy_after": after,
        "accuracy_after_int8": after_int8,
        "separate_training": {t: _metrics(out_dir, t) for t in tasks},
        "zip": {"parameters": zip_report["parameters"],
                "after_retrain": zip_report["after_retrain"]},
        "memory": {"separate_weights": separate, "pool_weights": int(loaded.pool.size),
                   "ratio": separate / int(loaded.pool.size),
                   "stored_bytes": loaded.stored_bytes(),
                   "int8_stored_bytes": quantized.stored_bytes() + 4 * sum(
                       r.page_table.size for r in loaded.networks.values()),
                   "savedmodel_variable_bytes": export.variable_bytes(
                       os.path.join(out_dir, "savedmodel")),
                   "tflite_bytes": tflite["file_bytes"]},
        "optimization": {"best_round": opt["best_round"],
                         "best_val_accuracy": opt["best_val_accuracy"],
                         "rounds": opt["rounds"]},
        "switching": latency, "savedmodel_endpoints": info["endpoints"],
        "seconds": round(time.time() - start, 1),
    }
    artifacts.write_json(os.path.join(out_dir, "summary.json"), summary)
    _figures(out_dir, summary)
    return summary


def _metrics(out_dir, task):
    with open(os.path.join(out_dir, "nets", task, "metrics.json")) as handle:
        metrics = json.load(handle)
    return {k: metrics[k] for k in ("epochs", "best_epoch", "val_accuracy", "test_accuracy",
                                    "train_seconds")}


def _figures(out_dir, summary):
    plt = _bench.pyplot()
    tasks = summary["tasks"]
    fig, ax = plt.subplots(figsize=(7, 4))
    idx = np.arange(len(tasks))
    series = (("accuracy_before", "separate", "#888"),
              ("accuracy_after", "zipped + virtualized", "#3a7"),
              ("accuracy_after_int8", "same, int8 pages", "#37c"))
    for k, (key, label, colour) in enumerate(series):
        values = [100 * summary[key][t] for t in tasks]
        bars = ax.bar(idx + (k - 1) * 0.27, values, 0.27, label=label, color=colour)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(idx, tasks)
    ax.set_ylabel("test accuracy (%)")
    low = min(100 * min(summary[key].values()) for key, _, _ in series)
    ax.set_ylim(max(0, low - 10), 101)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)
    _bench.save_figure(fig, os.path.join(out_dir, "accuracy.png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    s = summary["switching"]
    bars = ax.bar(["reload from disk", "in-memory switch"], [s["reload_ms"], s["in_memory_ms"]],
                  color=["#c44", "#3a7"])
    ax.bar_label(bars, fmt="%.2f ms", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("switch + 1 inference (ms, log)")
    _bench.save_figure(fig, os.path.join(out_dir, "switching.png"))
    plt.close(fig)
