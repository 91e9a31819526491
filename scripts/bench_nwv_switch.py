r"""NWV switching and execution time: in-memory page-table switch vs loading from disk.

    python scripts/bench_nwv_switch.py --pool=runs/ten_networks/pools/nwv \
        --data_dir=../shared/datasets --seed=0 --out=results/nwv_switch.json

Reads a saved pool directory (default: the ten networks' NWV pool that
`bench_ten_networks.py` optimised; when it is missing, a matched pool of mnist,
cifar10 and tts_commands is built first under runs/bench_nwv_switch). Draws --switches random switches (each to a network other than
the current one) and times every one of them:

  (a) in memory, one `VirtualizedNetworks` with every network warm: `switch(name)`
      alone, and `switch(name)` + one single-sample inference end to end (logits
      copied back to numpy);
  (b) the baseline without virtualization, `_bench.load_from_disk(pool, name)`: read
      and check the pool directory's files (manifest, pool.npy, the network's .vnn
      table) and build a live Keras model with those weights; alone, and + one
      single-sample inference (eager call of the fresh model). Before every load the
      pool directory's files are evicted from the OS page cache
      (`_bench.evict_from_page_cache`: os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
      after an fsync of each file; one os.sync() first), so each load reads the disk;
      `fincore` checks the eviction.

Then, warm, per network: one batch of --batch_size real test examples through the pool
(`run`, compiled) and through the plain Keras model with the same weights
(`tf.function` of the model call, compiled the same way), interleaved pool/plain
--repeats times; medians and their ratio. Reports the speed-ups (b)/(a) (original NWV:
459x, 3.919 ms vs 1801.72 ms; target > 459x) and the execution overhead pool/plain
(target <= 1.1x), and draws results/nwv_switch.png (log-scale latency bars).

Results: results/nwv_switch.json and .png (RESULTS.md via scripts/make_results.py).
--device (e.g. /GPU:0) places the pool, the reloads and every timed call (default:
TensorFlow's choice); the result records it and where the pool lives.
Run time on 2 shared CPU cores: about 10 s with an existing pool (about 20 s more to
build a matched one). Timings depend on the load of the shared machine (recorded).
"""
import os
import statistics
import subprocess
import time

import _cli
import numpy as np
import tensorflow as tf
from absl import flags

import _bench as bench
import data
import nwv
from nwv import state

FLAGS = flags.FLAGS
flags.DEFINE_string("pool", "runs/ten_networks/pools/nwv", "Saved pool directory.")
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder of the task tarballs.")
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder "
                    "(only to build a pool when --pool is missing).")
flags.DEFINE_string("net_dir", "runs/nwv_nets", "Cache of trained networks.")
flags.DEFINE_string("out", "results/nwv_switch.json", "Result JSON.")
flags.DEFINE_string("plot", "results/nwv_switch.png", "Latency bar chart.")
flags.DEFINE_integer("switches", 30, "Random switches timed per method.")
flags.DEFINE_integer("batch_size", 64, "Batch of the execution-time comparison.")
flags.DEFINE_integer("repeats", 300, "Timed batches per network and path (median).")
flags.DEFINE_integer("seed", 0, "Random seed (switch sequence).")
flags.DEFINE_string("device", None, "Device of the timed execution, e.g. /GPU:0 or /CPU:0 "
                    "(default: TensorFlow's choice).")

ORIGINAL = {"in_memory_ms": 3.919, "reload_ms": 1801.72, "speedup": 459.0}
DEFAULT_POOL, FALLBACK_POOL = "runs/ten_networks/pools/nwv", "runs/bench_nwv_switch/pool"


def resident_bytes(pool_dir: str):
    """Bytes of the pool directory's files in the page cache (`fincore`), or None."""
    files = [os.path.join(pool_dir, f) for f in sorted(os.listdir(pool_dir))
             if os.path.isfile(os.path.join(pool_dir, f))]
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES"]
                             + files, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return int(sum(int(v) for v in out.split()))


def ms(seconds):
    return 1000.0 * seconds


