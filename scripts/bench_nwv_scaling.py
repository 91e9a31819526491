"""NWV scaling: 3, 5, 7, 9 and 10 networks in one pool the size of the largest one.

    /work/venv/bin/python scripts/bench_nwv_scaling.py --data_dir=../shared/datasets \
        --seed=0 --out=results/nwv_scaling.json

Networks, in the order they join (`_bench.NETWORKS`): mnist and cifar10 (the
reference NWV weights and Fisher; svhn, gtsrb and gsc have no data here, so their
reference networks cannot be evaluated and are left out), tts_commands (nwv_tts, 100
epochs), then networks trained from the reference architectures on derived tasks of
the shared data: mnist_parity, cifar10_vehicles, tts_directions, mnist_lowhigh,
cifar10_animals, tts_control (mnist/cifar10 ones 3 epochs, tts ones 100 epochs), and
cifar10_b, a second nwv_cifar10 trained on cifar10 (3 epochs, seed 1) to reach ten.
Trained networks and their computed Fisher (expected, 256 train examples) are cached
under runs/nwv_nets.

For each count N (each in its own process, started from a parent that holds no model,
so that its peak RSS is its own): the first N networks are packed into one in-memory
pool (`nwv.virtualize`: optimal matching, page size 100, largest first: the pool is
tts' 592 pages, so compression grows with N) and optimised jointly
(`nwv.optimize_runtime`) for --rounds rounds of --steps steps (each step: one batch
of every task, one Adam step on the summed loss; validation selection on the full
validation splits; few steps per round to bound the time, far fewer than
bench_nwv_accuracy.py's 12 x 200). Reported per N: the training time per
round, validation excluded (timed apart by wrapping models.training.evaluate, through
which the optimiser validates): CPU seconds (process time, all threads) and wall
seconds (min and median over rounds; round 1 includes tracing the joint step); the
per-network test-carve accuracy before (the original network) and after; peak RSS
(resource.getrusage ru_maxrss, and VmHWM from /proc/self/status); whether any NaN/inf
appeared. Targets: no collapse at ten (no network at or below its task's
majority-class rate + 5 points), every network within 1 point of its original, time
per round linear in N (a least-squares line through the per-N median training CPU
seconds per round with R^2 >= 0.95: the machine is shared with other users' jobs,
which inflate wall time but not this process's CPU time; wall-time fits and the load
average are recorded too). Draws results/nwv_scaling.png (accuracy and its change vs
the number of networks; time per round vs N).

Measured (seed 0): compression 2.54 / 4.01 / 5.72 / 7.45 / 8.22x for N = 3 / 5 / 7 / 9 /
10; training CPU seconds per round 5.5 / 8.1 / 10.9 / 16.2 / 16.6 (1.69 s x N, R^2
0.976); peak RSS 853 to 1172 MiB; no NaN; no collapse at ten; the 1-point target is
missed at every N with this short budget (at N = 10 mnist -5.5, cifar10 -4.2,
cifar10_animals -4.7 points; the best round was the last one at every N).
Run time on 2 shared CPU cores: about 8.5 minutes once the networks are cached, about 6
minutes more on the first run (training); timings depend on the load of the shared
machine (the load average is recorded).
"""
import collections
import json
import os
import subprocess
import sys
import time

import _cli
import numpy as np
from absl import flags

