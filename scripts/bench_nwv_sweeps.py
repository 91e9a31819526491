r"""NWV sweeps: page size, round-robin λ, and joint vs round_robin vs sequential.

    python scripts/bench_nwv_sweeps.py --data_dir=../shared/datasets \
        --seed=0 --out=results/nwv_sweeps.json

Networks (default): the reference architectures trained here (the reference files
saw every MNIST / CIFAR-10 training image, the test carves included, so their
accuracies would not be held out): nwv_mnist on mnist and nwv_cifar10 on cifar10
(3 epochs, seed 1) and nwv_tts on tts_commands, cached under runs/nwv_nets with
their computed Fisher, packed into one in-memory pool the size of the largest
network (optimal matching unless said).

  * Page size P in 10, 100, 1000, 10000: wall time of the page matching alone
    (`nwv.matching.virtualize_pages` on the paged weights and Fisher, largest network
    first; greedy and optimal, each the fastest of up to 3 runs while they take under
    5 s in all; optimal at P = 10 solves ~5,900 x 5,900 assignments on candidate
    pairs, about 8 s for the three networks), then a short joint optimisation
    (`nwv.optimize_runtime`) from the optimally matched pool and the test-carve
    accuracy of every network (validation-selected round).
  * λ in 0.1, 1, 10, 100 for round_robin at P = 100 (the original scheme: turns, with
    the penalty λ Σ F_other (w − w_other)², F the Fisher pages each network's
    `nwv.NetworkSpec` carries).
  * joint vs round_robin (λ = 10, the original value: the λ sweep's run) vs sequential
    (turns, λ = 0) at P = 100, the same rounds and steps: `--steps` batches of every
    network per round in every mode (joint: one batch of each per step).

Every run writes its history.json under --work_dir/<run>/; the loss and accuracy per
round of every run (from those files) go into the JSON and the convergence plot
(results/nwv_convergence.png); accuracy and matching time vs page size go into
results/nwv_page_size.png. Few rounds and steps (defaults 3 x 100) keep the time
bounded: these are short optimisations, compared with each other.

Run time on 2 shared CPU cores: about 4 minutes once the three networks are cached
(training them: about 5 minutes, most of it nwv_tts; timings depend on the load of
the shared machine; the load average is recorded).
"""
import json
import os
import time

import _cli
import numpy as np
from absl import flags

import _bench as bench
import nwv
from nwv import matching, pages
from nwv.optimize import HISTORY, NonFiniteError

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder of the task tarballs.")
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder.")
flags.DEFINE_string("net_dir", "runs/nwv_nets", "Cache of trained networks.")
flags.DEFINE_string("work_dir", "runs/bench_nwv_sweeps", "Histories of the runs.")
flags.DEFINE_string("out", "results/nwv_sweeps.json", "Result JSON.")
flags.DEFINE_string("convergence_plot", "results/nwv_convergence.png", "Curves per round.")
flags.DEFINE_string("page_size_plot", "results/nwv_page_size.png", "Accuracy vs P.")
flags.DEFINE_list("networks", ["mnist_b", "cifar10_b", "tts_commands"],
                  "Networks (`_bench.NETWORKS` names).")