def ensure_pool(pool_dir: str) -> dict | None:
    """Builds a matched pool of mnist, cifar10, tts_commands when `pool_dir` has none;
    returns `_bench.build_pool`'s summary (None: the pool existed)."""
    if state.exists(pool_dir):
        return None
    print(f"{pool_dir} missing: building a matched pool of mnist, cifar10, tts_commands")
    specs = [bench.NETWORKS[n] for n in ("mnist", "cifar10", "tts_commands")]
    paths = {s.name: bench.weights_path(s, bench.resolve(FLAGS.data_dir), FLAGS.reference_dir,
                                        FLAGS.net_dir) for s in specs}
    return bench.build_pool(pool_dir, specs, paths, bench.resolve(FLAGS.data_dir), seed=FLAGS.seed)


def example_batches(rt):
    """({name: one batch of --batch_size test examples}, {name: its first example}),
    every compiled path warmed."""
    batches = {n: next(iter(data.load(rt.task(n), "test", bench.resolve(FLAGS.data_dir), FLAGS.batch_size,
                                      seed=FLAGS.seed, shuffle=True)))[0] for n in rt.task_names}
    singles = {n: batches[n][:1] for n in rt.task_names}
    for n in rt.task_names:
        for _ in range(3):
            rt.run(n, singles[n]).numpy()
            rt.run(n, batches[n]).numpy()
    return batches, singles


def switch_sequence(rt):
    """--switches random networks, each other than the one before."""
    rng = np.random.default_rng(FLAGS.seed)
    sequence, current = [], rt.active
    for _ in range(FLAGS.switches):
        current = str(rng.choice([n for n in rt.task_names if n != current]))
        sequence.append(current)
    return sequence


def time_in_memory(rt, sequence, singles):
    """(a): switch alone, and switch + one single-sample inference (ms per switch)."""
    names = rt.task_names
    switch_only, switch_infer = [], []
    for name in sequence:
        t0 = time.perf_counter()
        rt.switch(name)
        switch_only.append(ms(time.perf_counter() - t0))
    for name in sequence:
        rt.switch(names[0] if name != names[0] else names[1])
        t0 = time.perf_counter()
        rt.switch(name)
        rt(singles[name]).numpy()
        switch_infer.append(ms(time.perf_counter() - t0))
    return switch_only, switch_infer


def time_from_disk(rt, pool_dir, sequence, singles):
    """(b): load_from_disk alone and + one inference, page cache evicted before each
    load; also warm-cache loads and the page-cache residency. Returns a dict of lists."""
    os.sync()
    cached = resident_bytes(pool_dir)
    bench.evict_from_page_cache(pool_dir)
    after_evict = resident_bytes(pool_dir)
    print(f"page cache: pool directory files resident {cached} bytes before eviction, "
          f"{after_evict} after posix_fadvise(POSIX_FADV_DONTNEED)")
    bench.load_from_disk(pool_dir, rt.task_names[0])     # import/trace costs out of the way
    load_only, load_infer, resident_at_load = [], [], []
    for name in sequence:
        bench.evict_from_page_cache(pool_dir)
        t0 = time.perf_counter()
        bench.load_from_disk(pool_dir, name)
        load_only.append(ms(time.perf_counter() - t0))
    for name in sequence:
        bench.evict_from_page_cache(pool_dir)
        resident_at_load.append(resident_bytes(pool_dir))
        t0 = time.perf_counter()
        model = bench.load_from_disk(pool_dir, name)
        model(singles[name], training=False).numpy()
        load_infer.append(ms(time.perf_counter() - t0))
    for name in rt.task_names:                             # the baseline computes the same
        np.testing.assert_allclose(bench.load_from_disk(pool_dir, name)(singles[name]).numpy(),
                                   rt.run(name, singles[name]).numpy(), rtol=1e-4, atol=1e-4)
    cached_load = []
    for name in sequence[:10]:                        # for reference: page cache warm
        t0 = time.perf_counter()
        bench.load_from_disk(pool_dir, name)
        cached_load.append(ms(time.perf_counter() - t0))
    return {"load_only": load_only, "load_infer": load_infer, "cached_load": cached_load,
            "page_cache_bytes": {"before_eviction": cached, "after_eviction": after_evict,
                                 "before_each_load": resident_at_load}}