import _bench as bench
import data
import nwv
from models import training
from nwv.optimize import HISTORY, NonFiniteError

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder of the task tarballs.")
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder.")
flags.DEFINE_string("net_dir", "runs/nwv_nets", "Cache of trained networks.")
flags.DEFINE_string("work_dir", "runs/bench_nwv_scaling", "Histories and per-N results.")
flags.DEFINE_string("out", "results/nwv_scaling.json", "Result JSON.")
flags.DEFINE_string("plot", "results/nwv_scaling.png", "Accuracy/time plot.")
flags.DEFINE_list("counts", ["3", "5", "7", "9", "10"], "Numbers of networks.")
flags.DEFINE_list("networks", list(bench.NETWORKS), "Networks in joining order.")
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_integer("rounds", 3, "Optimisation rounds per N.")
flags.DEFINE_integer("steps", 100, "Joint steps per round (one batch of every task each).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("batch_size", 64, "Batch size per task.")
flags.DEFINE_integer("eval_limit", None, "Test examples per network (a fixed random "
                     "subset; None: the whole test carve).")
flags.DEFINE_integer("only_n", None, "Internal: run one count in this process (0: train "
                     "the networks and measure the originals).")
flags.DEFINE_integer("top", 10, "Internal: the largest count.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def majority_rate(task: str) -> float:
    """Largest class share of a task, assuming balanced source classes."""
    spec = data.get(task)
    labels = [l for l in (spec.label_map or range(spec.num_classes)) if l >= 0]
    return max(collections.Counter(labels).values()) / len(labels)


def loaded_networks(specs):
    """{name: (plain model, Fisher, source)} of the networks (trained once, cached)."""
    paths = {s.name: bench.weights_path(s, FLAGS.data_dir, FLAGS.reference_dir,
                                        FLAGS.net_dir) for s in specs}
    return {s.name: bench.model_and_fisher(s, paths[s.name], FLAGS.data_dir, FLAGS.seed)
            for s in specs}


def optimize_timed(rt, n, folder):
    """`nwv.optimize_runtime` with every validation timed (wall, CPU at entry and exit):
    (result or None, history, non-finite error or None, [(entry, exit)] per validation)."""
    config = nwv.OptimizeConfig(mode="joint", rounds=FLAGS.rounds, steps=FLAGS.steps,
                                learning_rate=FLAGS.learning_rate,
                                batch_size=FLAGS.batch_size, seed=FLAGS.seed)
    calls = []
    evaluate = training.evaluate

    def timed_evaluate(*args, **kwargs):
        entry = (time.perf_counter(), time.process_time())
        out = evaluate(*args, **kwargs)
        calls.append((entry, (time.perf_counter(), time.process_time())))
        return out

    training.evaluate = timed_evaluate  # the optimiser validates through it: time apart
    try:
        result = nwv.optimize_runtime(
            rt, config, data_dir=FLAGS.data_dir, checkpoint_dir=folder,
            log=lambda line: print(f"  N={n} round", line[:160], flush=True))
        return result, result["history"], None, calls
    except NonFiniteError as err:
        with open(os.path.join(folder, HISTORY)) as handle:
            return None, json.load(handle)["history"], str(err), calls
    finally:
        training.evaluate = evaluate


def training_phases(calls, n):
    """(wall, CPU) seconds of each round's training phase and CPU seconds of each
    round's validations: a round's training runs from the end of the previous round's
    last validation to the start of its first one (n validations per round)."""
    ends = [calls[i][1] for i in range(n - 1, len(calls), n)]
    starts = [calls[i][0] for i in range(n, len(calls), n)]
    wall = [b[0] - a[0] for a, b in zip(ends, starts)]
    cpu = [b[1] - a[1] for a, b in zip(ends, starts)]
    validation = [sum(c[1][1] - c[0][1] for c in calls[i:i + n])
                  for i in range(0, len(calls), n)]
    return wall, cpu, validation


def run_one(n: int) -> dict:
    """Virtualize the first n networks, optimise, evaluate (in this process)."""
    training.set_seed(FLAGS.seed)
    specs = [bench.NETWORKS[name] for name in FLAGS.networks[:n]]
    loaded = loaded_networks(specs)
    rt, match_seconds = bench.virtualize_in_memory(specs, loaded, page_size=FLAGS.page_size)
    folder = os.path.join(bench.resolve(FLAGS.work_dir), f"n{n}")
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    result, history, nonfinite, calls = optimize_timed(rt, n, folder)
    seconds = time.time() - start
    train_wall, train_cpu, val_cpu = training_phases(calls, n)
    after = {s.name: bench.accuracy(lambda x, m=s.name: rt.run(m, x), s.task, "test",
                                    FLAGS.data_dir, FLAGS.eval_limit) for s in specs}
    losses = [v for h in history for v in list(h["train_loss"].values())
              + list(h["val_loss"].values())]
    total_weights = sum(int(loaded[s.name][0].count_params()) for s in specs)
    pool_weights = int(rt.page_pool.shape[0]) * FLAGS.page_size
    round_seconds = [h["seconds"] for h in history[1:]]
    return {
        "n": n, "networks": [s.name for s in specs],
        "fisher": {s.name: loaded[s.name][2] for s in specs},
        "pool_pages": int(rt.page_pool.shape[0]), "total_weights": total_weights,
        "compression": total_weights / pool_weights, "matching_seconds": match_seconds,
        "seconds_per_round": round_seconds,
        "min_seconds_per_round": min(round_seconds, default=None),
        "median_seconds_per_round": float(np.median(round_seconds)) if round_seconds
        else None,
        "train_wall_per_round": train_wall, "train_cpu_per_round": train_cpu,
        "median_train_cpu_per_round": float(np.median(train_cpu)) if train_cpu else None,
        "validation_cpu_per_round": val_cpu,
        "optimization_seconds": seconds, "best_round": result and result["best_round"],
        "matched_val_accuracy": history[0]["val_accuracy"],
        "best_val_accuracy": history[result["best_round"]]["val_accuracy"] if result else None,
        "after_test_accuracy": after,
        "nonfinite_error": nonfinite,
        "nan": bool(nonfinite) or not bool(np.all(np.isfinite(rt.pool_array())))
        or not bool(np.all(np.isfinite(losses))),
        "peak_rss_mb": bench.peak_rss_mb(), "vm_hwm_mb": bench.vm_hwm_mb(),
        "history": history,
    }


def prepare() -> dict:
    """Trains (or finds) every network and its Fisher; original test accuracies."""
    training.set_seed(FLAGS.seed)
    specs = [bench.NETWORKS[name] for name in FLAGS.networks[:FLAGS.top]]
    originals = {}
    for s, (model, _, source) in zip(specs, loaded_networks(specs).values()):
        originals[s.name] = {
            "task": s.task, "network": s.describe(), "fisher": source,
            "weights": int(model.count_params()), "majority_rate": majority_rate(s.task),
            "test_accuracy": bench.accuracy(model, s.task, "test", FLAGS.data_dir,
                                            FLAGS.eval_limit),
            "test_examples": bench.examples(s.task, "test", FLAGS.data_dir,
                                            FLAGS.eval_limit)}
        print(f"{s.name:<17} {s.describe():<40} test "
              f"{100 * originals[s.name]['test_accuracy']:.2f}%", flush=True)
    return originals


def child(n: int, top: int) -> dict:
    """Runs `run_one(n)` (n = 0: `prepare`) in a fresh process: the peak RSS of each
    count is its own, not that of a process which already held other pools."""
    args = [sys.executable, os.path.abspath(__file__), f"--only_n={n}", f"--top={top}"] + [
        f"--{k}={FLAGS[k].value}" for k in
        ("data_dir", "reference_dir", "net_dir", "work_dir", "page_size", "rounds",
         "steps", "learning_rate", "batch_size", "seed")] + [
        f"--networks={','.join(FLAGS.networks)}"] + (
        [f"--eval_limit={FLAGS.eval_limit}"] if FLAGS.eval_limit else [])
    subprocess.run(args, check=True, cwd=bench.REPO)
    with open(os.path.join(bench.resolve(FLAGS.work_dir), f"n{n}", "part.json")) as handle:
        return json.load(handle)


def per_network(originals, parts):
    """{network: {n: after, drop in points, within 1 point, collapsed}}."""
    per_net = {}
    for n, part in parts.items():
        for name, acc in part["after_test_accuracy"].items():
            drop = originals[name]["test_accuracy"] - acc
            per_net.setdefault(name, {})[n] = {
                "after": acc, "drop_points": bench.points(drop),
                "within_1_point": bool(100 * drop <= 1.0 + 1e-9),
                "collapsed": bool(acc <= originals[name]["majority_rate"] + 0.05)}
    return per_net


def fit(x, y) -> dict:
    """Least-squares line y = a + b x with its R^2."""
    y = np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1.0 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    return {"slope_s_per_network": float(slope), "intercept_s": float(intercept),
            "r2": float(r2), "values": y.tolist()}


def time_fits(counts, parts):
    x = np.asarray(counts, float)
    return {"training_cpu_median": fit(x, [parts[n]["median_train_cpu_per_round"]
                                           for n in counts]),
            "training_wall_min": fit(x, [parts[n]["min_seconds_per_round"] for n in counts]),
            "training_wall_median": fit(x, [parts[n]["median_seconds_per_round"]
                                            for n in counts])}


def make_report(counts, originals, parts, per_net, extra):
    """The result JSON; `extra`: load averages, orchestrator RSS, seconds."""
    fits = time_fits(counts, parts)
    top = counts[-1]
    return {
        "command": "scripts/bench_nwv_scaling.py", "flags": bench.script_flags(),
        "originals": originals,
        "runs": {str(n): {k: v for k, v in p.items() if k != "history"}
                 for n, p in parts.items()},
        "accuracy": {name: {str(n): v for n, v in by_n.items()}
                     for name, by_n in per_net.items()},
        "time_per_round_fits": fits,
        "time_note": "per round, training phase only (validation excluded): CPU seconds "
                     "(process time, all threads; the linearity target is judged on their "
                     "median over rounds) and wall seconds (the optimiser's history; min and "
                     "median over rounds). Round 1 includes tracing the joint step. The "
                     "machine is shared with other users' jobs (see load_average), which "
                     "inflates wall time but not this process's CPU time.",
        "min_seconds_per_round_per_network": {str(n): parts[n]["min_seconds_per_round"] / n
                                              for n in counts},
        "targets": {
            f"no_collapse_at_{top}": not any(v[top]["collapsed"] for v in per_net.values()
                                             if top in v) and not parts[top]["nan"],
            "every_network_within_1_point": {
                str(n): all(per_net[name][n]["within_1_point"] for name in parts[n]
                            ["networks"]) for n in counts},
            "time_linear_r2_ge_0.95": bool(fits["training_cpu_median"]["r2"] >= 0.95),
            "any_nan": any(p["nan"] for p in parts.values())},
        **extra,
    }


def print_summary(report, counts, names, originals, per_net, parts):
    print(f"\ntest-carve accuracy (%): original, then after optimisation with N networks "
          f"({FLAGS.rounds} rounds x {FLAGS.steps} joint steps)")
    print(f"{'network':<17} {'orig':>6} " + " ".join(f"{'N=' + str(n):>7}" for n in counts))
    for name in names:
        cells = [f"{100 * per_net[name][n]['after']:>7.2f}" if n in per_net[name] else
                 f"{'':>7}" for n in counts]
        print(f"{name:<17} {100 * originals[name]['test_accuracy']:>6.2f} " + " ".join(cells))
    print(f"{'compression':<17} {'':>6} " + " ".join(
        f"{parts[n]['compression']:>6.2f}x" for n in counts))
    for label, key in (("train CPU s/round", "median_train_cpu_per_round"),
                       ("train wall s, min", "min_seconds_per_round"),
                       ("train wall s, med", "median_seconds_per_round")):
        print(f"{label:<17} {'':>6} " + " ".join(f"{parts[n][key]:>7.1f}" for n in counts))
    print(f"{'peak RSS (MiB)':<17} {'':>6} " + " ".join(
        f"{parts[n]['peak_rss_mb']:>7.0f}" for n in counts))
    print(f"{'VmHWM (MiB)':<17} {'':>6} " + " ".join(
        f"{parts[n]['vm_hwm_mb']:>7.0f}" for n in counts))
    print(f"{'NaN/inf':<17} {'':>6} " + " ".join(f"{str(parts[n]['nan']):>7}" for n in counts))
    t, top = report["targets"], counts[-1]
    for name, f in report["time_per_round_fits"].items():
        print(f"{name}: {f['intercept_s']:.2f} s + {f['slope_s_per_network']:.2f} s x N "
              f"(R^2 {f['r2']:.3f})")
    print(f"linear target (training CPU seconds per round, R^2 >= 0.95): "
          f"{'met' if t['time_linear_r2_ge_0.95'] else 'MISSED'}; load average "
          f"{report['load_average']['start']} -> {report['load_average']['end']}")
    print(f"no collapse at {top}: {'met' if t[f'no_collapse_at_{top}'] else 'MISSED'}; within "
          f"1 point: " + ", ".join(f"N={n} {'met' if ok else 'MISSED'}" for n, ok in
                                   t["every_network_within_1_point"].items()))


def main(argv):
    del argv
    if FLAGS.only_n is not None:
        part = run_one(FLAGS.only_n) if FLAGS.only_n else prepare()
        bench.write_result(os.path.join(FLAGS.work_dir, f"n{FLAGS.only_n}", "part.json"), part)
        return
    start, load_start = time.time(), bench.load_average()
    counts = sorted(int(c) for c in FLAGS.counts)
    if counts[-1] > len(FLAGS.networks):
        raise ValueError(f"expected counts <= {len(FLAGS.networks)} networks, received "
                         f"{counts}")
    orchestrator_rss = bench.peak_rss_mb()
    originals = child(0, counts[-1])
    parts = {}
    for n in counts:
        print(f"N = {n}: {FLAGS.networks[:n]}", flush=True)
        parts[n] = child(n, counts[-1])
    per_net = per_network(originals, parts)
    report = make_report(counts, originals, parts, per_net, {
        "load_average": {"start": load_start, "end": bench.load_average()},
        "orchestrator_peak_rss_mb_before_children": orchestrator_rss,
        "seconds": time.time() - start})
    names = FLAGS.networks[:counts[-1]]
    print_summary(report, counts, names, originals, per_net, parts)
    plot(report, counts, names, originals, per_net, parts)
    print(f"-> {bench.write_result(FLAGS.out, report)}  ({report['seconds']:.0f} s)")


def plot(report, counts, names, originals, per_net, parts):
    plt = bench.pyplot()
    fig, (ax, cx, bx) = plt.subplots(1, 3, figsize=(16, 4.6),
                                     gridspec_kw={"width_ratios": [5, 4, 3]})
    for i, name in enumerate(names):
        ns = [n for n in counts if n in per_net[name]]
        color = f"C{i % 10}"
        ax.plot(ns, [100 * per_net[name][n]["after"] for n in ns], "o-", label=name,
                color=color)
        ax.axhline(100 * originals[name]["test_accuracy"], color=color, linestyle=":",
                   linewidth=0.8)
        cx.plot(ns, [-per_net[name][n]["drop_points"] for n in ns], "o-", color=color)
    cx.axhspan(-1, 1, color="green", alpha=0.1, label="within 1 point")
    cx.axhline(0, color="gray", linewidth=0.8)
    cx.set_ylabel("after − original (points)")
    cx.legend(fontsize=8)
    ax.set_ylabel("test-carve accuracy (%) (dotted: original)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"after {report['flags']['rounds']} x {report['flags']['steps']} joint "
                 f"steps (validation-selected round)", fontsize=10)
    fits = report["time_per_round_fits"]
    for key, label, color in (("training_cpu_median", "CPU s (median over rounds)", "C0"),
                              ("training_wall_min", "wall s (min over rounds)", "C1")):
        f = fits[key]
        bx.plot(counts, f["values"], "o", color=color, label=label)
        bx.plot(counts, [f["intercept_s"] + f["slope_s_per_network"] * n for n in counts],
                "-", color=color, label=f"linear fit, R$^2$={f['r2']:.3f}")
    bx.set_title("training time per round (validation excluded)", fontsize=10)
    bx.set_ylabel("seconds per round")
    bx.legend(fontsize=7)
    for axis in (ax, cx, bx):
        axis.set_xlabel("networks in the pool")
        axis.set_xticks(counts)
    print(f"-> {bench.save_figure(fig, FLAGS.plot)}")
    plt.close(fig)


if __name__ == "__main__":
    _cli.run(main)
