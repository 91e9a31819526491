"""Task switching of zipped networks (the MTZ paper's 8.71x experiment) + simultaneous runs.

    python scripts/bench_zip_switch.py --data_dir=../shared/datasets

Five LeNet-300-100 (mnist, mnist_parity, mnist_lowhigh and two more seeds of the
first two; real MNIST from ../shared) are zipped with MTZ (`mtz.zip_trained`) to
about 90% shared parameters and stored in one page pool (`nwv.save_zipped`, each
member with its Fisher on its task's train split). Tasks are made ready in random
order, ten times each, by (a) loading the task's whole weights from storage into
the live model, (b) loading only its task-specific weights from storage (the
paper's scheme: shared weights stay in memory), (c) the in-memory page-table
switch. A task's blocks and which of them are its own come from
`ZippedModel.member_model` and `ZippedModel.block_owners`. Files are evicted from
the page cache (posix_fadvise DONTNEED, `_bench.evict_from_page_cache`) before
each load. Also: switch + one single-sample inference end to end, and
simultaneous execution of 2/4/5 tasks on one input (one call, shared layers once)
vs one after another. Trained networks are cached in --work_dir (`_bench.trained`).
--device (e.g. /GPU:0) places the zipping, the pool and every timed call (default:
TensorFlow's choice); the result records it and where the pool lives.
About 5 minutes on 2 cores. Writes results/bench_zip_switch.json and
results/zip_switch.png.
"""
import os
import shutil
import time

import _cli
import numpy as np
import tensorflow as tf
from absl import flags

import _bench as bench
import mtz
import nwv
from models import artifacts

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder with mnist_train.tar.gz.")
flags.DEFINE_string("work_dir", "runs/bench_zip_switch", "Cache of networks and pool.")
flags.DEFINE_string("out", "results/bench_zip_switch.json", "Result file.")
flags.DEFINE_float("share", 0.9, "Fraction of each hidden layer's neurons to share.")
flags.DEFINE_integer("epochs", 6, "Training epochs per network.")
flags.DEFINE_integer("retrain_steps", 150, "Joint retraining steps per zipped layer.")
flags.DEFINE_integer("repeats", 10, "Switches to each task.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("device", None, "Device of the timed execution, e.g. /GPU:0 or /CPU:0 "
                    "(default: TensorFlow's choice).")

TASKS = [("mnist", 1), ("mnist_parity", 2), ("mnist_lowhigh", 3), ("mnist", 4),
         ("mnist_parity", 5)]
MODEL = "lenet_300_100"
SIMULTANEOUS_BATCH, SIMULTANEOUS_REPEATS = 64, 200


def trained_networks():
    """The five LeNet-300-100, each trained once (its own seed) and cached in --work_dir."""
    return [artifacts.load_model(bench.trained(
        task, MODEL, data_dir=FLAGS.data_dir, cache_dir=FLAGS.work_dir, epochs=FLAGS.epochs,
        seed=seed, overrides=bench.class_overrides(MODEL, task))) for task, seed in TASKS]


def task_variables(zipped):
    """Per task, the live multi-task model's variables (blocks) that task uses."""
    live = {v.path: v for v in zipped.model.trainable_variables}
    return [[live[v.path] for v in zipped.member_model(i).trainable_variables]
            for i in range(len(zipped.tasks))]


def shared_fraction(variables_by_task, owners):
    """Mean over tasks of the fraction of a task's weights held in shared blocks."""
    fractions = []
    for variables in variables_by_task:
        total = sum(int(np.prod(v.shape)) for v in variables)
        shared = sum(int(np.prod(v.shape)) for v in variables if len(owners[v.path]) > 1)
        fractions.append(shared / total)
    return float(np.mean(fractions))


