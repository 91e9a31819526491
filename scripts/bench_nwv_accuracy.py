"""NWV accuracy: mnist, cifar10 and tts_commands virtualized into one pool, then optimised.

    /work/venv/bin/python scripts/bench_nwv_accuracy.py --data_dir=../shared/datasets \
        --seed=0 --out=results/nwv_accuracy.json

Networks: the reference `nwv_mnist` and `nwv_cifar10` weights (with their reference
Fisher) and `nwv_tts` trained on `tts_commands` (cached under runs/nwv_nets; its Fisher
is computed on 256 train examples). They are added largest first (tts_commands, 592
pages of 100 weights) to a pool directory (`--work_dir`/pool), so the pool is the size
of the largest network, then optimised jointly (`nwv.optimize_pool`, mode joint: one Adam
step on the summed loss per batch of every task; rounds of `--steps` steps; the pool
with the best MEAN validation accuracy over rounds 0..R is kept, round 0 being the
matched pool). Reports per task the test-carve accuracy of the original network, of
the matched pool and of the optimised pool, and the compression (sum of the networks'
weights / pool weights). Target: every task within 0.5 points of its original
accuracy (a drop of at most 0.5; a gain counts as met). A control (`--control`, on by
default) fine-tunes every network on its own, unshared pages with the same optimiser,
steps, data order and selection: it separates what sharing costs from what the extra
fine-tuning gives (nwv_tts gains most: it was trained with noise augmentation, and the
optimisation trains on the clean clips that the test carve holds).

Measured (seed 0, 12 rounds x 200 steps, lr 1e-3): original / matched / optimised /
alone: mnist 98.15 / 18.14 / 98.27 / 98.25, cifar10 54.70 / 26.42 / 56.54 / 57.12,
tts_commands 77.00 / 74.67 / 99.33 / 99.33; 150,302 weights in 59,200 (2.54x); target
met. Run time on 2 shared CPU cores: about 6 minutes (about 2 minutes more on the very
first run, which trains nwv_tts for 100 epochs). Writes the JSON to --out, a bar chart
beside it (.png) and history.json into the pool directory, which
`bench_nwv_switch.py` then reads.
"""
import json
import os
import time

import _cli
import numpy as np
from absl import flags

import _bench as bench
import nwv
from models import training
from nwv import pages

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder of the task tarballs.")
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder.")
flags.DEFINE_string("net_dir", "runs/nwv_nets", "Cache of trained networks.")
flags.DEFINE_string("work_dir", "runs/bench_nwv_accuracy", "Pool directory parent.")
flags.DEFINE_string("out", "results/nwv_accuracy.json", "Result JSON (PNG beside it).")
flags.DEFINE_list("networks", ["mnist", "cifar10", "tts_commands"], "Networks (see "
                  "_bench.NETWORKS).")
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_enum("matching", "optimal", ["optimal", "greedy"], "Page matching.")
flags.DEFINE_enum("mode", "joint", [m.value for m in nwv.OptimizationMode],
                  "Optimisation mode.")
flags.DEFINE_bool("control", True, "Also fine-tune each network alone (own pages, no "
                  "sharing) with the same settings: what the optimisation gives without "
                  "virtualization.")
