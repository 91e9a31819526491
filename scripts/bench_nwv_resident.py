"""Two-level pages: switch latency and memory under RAM budgets, against reload and all in memory.

    python scripts/bench_nwv_resident.py --data_dir=../shared/datasets --seed=0

A pool directory (--pool; when it is missing, the networks trained separately by
`bench_ten_networks.py` under --separate_dir are matched into one at
--compression, without joint optimisation: latency and exactness do not depend
on the weights' values) is loaded under RAM budgets from its largest network to
the whole pool (`VirtualizedNetworks.load(pool, resident_bytes=B)`, `nwv.resident`):
B = L + f (T - L), L the largest network's pages, T the pool, f in --fractions.

Per budget: the pages kept resident, the swap buffer, the bytes in memory
(`stored_bytes`) and the bytes read per switch; every network's logits after a
switch compared with the all-in-memory runtime (expected bitwise equal); and
--switches random switches (each to another network) timed as switch + one
single-sample inference, the pool file evicted from the OS page cache before
each (`_bench.evict_from_page_cache`), so the swapped pages come from storage.
The same switches are timed as a reload from storage (`_bench.load_from_disk`:
read the network's files, build its Keras model, one inference), side by side
in one run. Results: results/bench_nwv_resident.json and .png.

Run time on 2 CPU cores: under a minute with an existing pool (building one
from ten networks computes their Fishers first: a few minutes).
"""
import json
import os
import time

import _bench as bench
import _cli
import numpy as np
from absl import flags

import data
import nwv
from models import artifacts
from nwv import state

FLAGS = flags.FLAGS
flags.DEFINE_string("pool", "runs/ten_networks/pools/nwv_resident",
                    "Pool directory (built from --separate_dir when missing).")
flags.DEFINE_string("separate_dir", "runs/ten_networks/separate",
                    "Separately trained networks (train.py artifacts) to build the pool from.")
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_float("compression", 2.0, "Compression of a built pool: separate float32 "
                   "bytes / pool bytes.")
flags.DEFINE_integer("page_size", 100, "Weights per page of a built pool.")
flags.DEFINE_list("fractions", ["0", "0.25", "0.5", "0.75", "1"],
                  "Budgets: L + f (T - L), L the largest network, T the pool.")
flags.DEFINE_integer("switches", 30, "Random switches timed per budget.")
flags.DEFINE_integer("seed", 0, "Random seed (switch sequence, examples, Fishers).")
flags.DEFINE_string("out", "results/bench_nwv_resident.json", "Result JSON.")
flags.DEFINE_string("plot", "results/bench_nwv_resident.png", "Latency/memory figure.")


def build_pool(pool_dir: str) -> dict:
    """Matches the separate networks into one pool at --compression and saves it."""
    folder = bench.resolve(FLAGS.separate_dir)
    names = sorted(n for n in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, n, "metrics.json")))
    if len(names) < 2:
        raise ValueError(f"{folder} holds {len(names)} trained networks; expected at least "
                         f"two (run scripts/bench_ten_networks.py --stages=separate first) "
                         f"or pass --pool=<a pool directory>")
    nets, tasks = {}, {}
    for name in names:
        with open(os.path.join(folder, name, "metrics.json")) as handle:
            tasks[name] = json.load(handle)["task"]
        nets[name] = artifacts.load_model(os.path.join(folder, name))
    weights = sum(int(m.count_params()) for m in nets.values())
    pool_pages = int(np.ceil(weights / FLAGS.compression / FLAGS.page_size))
    bench.log(f"matching {len(names)} networks ({weights} weights) into {pool_pages} pages")
    rt = nwv.virtualize(nets, tasks=tasks, data_dir=bench.resolve(FLAGS.data_dir),
                        page_size=FLAGS.page_size, pool_pages=pool_pages, seed=FLAGS.seed,
                        teachers=False)
    rt.save(pool_dir)
    return {"networks": names, "weights": weights, "pool_pages": pool_pages}


def single_examples(rt) -> dict:
    """{network: one test example [1, ...]} from its task."""
    out = {}
    for name in rt.task_names:
        x, _ = next(iter(data.load(rt.task(name), "test", bench.resolve(FLAGS.data_dir), 1,
                                   seed=FLAGS.seed, shuffle=True, limit=64)))
        out[name] = x
    return out


def sequence(names) -> list:
    rng = np.random.default_rng(FLAGS.seed)
    order, current = [], None
    for _ in range(FLAGS.switches):
        current = str(rng.choice([n for n in names if n != current]))
        order.append(current)
    return order


def timed(order, inputs, pool_dir, step) -> list:
    """ms of step(name) per switch, the pool directory evicted from the page cache first."""
    out = []
    for name in order:
        bench.evict_from_page_cache(pool_dir)
        start = time.perf_counter()
        step(name, inputs[name])
        out.append(1e3 * (time.perf_counter() - start))
    return out


def switch_and_run(rt):
    def step(name, x):
        rt.switch(name)
        rt(x).numpy()
    return step


def reload_and_run(pool_dir):
    def step(name, x):
        bench.load_from_disk(pool_dir, name)(x, training=False).numpy()
    return step