flags.DEFINE_list("page_sizes", ["10", "100", "1000", "10000"], "Page sizes.")
flags.DEFINE_list("lambdas", ["0.1", "1", "10", "100"], "round_robin penalty weights.")
flags.DEFINE_float("mode_lambda", 10.0, "λ of round_robin in the mode comparison.")
flags.DEFINE_integer("rounds", 3, "Rounds per run.")
flags.DEFINE_integer("steps", 100, "Batches of every network per round.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("batch_size", 64, "Batch size per task.")
flags.DEFINE_integer("eval_limit", None, "Test examples per network (fixed random "
                     "subset; None: the whole test carve).")
flags.DEFINE_integer("seed", 0, "Random seed.")


def run(name, rt, matched, mode, lambda_=0.0):
    """One optimisation from the matched pool; test accuracies of the selected pool."""
    rt.page_pool.assign(matched)
    config = nwv.OptimizeConfig(mode=mode, rounds=FLAGS.rounds, steps=FLAGS.steps,
                                learning_rate=FLAGS.learning_rate,
                                batch_size=FLAGS.batch_size, lambda_=lambda_, seed=FLAGS.seed)
    folder = os.path.join(bench.resolve(FLAGS.work_dir), name)
    os.makedirs(folder, exist_ok=True)
    start, error = time.time(), None
    try:
        result = nwv.optimize_runtime(
            rt, config, data_dir=bench.resolve(FLAGS.data_dir), checkpoint_dir=folder,
            log=lambda line: print(f"  {name}", line[:150], flush=True))
        best = result["best_round"]
    except NonFiniteError as err:          # the pool is back at the failed round's start
        error, best = str(err), None
    seconds = time.time() - start
    with open(os.path.join(folder, HISTORY)) as handle:
        history = json.load(handle)["history"]
    test = {n: bench.accuracy(lambda x, n=n: rt.run(n, x), rt.task(n), "test",
                              bench.resolve(FLAGS.data_dir), FLAGS.eval_limit) for n in rt.task_names}
    out = {"mode": mode, "lambda": lambda_, "best_round": best, "nonfinite_error": error,
           "seconds": seconds, "test_accuracy": test,
           "mean_test_accuracy": float(np.mean(list(test.values()))),
           "curves": curves(history), "history_file": os.path.join(folder, HISTORY)}
    print(f"{name:<22} best round {best}, mean test {100 * out['mean_test_accuracy']:.2f}% "
          + " ".join(f"{n} {100 * a:.2f}" for n, a in test.items()) + f" ({seconds:.0f} s)")
    return out


def curves(history):
    """Per-round losses and accuracies of a history.json."""
    return {
        "round": [h["round"] for h in history],
        "train_loss": {n: [h["train_loss"].get(n) for h in history]
                       for n in history[0]["val_loss"]},
        "penalty": [float(np.mean(list(h["penalty"].values()))) if h["penalty"] else None
                    for h in history],
        "mean_train_loss": [float(np.mean(list(h["train_loss"].values())))
                            if h["train_loss"] else None for h in history],
        "val_loss": {n: [h["val_loss"][n] for h in history] for n in history[0]["val_loss"]},
        "mean_val_loss": [float(np.mean(list(h["val_loss"].values()))) for h in history],
        "val_accuracy": {n: [h["val_accuracy"][n] for h in history]
                         for n in history[0]["val_accuracy"]},
        "mean_val_accuracy": [h["mean_val_accuracy"] for h in history],
        "seconds": [h["seconds"] for h in history]}


def time_matching(paged):
    """Both matchings of the paged networks (largest first), each the fastest of up to
    3 runs while they take under 5 s in all: (optimal pool, its tables in `paged`
    order, {method: timing and total cost})."""
    order = matching.order_for_pooling([w.shape[0] for w, _ in paged])
    timing = {}
    for method in ("greedy", "optimal"):    # optimal last: its pool is the one used
        times = []
        while len(times) < 3 and sum(times) < 5.0:   # repeat only the fast ones
            t0 = time.perf_counter()
            pool, tables, costs = matching.virtualize_pages([paged[i] for i in order], method)
            times.append(time.perf_counter() - t0)
        timing[method] = {"seconds": min(times), "seconds_all": times,
                          "total_cost": float(sum(costs))}
    in_order = [None] * len(paged)
    for i, table in zip(order, tables):
        in_order[i] = table
    return pool, in_order, timing


def matched_runtime(specs, loaded, page_size):
    """(runtime of the optimally matched pool, its page-size row) at one page size;
    each network's Fisher pages ride in its `nwv.NetworkSpec` (round_robin needs them)."""
    paged = [(pages.paginate([v.numpy() for v in loaded[s.name][0].trainable_variables],
                             page_size)[0],
              pages.paginate(loaded[s.name][1], page_size)[0]) for s in specs]
    pool, tables, timing = time_matching(paged)
    rt = nwv.VirtualizedNetworks(pool.weights, {
        s.name: nwv.NetworkSpec(s.build(), table, task=s.task, fisher=f_pages,
                                fisher_source=loaded[s.name][2])
        for s, table, (_, f_pages) in zip(specs, tables, paged)})
    total = sum(int(loaded[s.name][0].count_params()) for s in specs)
    print(f"P={page_size}: pool {pool.n_pages} pages; matching greedy "
          f"{timing['greedy']['seconds']:.3f} s, optimal {timing['optimal']['seconds']:.3f}"
          f" s", flush=True)
    return rt, {"pool_pages": pool.n_pages, "pool_weights": pool.n_pages * page_size,
                "compression": total / (pool.n_pages * page_size), "matching": timing,
                "run": f"page{page_size}_joint"}


def compute(specs, loaded):
    """Every run: joint at each page size, round_robin per λ and the mode comparison at
    P = 100. Returns (runs, page-size rows, {mode: run name})."""
    runs, page_rows, base = {}, {}, None
    for page_size in sorted(int(p) for p in FLAGS.page_sizes):
        rt, row = matched_runtime(specs, loaded, page_size)
        matched = rt.pool_array()
        runs[row["run"]] = run(row["run"], rt, matched, "joint")
        page_rows[page_size] = row
        if page_size == 100:
            base = (rt, matched)
    if base is None:
        raise ValueError(f"expected page size 100 among --page_sizes (the λ and mode runs "
                         f"use it), received {FLAGS.page_sizes}")
    lambdas = [float(v) for v in FLAGS.lambdas]
    for lam in lambdas + ([] if FLAGS.mode_lambda in lambdas else [FLAGS.mode_lambda]):
        runs[f"round_robin_lambda{lam:g}"] = run(f"round_robin_lambda{lam:g}", *base,
                                                 "round_robin", lam)
    runs["sequential"] = run("sequential", *base, "sequential")
    modes = {"joint": "page100_joint",
             "round_robin": f"round_robin_lambda{FLAGS.mode_lambda:g}",
             "sequential": "sequential"}
    return runs, page_rows, modes


def print_summary(runs, page_rows, originals):
    print(f"\n{'run':<24} {'mean test':>9} " + " ".join(f"{n:>13}" for n in originals)
          + f" {'best rd':>7} {'seconds':>8}")
    print(f"{'original':<24} {100 * np.mean(list(originals.values())):>9.2f} "
          + " ".join(f"{100 * a:>13.2f}" for a in originals.values()))
    for name, r in runs.items():
        print(f"{name:<24} {100 * r['mean_test_accuracy']:>9.2f} "
              + " ".join(f"{100 * r['test_accuracy'][n]:>13.2f}" for n in originals)
              + f" {str(r['best_round']):>7} {r['seconds']:>8.0f}"
              + (" NON-FINITE" if r["nonfinite_error"] else ""))
    print(f"\n{'page size':>9} {'pool pages':>10} {'compr.':>7} {'greedy s':>9} "
          f"{'optimal s':>9} {'mean test':>9}")
    for p, r in page_rows.items():
        print(f"{p:>9} {r['pool_pages']:>10} {r['compression']:>6.2f}x "
              f"{r['matching']['greedy']['seconds']:>9.3f} "
              f"{r['matching']['optimal']['seconds']:>9.3f} "
              f"{100 * runs[r['run']]['mean_test_accuracy']:>9.2f}")


def main(argv):
    del argv
    start, load_start = time.time(), bench.load_average()
    specs = [bench.NETWORKS[n] for n in FLAGS.networks]
    paths = {s.name: bench.weights_path(s, bench.resolve(FLAGS.data_dir), FLAGS.reference_dir,
                                        FLAGS.net_dir) for s in specs}
    loaded = {s.name: bench.model_and_fisher(s, paths[s.name], bench.resolve(FLAGS.data_dir), FLAGS.seed)
              for s in specs}
    originals = {s.name: bench.accuracy(loaded[s.name][0], s.task, "test", bench.resolve(FLAGS.data_dir),
                                        FLAGS.eval_limit) for s in specs}
    print("original test accuracy: " + ", ".join(f"{n} {100 * a:.2f}%"
                                                  for n, a in originals.items()))
    runs, page_rows, modes = compute(specs, loaded)
    report = {
        "command": "scripts/bench_nwv_sweeps.py",
        "flags": bench.script_flags(),
        "fisher": {s.name: loaded[s.name][2] for s in specs},
        "original_test_accuracy": originals,
        "page_size": {str(p): r for p, r in page_rows.items()},
        "lambda": {f"{float(v):g}": f"round_robin_lambda{float(v):g}" for v in FLAGS.lambdas},
        "modes": modes, "runs": runs,
        "load_average": {"start": load_start, "end": bench.load_average()},
        "seconds": time.time() - start,
    }
    print_summary(runs, page_rows, originals)
    plot_convergence(runs)
    plot_page_size(page_rows, runs, originals)
    print(f"-> {bench.write_result(FLAGS.out, report)}  ({report['seconds']:.0f} s)")


def plot_convergence(runs):
    plt = bench.pyplot()
    from matplotlib.ticker import MaxNLocator
    nets = list(next(iter(runs.values()))["curves"]["val_accuracy"])
    cols = max(3, len(nets))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8.4))
    for i, (name, r) in enumerate(runs.items()):
        c = r["curves"]
        style = dict(marker="o", markersize=4, color=f"C{i % 10}", label=name,
                     linestyle="--" if name.startswith("page") else "-")
        rounds = c["round"]
        axes[0, 0].plot(rounds[1:], c["mean_train_loss"][1:], **style)
        axes[0, 1].plot(rounds, c["mean_val_loss"], **style)
        axes[0, 2].plot(rounds, [100 * a for a in c["mean_val_accuracy"]], **style)
        for k, net in enumerate(nets):
            axes[1, k].plot(rounds, [100 * a for a in c["val_accuracy"][net]], **style)
    titles = ["mean training loss over the round (task loss)", "mean validation loss",
              "mean validation accuracy (%)"] + [""] * (cols - 3)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    for k, net in enumerate(nets):
        axes[1, k].set_title(f"{net}: validation accuracy (%)", fontsize=10)
    for ax in axes.flat:
        ax.set_xlabel("round (0: matched pool)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_yscale("log")
    axes[0, 1].set_yscale("log")
    axes[0, 2].legend(fontsize=7)
    print(f"-> {bench.save_figure(fig, FLAGS.convergence_plot)}")
    plt.close(fig)


def plot_page_size(page_rows, runs, originals):
    plt = bench.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = list(page_rows)
    for i, n in enumerate(originals):
        ax.plot(sizes, [100 * runs[page_rows[p]["run"]]["test_accuracy"][n] for p in sizes],
                "o-", color=f"C{i}", label=n)
        ax.axhline(100 * originals[n], color=f"C{i}", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("page size (weights)")
    ax.set_ylabel("test-carve accuracy (%) (dotted: original)")
    ax.set_title(f"after {FLAGS.rounds} x {FLAGS.steps} joint steps", fontsize=10)
    ax.legend(fontsize=8)
    for method in ("greedy", "optimal"):
        bx.plot(sizes, [page_rows[p]["matching"][method]["seconds"] for p in sizes], "o-",
                label=method)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("page size (weights)")
    bx.set_ylabel("matching wall time (s)")
    bx.legend(fontsize=8)
    print(f"-> {bench.save_figure(fig, FLAGS.page_size_plot)}")
    plt.close(fig)


if __name__ == "__main__":
    _cli.run(main)
