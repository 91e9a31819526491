"""Task switching of zipped networks (the MTZ paper's 8.71x experiment) + simultaneous runs.

    python scripts/bench_zip_switch.py --data_dir=../shared/datasets

Five LeNet-300-100 (mnist, mnist_parity, mnist_lowhigh and two more seeds of the
first two; real MNIST from ../shared) are zipped with MTZ to about 90% shared
parameters and stored in one page pool. Tasks are made ready in random order, ten
times each, by (a) loading the task's whole weights from storage into the live
model, (b) loading only its task-specific weights from storage (the paper's
scheme: shared weights stay in memory), (c) the in-memory page-table switch.
Files are evicted from the page cache (posix_fadvise DONTNEED) before each load.
Also: switch + one single-sample inference end to end, and simultaneous
execution of 2/4/5 tasks on one input (one call, shared layers once) vs one
after another. Trained networks are cached in --work_dir. About 5 minutes on
2 cores. Writes results/bench_zip_switch.json and results/zip_switch.png.
"""
import os
import time

import _cli
import numpy as np
import tensorflow as tf
from absl import flags

from models import artifacts, training
from mtz.keras_build import member_model
from mtz.pipeline import hessian_inputs, zip_trained
from nwv import combined

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder with mnist_train.tar.gz.")
flags.DEFINE_string("work_dir", "runs/bench_zip_switch", "Cache of networks and pool.")
flags.DEFINE_string("out", "results/bench_zip_switch.json", "Result file.")
flags.DEFINE_float("share", 0.9, "Fraction of each hidden layer's neurons to share.")
flags.DEFINE_integer("epochs", 6, "Training epochs per network.")
flags.DEFINE_integer("retrain_steps", 150, "Joint retraining steps per zipped layer.")
flags.DEFINE_integer("repeats", 10, "Switches to each task.")
flags.DEFINE_integer("seed", 0, "Random seed.")

TASKS = [("mnist", 1), ("mnist_parity", 2), ("mnist_lowhigh", 3), ("mnist", 4),
         ("mnist_parity", 5)]


def trained(task, seed):
    folder = os.path.join(FLAGS.work_dir, f"{task}_seed{seed}")
    if not os.path.exists(os.path.join(folder, "metrics.json")):
        training.set_seed(seed)
        training.train(training.build_for_task("lenet_300_100", task), task, folder,
                       FLAGS.data_dir, FLAGS.epochs, 128, 1e-3, seed, verbose=0)
    return artifacts.load_model(folder)


def task_variables(zipped):
    """Per task, the live multi-task model's variables (blocks) that task uses."""
    live = {v.path: v for v in zipped.model.trainable_variables}
    return [[live[v.path] for v in member_model(zipped.model, i).trainable_variables]
            for i in range(len(zipped.tasks))]


def shared_fraction(variables_by_task):
    """Mean over tasks of the fraction of a task's weights held in shared blocks."""
    users = {}
    for i, variables in enumerate(variables_by_task):
        for v in variables:
            users.setdefault(v.path, set()).add(i)
    fractions = []
    for variables in variables_by_task:
        total = sum(int(np.prod(v.shape)) for v in variables)
        shared = sum(int(np.prod(v.shape)) for v in variables if len(users[v.path]) > 1)
        fractions.append(shared / total)
    return float(np.mean(fractions)), users


def write_weight_files(zipped, variables_by_task, users, folder):
    """Per task, one flat float32 .npy of all its weights (`full_<task>.npy`) and one
    of its own blocks only (`specific_<task>.npy`): a single contiguous read each."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    for i, name in enumerate(zipped.tasks):
        variables = variables_by_task[i]
        own = [v for v in variables if users[v.path] == {i}]
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
        artifacts.evict_from_page_cache(evict)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv):
    del argv
    training.set_seed(FLAGS.seed)
    nets = [trained(t, s) for t, s in TASKS]
    tasks = [t for t, _ in TASKS]
    zipped, report = zip_trained(nets, tasks, FLAGS.data_dir, str(FLAGS.share), "greedy",
                                 FLAGS.retrain_steps, 64, 3e-4, seed=FLAGS.seed,
                                 no_retrain_baseline=False, progress=None)
    variables_by_task = task_variables(zipped)
    fraction, users = shared_fraction(variables_by_task)
    pool_dir = os.path.join(FLAGS.work_dir, "pool")
    if os.path.exists(pool_dir):
        import shutil
        shutil.rmtree(pool_dir)
    runtime = combined.save_zipped(pool_dir, zipped)
    files = write_weight_files(zipped, variables_by_task, users,
                               os.path.join(FLAGS.work_dir, "files"))
    names = list(zipped.tasks)
    members = [zipped.member(i) for i in range(len(names))]
    predict = [tf.function(m) for m in members]
    x1 = hessian_inputs("mnist", FLAGS.data_dir, 1, FLAGS.seed)
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
        times["in_memory_e2e"].append(timed(lambda: (runtime.switch(name), runtime(x1).numpy())))
    med = {k: float(np.median(v)) for k, v in times.items()}
    simultaneous = {}
    x = hessian_inputs("mnist", FLAGS.data_dir, 64, FLAGS.seed)
    for n in (2, 4, len(names)):
        subset = names[:n]
        runtime.run_all({s: x for s in subset})
        for s in subset:
            runtime.run(s, x)
        together, apart = [], []
        for _ in range(200):  # interleaved, so load changes hit both alike
            together.append(timed(lambda: [v.numpy() for v in runtime.run_all(
                {s: x for s in subset}).values()]))
            apart.append(timed(lambda: [runtime.run(s, x).numpy() for s in subset]))
        simultaneous[n] = {"one_call_ms": 1e3 * float(np.median(together)),
                           "one_by_one_ms": 1e3 * float(np.median(apart)),
                           "speedup": float(np.median(apart) / np.median(together)),
                           "throughput_one_call": 64 * n / float(np.median(together))}
    result = {
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
    artifacts.write_json(FLAGS.out, result)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["whole task\nfrom storage", "task-specific\nfrom storage", "in-memory\npage table"]
    ax.bar(labels, [1e3 * med[k] for k in ("full_load", "specific_load", "in_memory")],
           color=["#c44", "#e93", "#3a7"])
    ax.set_yscale("log")
    ax.set_ylabel("median switch time (ms, log)")
    ax.set_title(f"{len(names)} zipped LeNet-300-100, {100 * fraction:.0f}% shared")
    fig.tight_layout()
    fig.savefig(os.path.join(os.path.dirname(FLAGS.out), "zip_switch.png"), dpi=120)
    print(f"shared fraction {fraction:.3f}; median switch: full {1e3 * med['full_load']:.3f} ms,"
          f" specific {1e3 * med['specific_load']:.3f} ms, in-memory "
          f"{1e6 * med['in_memory']:.2f} us; (a)/(b) {result['ratio_full_over_specific']:.2f}x,"
          f" (a)/(c) {result['ratio_full_over_in_memory']:.0f}x; end to end (a)/(c) "
          f"{result['ratio_e2e_full_over_in_memory']:.1f}x")
    for n, s in simultaneous.items():
        print(f"{n} tasks, batch 64: one call {s['one_call_ms']:.2f} ms vs one by one "
              f"{s['one_by_one_ms']:.2f} ms ({s['speedup']:.2f}x)")


if __name__ == "__main__":
    _cli.run(main)