def time_execution(rt, batches):
    """Per network: one batch through the pool vs the plain Keras model with the same
    weights (both compiled), interleaved --repeats times; medians and their ratio."""
    execution = {}
    for name in rt.task_names:
        plain_model = rt.to_keras(name)
        plain = tf.function(lambda x, m=plain_model: m(x, training=False),
                            reduce_retracing=True)
        x = batches[name]
        np.testing.assert_allclose(plain(x).numpy(), rt.run(name, x).numpy(), rtol=1e-4,
                                   atol=1e-4)
        for _ in range(10):
            plain(x).numpy()
            rt.run(name, x).numpy()
        pool_t, plain_t = [], []
        for _ in range(FLAGS.repeats):
            t0 = time.perf_counter()
            rt.run(name, x).numpy()
            t1 = time.perf_counter()
            plain(x).numpy()
            t2 = time.perf_counter()
            pool_t.append(ms(t1 - t0))
            plain_t.append(ms(t2 - t1))
        p, q = statistics.median(pool_t), statistics.median(plain_t)
        execution[name] = {"batch": int(x.shape[0]), "pool_median_ms": p,
                           "plain_median_ms": q, "ratio": p / q,
                           "pool_p10_p90_ms": [sorted(pool_t)[len(pool_t) // 10],
                                               sorted(pool_t)[9 * len(pool_t) // 10]],
                           "plain_p10_p90_ms": [sorted(plain_t)[len(plain_t) // 10],
                                                sorted(plain_t)[9 * len(plain_t) // 10]]}
    return execution


def make_report(rt, pool_dir, built, sequence, in_memory, disk, execution, start):
    a0, a1 = bench.latency_summary(in_memory[0]), bench.latency_summary(in_memory[1])
    b0, b1 = bench.latency_summary(disk["load_only"]), bench.latency_summary(disk["load_infer"])
    speed_switch = b0["median_ms"] / a0["median_ms"]
    speed_e2e = b1["median_ms"] / a1["median_ms"]
    worst_ratio = max(e["ratio"] for e in execution.values())
    return {
        "command": "scripts/bench_nwv_switch.py", "flags": bench.script_flags(),
        "pool_dir": pool_dir, "built_pool": built, "networks": rt.task_names,
        "pool_pages": int(rt.page_pool.shape[0]), "page_size": rt.page_size,
        "sequence": sequence,
        "eviction": "before every load_from_disk: os.posix_fadvise(fd, 0, 0, "
                    "os.POSIX_FADV_DONTNEED) on every file of the pool directory "
                    "(after one os.sync())",
        "page_cache_bytes": disk["page_cache_bytes"],
        "in_memory_switch": a0, "in_memory_switch_and_inference": a1,
        "load_from_disk": b0, "load_from_disk_and_inference": b1,
        "load_from_disk_page_cache_warm": bench.latency_summary(disk["cached_load"]),
        "speedup_switch_only": speed_switch, "speedup_end_to_end": speed_e2e,
        "execution": execution, "execution_ratio_worst": worst_ratio,
        "original_nwv": ORIGINAL,
        "targets": {"speedup_gt_459": {"switch_only": speed_switch > 459,
                                       "end_to_end": speed_e2e > 459},
                    "execution_overhead_le_1.1": worst_ratio <= 1.1},
        "load_average": bench.load_average(), "seconds": time.time() - start,
    }


def print_summary(report):
    speed_switch, speed_e2e = report["speedup_switch_only"], report["speedup_end_to_end"]
    print(f"\n{FLAGS.switches} random switches among {report['networks']} "
          f"(pool {report['pool_dir']})")
    print(f"{'':<40} {'median ms':>10} {'p10':>9} {'p90':>9}")
    for label, key in (("(a) switch (page table only)", "in_memory_switch"),
                       ("(a) switch + 1-sample inference", "in_memory_switch_and_inference"),
                       ("(b) load_from_disk (cache evicted)", "load_from_disk"),
                       ("(b) load_from_disk + 1-sample inference",
                        "load_from_disk_and_inference"),
                       ("    load_from_disk, page cache warm",
                        "load_from_disk_page_cache_warm")):
        r = report[key]
        print(f"{label:<40} {r['median_ms']:>10.4f} {r['p10_ms']:>9.4f} {r['p90_ms']:>9.4f}")
    print("files evicted from the page cache before every load with os.posix_fadvise(fd, 0, "
          "0, os.POSIX_FADV_DONTNEED)")
    print(f"speed-up (b)/(a): switch only {speed_switch:,.0f}x, switch + inference end to "
          f"end {speed_e2e:,.1f}x (original NWV 459x; target > 459x: switch only "
          f"{'met' if speed_switch > 459 else 'MISSED'}, end to end "
          f"{'met' if speed_e2e > 459 else 'MISSED'})")
    print(f"\nexecution of one batch of {FLAGS.batch_size}, warm, median of {FLAGS.repeats} "
          f"interleaved runs:")
    for name, e in report["execution"].items():
        print(f"  {name:<14} pool {e['pool_median_ms']:.3f} ms, plain Keras "
              f"{e['plain_median_ms']:.3f} ms, ratio {e['ratio']:.3f}")
    worst = report["execution_ratio_worst"]
    print(f"worst ratio {worst:.3f} (target <= 1.1: {'met' if worst <= 1.1 else 'MISSED'}); "
          f"{report['seconds']:.0f} s")


def main(argv):
    del argv
    start = time.time()
    pool_dir = bench.resolve(FLAGS.pool)
    if not state.exists(pool_dir) and FLAGS.pool == DEFAULT_POOL:
        pool_dir = bench.resolve(FALLBACK_POOL)
    built = ensure_pool(pool_dir)
    with bench.device_scope(FLAGS.device):                  # the pool, the reloads and every timed call
        rt = nwv.VirtualizedNetworks.load(pool_dir)
        if len(rt.task_names) < 2:
            raise ValueError(f"{pool_dir} holds {rt.task_names}: expected at least two networks")
        batches, singles = example_batches(rt)
        sequence = switch_sequence(rt)
        in_memory = time_in_memory(rt, sequence, singles)
        disk = time_from_disk(rt, pool_dir, sequence, singles)
        execution = time_execution(rt, batches)
    report = make_report(rt, pool_dir, built, sequence, in_memory, disk, execution, start)
    report["device"] = {"requested": FLAGS.device or "TensorFlow's choice",
                        "pool_on": rt.page_pool.device}
    print_summary(report)
    plot(report)
    print(f"-> {bench.write_result(FLAGS.out, report)}")


def plot(report):
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    keys = [("in_memory_switch", "switch\n(page table)"),
            ("in_memory_switch_and_inference", "switch +\n1 inference"),
            ("load_from_disk", "load from disk\n(cache evicted)"),
            ("load_from_disk_and_inference", "load from disk\n+ 1 inference")]
    med = [report[k]["median_ms"] for k, _ in keys]
    low = [m - report[k]["p10_ms"] for (k, _), m in zip(keys, med)]
    high = [report[k]["p90_ms"] - m for (k, _), m in zip(keys, med)]
    ax.bar(range(len(keys)), med, yerr=[low, high], capsize=4,
           color=["tab:green", "tab:green", "tab:red", "tab:red"])
    for i, ((k, _), m) in enumerate(zip(keys, med)):
        ax.text(i + 0.42, m, f"{m:.3g} ms", ha="right", va="bottom", fontsize=9)
    for value, label in ((ORIGINAL["in_memory_ms"], "original NWV in-memory switch"),
                         (ORIGINAL["reload_ms"], "original NWV reload")):
        ax.axhline(value, color="gray", linestyle="--", linewidth=0.8)
        ax.text(-0.45, value * 1.15, f"{label} ({value:g} ms)", fontsize=7, color="gray")
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [label for _, label in keys])
    ax.set_ylabel("latency (ms, log scale; median, p10-p90)")
    ax.set_title(f"NWV switching, {report['flags']['switches']} random switches: "
                 f"{report['speedup_switch_only']:,.0f}x (switch), "
                 f"{report['speedup_end_to_end']:,.0f}x (end to end)", fontsize=10)
    ax.set_ylim(min(med) / 5, max(max(med), ORIGINAL["reload_ms"]) * 5)
    print(f"-> {bench.save_figure(fig, FLAGS.plot)}")
    plt.close(fig)


if __name__ == "__main__":
    _cli.run(main)