def write_weight_files(zipped, variables_by_task, owners, folder):
    """Per task, one flat float32 .npy of all its weights (`full_<task>.npy`) and one
    of its own blocks only (`specific_<task>.npy`): a single contiguous read each."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    for name, variables in zip(zipped.tasks, variables_by_task):
        own = [v for v in variables if owners[v.path] == (name,)]
        paths = (os.path.join(folder, f"full_{name}.npy"),
                 os.path.join(folder, f"specific_{name}.npy"))
        for path, subset in zip(paths, (variables, own)):
            np.save(path, np.concatenate([v.numpy().ravel() for v in subset]))
        files[name] = (paths[0], variables), (paths[1], own)
    return files


def load_into(path, variables):
    """Reads one flat file into `variables` (the caller evicts it from the page cache
    first, outside the timed region)."""
    flat = np.load(path)
    offset = 0
    for v in variables:
        size = int(np.prod(v.shape))
        v.assign(flat[offset:offset + size].reshape(v.shape))
        offset += size


def timed(fn, evict=None):
    """Seconds `fn()` takes; `evict` (a path) is dropped from the page cache first,
    outside the measurement."""
    if evict:
        bench.evict_from_page_cache(evict)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def zip_and_store():
    """Trains (or finds) the networks, zips them with retraining, stores the zipped
    model in a fresh pool and one weight file per task and subset.
    Returns (zipped, zip report, runtime, shared fraction, weight files)."""
    tasks = [t for t, _ in TASKS]
    config = mtz.ZipConfig(share=str(FLAGS.share), method="greedy", seed=FLAGS.seed)
    zipped, report = mtz.zip_trained(
        trained_networks(), tasks, data_dir=FLAGS.data_dir, config=config,
        retrain_steps=FLAGS.retrain_steps, batch_size=64, learning_rate=3e-4,
        no_retrain_baseline=False, progress=None)
    variables_by_task, owners = task_variables(zipped), zipped.block_owners()
    pool_dir = os.path.join(bench.resolve(FLAGS.work_dir), "pool")
    shutil.rmtree(pool_dir, ignore_errors=True)
    runtime = nwv.save_zipped(pool_dir, zipped, data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    files = write_weight_files(zipped, variables_by_task, owners,
                               os.path.join(bench.resolve(FLAGS.work_dir), "files"))
    return zipped, report, runtime, shared_fraction(variables_by_task, owners), files


def time_switches(zipped, runtime, files):
    """Median seconds of making a task ready: (a) whole task from storage, (b) its own
    blocks from storage, (c) the page-table switch; each also with one inference."""
    names = list(zipped.tasks)
    predict = [tf.function(zipped.member(i)) for i in range(len(names))]
    x1 = mtz.hessian_inputs("mnist", FLAGS.data_dir, samples=1, seed=FLAGS.seed)
    for i, name in enumerate(names):  # warm every path once
        predict[i](x1), runtime.switch(name), runtime(x1)
    order = np.random.default_rng(FLAGS.seed).permutation(
        np.repeat(np.arange(len(names)), FLAGS.repeats))
    times = {k: [] for k in ("full_load", "specific_load", "in_memory",
                             "full_load_e2e", "specific_load_e2e", "in_memory_e2e")}
    for i in order:
        name = names[i]
        (full, full_vars), (own, own_vars) = files[name]
        times["full_load"].append(timed(lambda: load_into(full, full_vars), full))
        times["specific_load"].append(timed(lambda: load_into(own, own_vars), own))
        times["in_memory"].append(timed(lambda: runtime.switch(name)))
        times["full_load_e2e"].append(timed(
            lambda: (load_into(full, full_vars), predict[i](x1).numpy()), full))
        times["specific_load_e2e"].append(timed(
            lambda: (load_into(own, own_vars), predict[i](x1).numpy()), own))
        times["in_memory_e2e"].append(timed(lambda: (runtime.switch(name),
                                                     runtime(x1).numpy())))
    return {k: float(np.median(v)) for k, v in times.items()}


def time_simultaneous(names, runtime):
    """2, 4 and all tasks on one batch: one `run_all` call vs one `run` per task."""
    simultaneous = {}
    x = mtz.hessian_inputs("mnist", FLAGS.data_dir, samples=SIMULTANEOUS_BATCH,
                           seed=FLAGS.seed)
    for n in (2, 4, len(names)):
        subset = names[:n]
        runtime.run_all({s: x for s in subset})
        for s in subset:
            runtime.run(s, x)
        together, apart = [], []
        for _ in range(SIMULTANEOUS_REPEATS):  # interleaved, so load changes hit both alike
            together.append(timed(lambda: [v.numpy() for v in runtime.run_all(
                {s: x for s in subset}).values()]))
            apart.append(timed(lambda: [runtime.run(s, x).numpy() for s in subset]))
        simultaneous[n] = {"one_call_ms": 1e3 * float(np.median(together)),
                           "one_by_one_ms": 1e3 * float(np.median(apart)),
                           "speedup": float(np.median(apart) / np.median(together)),
                           "throughput_one_call": SIMULTANEOUS_BATCH * n
                           / float(np.median(together))}
    return simultaneous


def make_report(names, fraction, med, files, report, simultaneous):
    return {
        "tasks": names, "shared_parameter_fraction": fraction, "page_cache": "evicted with "
        "posix_fadvise(POSIX_FADV_DONTNEED) before each load", "repeats_per_task":
        FLAGS.repeats, "median_seconds": med,
        "ratio_full_over_specific": med["full_load"] / med["specific_load"],
        "ratio_full_over_in_memory": med["full_load"] / med["in_memory"],
        "ratio_e2e_full_over_in_memory": med["full_load_e2e"] / med["in_memory_e2e"],
        "targets": {"full_over_specific": 8.71, "full_over_in_memory": 459},
        "file_bytes": {n: [os.path.getsize(p) for p, _ in files[n]] for n in names},
        "accuracy": {"before": report["before"], "after_retrain": report["after_retrain"]},
        "parameters": report["parameters"], "simultaneous_batch64": simultaneous,
    }


def plot(result, path):
    plt = bench.pyplot()
    med, fraction = result["median_seconds"], result["shared_parameter_fraction"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["whole task\nfrom storage", "task-specific\nfrom storage", "in-memory\npage table"]
    ax.bar(labels, [1e3 * med[k] for k in ("full_load", "specific_load", "in_memory")],
           color=["#c44", "#e93", "#3a7"])
    ax.set_yscale("log")
    ax.set_ylabel("median switch time (ms, log)")
    ax.set_title(f"{len(result['tasks'])} zipped LeNet-300-100, {100 * fraction:.0f}% shared")
    bench.save_figure(fig, path)
    plt.close(fig)


def print_summary(result):
    med, fraction = result["median_seconds"], result["shared_parameter_fraction"]
    print(f"shared fraction {fraction:.3f}; median switch: full {1e3 * med['full_load']:.3f} ms,"
          f" specific {1e3 * med['specific_load']:.3f} ms, in-memory "
          f"{1e6 * med['in_memory']:.2f} us; (a)/(b) {result['ratio_full_over_specific']:.2f}x,"
          f" (a)/(c) {result['ratio_full_over_in_memory']:.0f}x; end to end (a)/(c) "
          f"{result['ratio_e2e_full_over_in_memory']:.1f}x")
    for n, s in result["simultaneous_batch64"].items():
        print(f"{n} tasks, batch 64: one call {s['one_call_ms']:.2f} ms vs one by one "
              f"{s['one_by_one_ms']:.2f} ms ({s['speedup']:.2f}x)")


def main(argv):
    del argv
    with bench.device_scope(FLAGS.device):          # the models and pool live where they are timed
        zipped, report, runtime, fraction, files = zip_and_store()
        names = list(zipped.tasks)
        med = time_switches(zipped, runtime, files)
        simultaneous = time_simultaneous(names, runtime)
    result = make_report(names, fraction, med, files, report, simultaneous)
    result["device"] = {"requested": FLAGS.device or "TensorFlow's choice",
                        "pool_on": runtime.page_pool.device}
    out = bench.write_result(FLAGS.out, result)
    plot(result, os.path.join(os.path.dirname(out), "zip_switch.png"))
    print_summary(result)


if __name__ == "__main__":
    _cli.run(main)