def budget_report(pool_dir, full, fraction, budget, order, inputs) -> dict:
    rt = nwv.VirtualizedNetworks.load(pool_dir, resident_bytes=budget)
    for name in rt.task_names:                      # compile every path once
        rt.switch(name)
        rt(inputs[name]).numpy()
    diffs = {}
    for name in rt.task_names:
        rt.switch(name)
        got, want = rt(inputs[name]).numpy(), full.run(name, inputs[name]).numpy()
        diffs[name] = float(np.max(np.abs(got - want)))
    plan = rt.resident_plan
    page_bytes = 4 * rt.page_size
    read = ({n: int(plan.swapped[n].size) * page_bytes for n in rt.task_names}
            if plan is not None else {n: 0 for n in rt.task_names})
    latency = bench.latency_summary(timed(order, inputs, pool_dir, switch_and_run(rt)))
    return {"fraction": fraction, "budget_bytes": int(budget),
            "memory_bytes": rt.stored_bytes(),
            "resident_pages": int(len(plan.resident)) if plan else int(full.page_pool.shape[0]),
            "buffer_slots": int(plan.buffer_slots) if plan else 0,
            "bytes_read_per_switch": read,
            "mean_bytes_read_per_switch": float(np.mean([read[n] for n in order])),
            "max_abs_logit_diff": diffs, "bitwise_equal": all(d == 0 for d in diffs.values()),
            "switch_and_inference": latency}


def main(argv):
    del argv
    start = time.time()
    pool_dir = bench.resolve(FLAGS.pool)
    built = None if state.exists(pool_dir) else build_pool(pool_dir)
    full = nwv.VirtualizedNetworks.load(pool_dir)
    if len(full.task_names) < 2:
        raise ValueError(f"{pool_dir} holds {full.task_names}: expected at least two networks")
    page_bytes = 4 * full.page_size
    largest = max(np.unique(full.page_table(n)).size for n in full.task_names) * page_bytes
    total = int(full.page_pool.shape[0]) * page_bytes
    inputs = single_examples(full)
    order = sequence(full.task_names)
    for name in full.task_names:
        full.run(name, inputs[name]).numpy()
    rows = []
    for fraction in sorted({float(f) for f in FLAGS.fractions}):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"--fractions: expected values in [0, 1], received {fraction}")
        budget = int(largest + fraction * (total - largest))
        bench.log(f"budget {budget} bytes (f = {fraction:g})")
        rows.append(budget_report(pool_dir, full, fraction, budget, order, inputs))
    bench.load_from_disk(pool_dir, full.task_names[0])      # imports/tracing out of the way
    reload = bench.latency_summary(timed(order, inputs, pool_dir, reload_and_run(pool_dir)))
    report = {"command": "scripts/bench_nwv_resident.py", "flags": bench.script_flags(),
              "pool_dir": pool_dir, "built": built, "networks": full.task_names,
              "page_size": full.page_size, "pool_bytes": total,
              "largest_network_bytes": int(largest),
              "separate_bytes": int(sum(4 * full.layout(n).n_weights
                                        for n in full.task_names)),
              "eviction": "pool directory evicted from the OS page cache "
                          "(posix_fadvise DONTNEED) before every timed switch or reload",
              "budgets": rows, "reload_from_storage": reload,
              "load_average": bench.load_average(), "seconds": time.time() - start}
    print_summary(report)
    plot(report)
    print(f"-> {bench.write_result(FLAGS.out, report)}")


def print_summary(report):
    print(f"\n{len(report['networks'])} networks, pool {report['pool_bytes'] / 1e3:.0f} kB, "
          f"largest network {report['largest_network_bytes'] / 1e3:.0f} kB, separate "
          f"{report['separate_bytes'] / 1e3:.0f} kB; {FLAGS.switches} random switches, "
          f"page cache evicted before each")
    print(f"{'budget kB':>10} {'in memory kB':>13} {'read/switch kB':>15} "
          f"{'switch+run ms':>14} {'p90 ms':>8}  logits")
    for row in report["budgets"]:
        lat = row["switch_and_inference"]
        print(f"{row['budget_bytes'] / 1e3:>10.0f} {row['memory_bytes'] / 1e3:>13.0f} "
              f"{row['mean_bytes_read_per_switch'] / 1e3:>15.1f} {lat['median_ms']:>14.3f} "
              f"{lat['p90_ms']:>8.3f}  "
              f"{'bitwise equal' if row['bitwise_equal'] else 'DIFFER: ' + str(row['max_abs_logit_diff'])}")
    reload = report["reload_from_storage"]
    smallest = report["budgets"][0]["switch_and_inference"]["median_ms"]
    print(f"reload from storage + run: median {reload['median_ms']:.3f} ms "
          f"({reload['median_ms'] / smallest:.1f}x the smallest budget's switch); "
          f"{report['seconds']:.0f} s")


def plot(report):
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = report["budgets"]
    memory = [r["memory_bytes"] / 1e3 for r in rows]
    median = [r["switch_and_inference"]["median_ms"] for r in rows]
    low = [m - r["switch_and_inference"]["p10_ms"] for r, m in zip(rows, median)]
    high = [r["switch_and_inference"]["p90_ms"] - m for r, m in zip(rows, median)]
    ax.errorbar(memory, median, yerr=[low, high], marker="o", capsize=3,
                label="switch + 1 inference under the budget")
    reload = report["reload_from_storage"]["median_ms"]
    ax.axhline(reload, color="tab:red", linestyle="--",
               label=f"reload from storage + 1 inference ({reload:.1f} ms)")
    ax.axvline(report["largest_network_bytes"] / 1e3, color="gray", linestyle=":",
               label="largest network")
    ax.axvline(report["separate_bytes"] / 1e3, color="black", linestyle=":",
               label="networks stored separately")
    ax.set_yscale("log")
    ax.set_xlabel("weights in memory (kB, float32 pages incl. swap buffer)")
    ax.set_ylabel("latency (ms, median, p10-p90)")
    ax.set_title(f"Two-level pages, {len(report['networks'])} networks: "
                 f"memory against switch latency", fontsize=10)
    ax.legend(fontsize=8)
    print(f"-> {bench.save_figure(fig, FLAGS.plot)}")
    plt.close(fig)


if __name__ == "__main__":
    _cli.run(main)
