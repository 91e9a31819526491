"""The main job's application code (`scripts/demo.py`): train, zip, virtualize, switch, export.

Application code, not library: it strings the library's verbs together, times
them and draws figures.

1. Train (or reuse) one network per task with validation-based selection.
2. Zip the networks of one architecture with MTZ (with joint retraining).
3. Store the zipped model in a page pool, add the other networks by Fisher
   page matching (NWV), jointly optimise the pool (selection on validation).
4. Report per-task test accuracy before and after, memory, switching latency
   (in-memory page-table switch vs reload from disk, page cache evicted), and
   export one SavedModel for all tasks.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

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
    """Settings of `run_demo`; `quick()` gives the one-minute variant used by tests."""

    zip_tasks: tuple = ("mnist", "mnist_parity")
    other_tasks: tuple = ("cifar10", "tts_commands")
    epochs: int = 8
    small_task_epochs: int = 30  # tasks with few examples (the 3,000 keyword clips)
    limit: int | None = None
    share: str = "0.9"
    retrain_steps: int = 200
    rounds: int = 6
    steps: int = 300
    page_size: int = 100
    switches: int = 20
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        return cls(**{**dict(epochs=1, small_task_epochs=1, limit=64, retrain_steps=3,
                             rounds=1, steps=3, switches=3), **overrides})


def _train(task, folder, data_dir, config):
    if not os.path.exists(os.path.join(folder, "metrics.json")):
        training.set_seed(config.seed)
        small = data_dir is not None and data.num_examples(task, "train", data_dir) < 10_000
        epochs = config.small_task_epochs if small else config.epochs
        training.train(training.build_for_task(None, task), task, folder, data_dir=data_dir,
                       epochs=epochs, seed=config.seed, limit=config.limit, verbose=0)
    return artifacts.load_model(folder)


def run_demo(out_dir: str, data_dir: str | None, config: DemoConfig) -> dict:
    """Runs the whole workflow into `out_dir`; returns (and writes) `summary.json`."""
    tasks = list(config.zip_tasks) + list(config.other_tasks)
    stages = tqdm(total=6, desc="demo", unit="stage")
    nets = {t: _train(t, os.path.join(out_dir, "nets", t), data_dir, config) for t in tasks}
    stages.update()
    before = {t: training.evaluate(nets[t], t, "test", data_dir=data_dir,
                                   limit=config.limit)["accuracy"] for t in tasks}
    zip_config = mtz.ZipConfig(share=config.share, hessian_samples=500, seed=config.seed)
    zipped, zip_report = mtz.zip_trained(
        [nets[t] for t in config.zip_tasks], list(config.zip_tasks), data_dir=data_dir,
        config=zip_config, retrain_steps=config.retrain_steps, eval_limit=config.limit,
        no_retrain_baseline=False, progress=None)
    stages.update()
    pool_dir = os.path.join(out_dir, "pool")
    shutil.rmtree(pool_dir, ignore_errors=True)
    nwv.save_zipped(pool_dir, zipped, page_size=config.page_size, data_dir=data_dir,
                    fisher_samples=128, seed=config.seed,
                    teachers={t: nets[t] for t in config.zip_tasks})
    for t in config.other_tasks:
        nwv.add_network(pool_dir, os.path.join(out_dir, "nets", t), name=t, task=t,
                        model_name=data.get(t).default_model, data_dir=data_dir,
                        page_size=config.page_size, fisher_samples=128, seed=config.seed)
    stages.update()
    opt = nwv.optimize_pool(pool_dir, nwv.OptimizeConfig(
        mode="joint", rounds=config.rounds, steps=config.steps, seed=config.seed,
        limit=config.limit), data_dir=data_dir, log=None)
    stages.update()
    runtime = nwv.VirtualizedNetworks.load(pool_dir)
    after = {t: training.evaluate(lambda x, t=t: runtime.run(t, x), t, "test",
                                  data_dir=data_dir, limit=config.limit)["accuracy"]
             for t in tasks}
    x_by_name = {t: next(iter(data.load(t, "test", data_dir, 1)))[0] for t in tasks}
    latency = _bench.switch_latency(runtime, tasks, x_by_name, switches=config.switches,
                                    seed=config.seed)
    stages.update()
    info = export.export_savedmodel(runtime, os.path.join(out_dir, "savedmodel"))
    stages.update()
    stages.close()
    separate = int(sum(m.count_params() for m in nets.values()))
    pool_weights = int(state.load_state(pool_dir, with_fisher=False).pool.size)
    summary = {
        "tasks": tasks, "zipped": list(config.zip_tasks), "config": dataclasses.asdict(config),
        "accuracy_before": before, "accuracy_after": after,
        "zip": {"parameters": zip_report["parameters"],
                "after_retrain": zip_report["after_retrain"]},
        "memory": {"separate_weights": separate, "pool_weights": pool_weights,
                   "ratio": separate / pool_weights,
                   "savedmodel_variable_bytes": export.variable_bytes(
                       os.path.join(out_dir, "savedmodel"))},
        "optimization": {"best_round": opt["best_round"],
                         "best_val_accuracy": opt["best_val_accuracy"]},
        "switching": latency, "savedmodel_endpoints": info["endpoints"],
    }
    artifacts.write_json(os.path.join(out_dir, "summary.json"), summary)
    _figures(out_dir, summary)
    return summary


def _figures(out_dir, summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    idx = np.arange(len(tasks))
    ax.bar(idx - 0.2, [summary["accuracy_before"][t] for t in tasks], 0.4, label="separate")
    ax.bar(idx + 0.2, [summary["accuracy_after"][t] for t in tasks], 0.4,
           label="zipped + virtualized")
    ax.set_xticks(idx, tasks)
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    s = summary["switching"]
    ax.bar(["reload from disk", "in-memory switch"], [s["reload_ms"], s["in_memory_ms"]],
           color=["#c44", "#3a7"])
    ax.set_yscale("log")
    ax.set_ylabel("switch + 1 inference (ms, log)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "switching.png"), dpi=120)
    plt.close(fig)