flags.DEFINE_integer("rounds", 12, "Optimisation rounds (validation after each).")
flags.DEFINE_integer("steps", 200, "Optimizer steps per round.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("batch_size", 64, "Batch size per task.")
flags.DEFINE_integer("limit", None, "Examples per split (quick runs only: the optimiser's "
                     "validation then reads the first classes of each split; None: all).")
flags.DEFINE_float("target_points", 0.5, "Allowed accuracy drop per task, points.")
flags.DEFINE_integer("seed", 0, "Random seed (Fisher samples, data order).")

SPLITS = ("validation", "test")


def split_accuracies(run_fn, spec):
    """{split: accuracy} of a model or callable on the network's task."""
    return {split: bench.accuracy(run_fn, spec.task, split, FLAGS.data_dir, FLAGS.limit)
            for split in SPLITS}


def pool_accuracies(rt, spec):
    return split_accuracies(lambda x: rt.run(spec.name, x), spec)


def optimize_config():
    return nwv.OptimizeConfig(
        mode=FLAGS.mode, rounds=FLAGS.rounds, steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        limit=FLAGS.limit)


def compute(specs, paths):
    """Originals, matched pool, optimised pool and (--control) the unshared control:
    (rows per network, the pool's add summary, optimisation result and seconds, control)."""
    rows = {}
    for s in specs:
        model = bench.load_plain(s, paths[s.name])
        rows[s.name] = {"task": s.task, "network": s.describe(),
                        "weights": int(model.count_params()),
                        "original": split_accuracies(model, s)}
    pool_dir = os.path.join(bench.resolve(FLAGS.work_dir), "pool")
    print(f"virtualizing {FLAGS.networks} into {pool_dir} (page size {FLAGS.page_size}, "
          f"{FLAGS.matching} matching)")
    built = bench.build_pool(pool_dir, specs, paths, FLAGS.data_dir,
                             page_size=FLAGS.page_size, method=FLAGS.matching,
                             seed=FLAGS.seed)
    matched = nwv.VirtualizedNetworks.load(pool_dir)
    for s in specs:
        rows[s.name]["matched"] = pool_accuracies(matched, s)
    start = time.time()
    result = nwv.optimize_pool(pool_dir, optimize_config(), data_dir=FLAGS.data_dir,
                               log=lambda line: print("  round", line[:200]))
    result["seconds"] = time.time() - start
    final = nwv.VirtualizedNetworks.load(pool_dir)      # re-read: what was saved
    for s in specs:
        row = rows[s.name]
        row["optimized"] = pool_accuracies(final, s)
        drop = row["original"]["test"] - row["optimized"]["test"]
        row["test_drop_points"] = bench.points(drop)
        row["met"] = bool(100 * drop <= FLAGS.target_points + 1e-9)
    pool_order = [bench.NETWORKS[n] for n in built["order"]]   # the pool's network order
    control = run_control(pool_order, paths) if FLAGS.control else None
    if control:
        for s in specs:
            rows[s.name]["finetuned_alone"] = control["accuracy"][s.name]
    return rows, built, result, control, pool_dir


def run_control(specs, paths):
    """Each network fine-tuned on its OWN pages (an unshared pool: the pages of all
    networks side by side), same optimiser, data order (networks in the pool's order:
    round r's data seed is (seed, r, network index)) and selection as the pool."""
    blocks, nets, offset = [], {}, 0
    for s in specs:
        model = bench.load_plain(s, paths[s.name])
        page_array, layout = pages.paginate([v.numpy() for v in model.trainable_variables],
                                            FLAGS.page_size)
        blocks.append(page_array)
        nets[s.name] = nwv.NetworkSpec(s.build(), offset + np.arange(layout.n_pages),
                                       task=s.task)
        offset += layout.n_pages
    rt = nwv.VirtualizedNetworks(np.concatenate(blocks), nets)
    folder = os.path.join(bench.resolve(FLAGS.work_dir), "control")
    os.makedirs(folder, exist_ok=True)
    print(f"control: the same optimisation without sharing ({offset} pages) -> {folder}")
    start = time.time()
    result = nwv.optimize_runtime(rt, optimize_config(), data_dir=FLAGS.data_dir,
                                  checkpoint_dir=folder, log=None)
    seconds = time.time() - start
    return {"pool_pages": offset, "best_round": result["best_round"],
            "best_mean_val_accuracy": result["best_val_accuracy"], "seconds": seconds,
            "history": result["history"],
            "accuracy": {s.name: pool_accuracies(rt, s) for s in specs}}


def make_report(specs, rows, built, result, control, pool_dir, start):
    summary = nwv.inspect(pool_dir)
    total_weights = sum(r["weights"] for r in rows.values())
    return {
        "command": "scripts/bench_nwv_accuracy.py",
        "flags": bench.script_flags(),
        "networks": rows, "order": built["order"], "matching": built["add"],
        "pool_pages": summary["pool_pages"], "pool_weights": summary["pool_weights"],
        "total_weights": total_weights,
        "compression": total_weights / summary["pool_weights"],
        "page_compression": summary["compression"],
        "optimization": {"config": optimize_config().get_config(),
                         "best_round": result["best_round"],
                         "best_mean_val_accuracy": result["best_val_accuracy"],
                         "seconds": result["seconds"],
                         "seconds_per_round": [h["seconds"] for h in result["history"][1:]],
                         "history": result["history"]},
        "control": control and {k: v for k, v in control.items() if k != "accuracy"},
        "target": f"every task's test accuracy within {FLAGS.target_points} points of its "
                  f"original (drop <= {FLAGS.target_points})",
        "target_met": all(r["met"] for r in rows.values()),
        "test_examples": {s.name: bench.examples(s.task, "test", FLAGS.data_dir, FLAGS.limit)
                          for s in specs},
        "seconds": time.time() - start, "peak_rss_mb": bench.peak_rss_mb(),
        "load_average": bench.load_average(),
    }


def print_summary(rows, report, result):
    print(f"\ntest-carve accuracy (%)\n{'task':<14} {'weights':>8} {'original':>9} "
          f"{'matched':>8} {'optimised':>9} {'drop':>6} {'alone*':>7}  target (drop <= "
          f"{FLAGS.target_points})")
    for name, r in rows.items():
        alone = r.get("finetuned_alone")
        print(f"{name:<14} {r['weights']:>8} {bench.points(r['original']['test']):>9.2f} "
              f"{bench.points(r['matched']['test']):>8.2f} "
              f"{bench.points(r['optimized']['test']):>9.2f} {r['test_drop_points']:>6.2f} "
              f"{bench.points(alone['test']) if alone else float('nan'):>7.2f}"
              f"  {'met' if r['met'] else 'MISSED'}")
    print("* alone: the original network fine-tuned on its own pages (no sharing) with the "
          "same optimiser, steps, data order and validation selection")
    print(f"{report['total_weights']} weights in a pool of {report['pool_pages']} x "
          f"{FLAGS.page_size} = {report['pool_weights']}: compression "
          f"{report['compression']:.2f}x; best round {result['best_round']} of "
          f"{result['rounds']}; optimisation {result['seconds']:.0f} s; total "
          f"{report['seconds']:.0f} s")
    print(f"target {'MET' if report['target_met'] else 'MISSED'}: {report['target']}")


def main(argv):
    del argv
    start = time.time()
    specs = [bench.NETWORKS[n] for n in FLAGS.networks]
    paths = {s.name: bench.weights_path(s, FLAGS.data_dir, FLAGS.reference_dir,
                                        FLAGS.net_dir) for s in specs}
    training.set_seed(FLAGS.seed)
    rows, built, result, control, pool_dir = compute(specs, paths)
    report = make_report(specs, rows, built, result, control, pool_dir, start)
    print_summary(rows, report, result)
    plot(rows, report)
    print(f"-> {bench.write_result(FLAGS.out, report)}")
    print(json.dumps({n: {k: bench.points(r[k]['test']) for k in
                          ("original", "matched", "optimized")} for n, r in rows.items()}))


def plot(rows, report):
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(rows)
    bars = [("original", "original"), ("matched", "matched"),
            ("optimized", "after joint optimisation")]
    if all("finetuned_alone" in r for r in rows.values()):
        bars.append(("finetuned_alone", "control: fine-tuned alone"))
    width = 0.8 / len(bars)
    for k, (key, label) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(names))]
        values = [100 * rows[n][key]["test"] for n in names]
        ax.bar(xs, values, width, label=label)
        for x, v in zip(xs, values):
            ax.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test-carve accuracy (%)")
    ax.set_title(f"NWV: {len(names)} networks in one pool "
                 f"({report['compression']:.2f}x compression)")
    ax.set_ylim(0, 125)
    ax.legend(loc="upper center", ncol=len(bars), fontsize=7)
    png = os.path.splitext(FLAGS.out)[0] + ".png"
    print(f"-> {bench.save_figure(fig, png)}")
    plt.close(fig)


if __name__ == "__main__":
    _cli.run(main)
