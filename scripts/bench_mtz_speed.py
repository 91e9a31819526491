r"""Speed of MTZ scoring and pairing for one fully shared VGG-16-sized layer.

    python scripts/bench_mtz_speed.py --seed=0 \
        --out=results/bench_mtz_speed.json --n_samples=4096

Two layers, each zipped completely (all neurons shared) between two networks
with random weights:
  * fc7: a 4096 -> 4096 dense layer (d = 4097 with the bias), Hessians from
    n_samples random post-ReLU inputs per network;
  * conv: a 512 -> 512 3x3 "same" conv (d = 4609), Hessians over the patches
    (`mtz.hessian.conv_patches`) of random post-ReLU feature maps
    [conv_batch, 14, 14, 512] per network.
Stages timed: hessian (both networks), costs (all m x m pair costs,
`pair_costs`), greedy and optimal pairing (`select_pairs`), merge
(`merged_weights` of the greedy pairs, with the per-pair errors). The original
MTZ code needed about 9 minutes (fc7) and 3 minutes (conv); targets are <= 30 s
and <= 10 s. Prints a table and writes the measured figures (seconds per
stage, peak RSS, cost totals, load averages) as JSON. Runs in about 40 s on an
otherwise idle 2-core machine (most of it fc7) and peaks near 2.6 GB of RSS.
Timings are wall-clock: other busy processes slow OpenBLAS (Cholesky above
all) several-fold, so run it on a quiet machine; the JSON records the load.
Peak RSS is `_bench.peak_rss_mb` (ru_maxrss).
"""
import os
import platform
import time

import _cli
import numpy as np
import scipy
from absl import flags

import _bench as bench
from mtz import hessian, pairing

FLAGS = flags.FLAGS
flags.DEFINE_integer("seed", 0, "Random seed for weights and inputs.")
flags.DEFINE_string("out", "results/bench_mtz_speed.json", "Output JSON file.")
flags.DEFINE_integer("n_samples", 4096, "Inputs per network for the dense Hessians.")
flags.DEFINE_integer("conv_batch", 8, "Feature maps [14, 14, 512] per network for the conv.")
flags.DEFINE_float("damping", 1e-6, "Relative Hessian damping (mtz.hessian.add_damping).")

ORIGINAL_SECONDS = {"fc7": 540.0, "conv": 180.0}
TARGET_SECONDS = {"fc7": 30.0, "conv": 10.0}
STAGES = ["hessian", "costs", "pairing_greedy", "pairing_optimal", "merge"]


class Stopwatch:
    def __init__(self):
        self.seconds = {}

    def __call__(self, stage, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        return result


def post_relu(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    return np.maximum(x, 0.0, out=x)


def time_layer_zip(name, w_a, w_b, hessians):
    """Times costs, both pairings and the merge; `hessians()` times its own stage."""
    watch = Stopwatch()
    h_a, h_b = hessians(watch)
    costs = watch("costs", pairing.pair_costs, w_a, w_b, h_a, h_b)
    greedy = watch("pairing_greedy", pairing.select_pairs, costs, fraction=1.0,
                   method="greedy")
    optimal = watch("pairing_optimal", pairing.select_pairs, costs, fraction=1.0,
                    method="optimal")
    merged, delta = watch("merge", pairing.merged_weights, w_a[:, greedy[0]],
                          w_b[:, greedy[1]], h_a, h_b, return_costs=True)
    seconds = {k: round(v, 3) for k, v in watch.seconds.items()}
    total = sum(v for k, v in watch.seconds.items() if k != "pairing_optimal")
    return {
        "d": int(w_a.shape[0]), "m_a": int(w_a.shape[1]), "m_b": int(w_b.shape[1]),
        "pairs": int(len(greedy[0])),
        "seconds": seconds,
        "total_seconds_greedy": round(total, 3),
        "total_seconds_optimal": round(total - watch.seconds["pairing_greedy"]
                                       + watch.seconds["pairing_optimal"], 3),
        "target_seconds": TARGET_SECONDS[name],
        "original_seconds_approx": ORIGINAL_SECONDS[name],
        "greedy_total_cost": float(costs[greedy].sum()),
        "optimal_total_cost": float(costs[optimal].sum()),
        "merge_cost_matches_pair_costs": bool(np.allclose(delta, costs[greedy], rtol=1e-6,
                                                          atol=1e-9 * costs.max())),
        "merged_shape": list(merged.shape),
        "peak_rss_mb_after": round(bench.peak_rss_mb(), 1),
    }


def bench_dense(rng):
    d_in = m = 4096
    w_a, w_b = (rng.standard_normal((d_in + 1, m)) * np.sqrt(2.0 / d_in) for _ in range(2))

    def hessians(watch):
        return [watch("hessian", hessian.layer_hessian, post_relu(rng, (FLAGS.n_samples, d_in)),
                      damping=FLAGS.damping) for _ in range(2)]

    return time_layer_zip("fc7", w_a, w_b, hessians)


def bench_conv(rng):
    cin = cout = 512
    d = 3 * 3 * cin + 1
    w_a, w_b = (rng.standard_normal((d, cout)) * np.sqrt(2.0 / (d - 1)) for _ in range(2))
    maps = [post_relu(rng, (FLAGS.conv_batch, 14, 14, cin)) for _ in range(2)]

    def hessians(watch):
        return [watch("hessian", hessian.conv_layer_hessian, x, 3, 1, "same",
                      damping=FLAGS.damping) for x in maps]

    record = time_layer_zip("conv", w_a, w_b, hessians)
    start = time.perf_counter()
    for x in maps:
        hessian.conv_layer_hessian(x, 3, 1, "same", damping=FLAGS.damping, per_tap=True)
    record["seconds_hessian_per_tap"] = round(time.perf_counter() - start, 3)
    record["patches_per_network"] = FLAGS.conv_batch * 14 * 14
    return record


def make_report(layers, baseline_rss, load_start):
    """The result JSON: per-layer figures, machine, settings, load and peak RSS."""
    return {
        "command": ("python scripts/bench_mtz_speed.py --seed=%d --out=%s --n_samples=%d "
                    "--conv_batch=%d" % (FLAGS.seed, FLAGS.out, FLAGS.n_samples,
                                         FLAGS.conv_batch)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "numpy": np.__version__,
                    "scipy": scipy.__version__},
        "config": {"seed": FLAGS.seed, "n_samples": FLAGS.n_samples,
                   "conv_batch": FLAGS.conv_batch, "damping": FLAGS.damping},
        # Other processes on the machine slow BLAS down (Cholesky most): check these.
        "loadavg_1_5_15min_start": load_start,
        "loadavg_1_5_15min_end": bench.load_average(),
        "peak_rss_mb_after_imports": round(baseline_rss, 1),
        "peak_rss_mb": round(bench.peak_rss_mb(), 1),
        "layers": layers,
    }


def print_table(result):
    layers = result["layers"]
    print(f"{'layer':6} {'d':>5} {'m':>5} " + " ".join(f"{s:>16}" for s in STAGES)
          + f" {'total(greedy)':>14} {'target':>7} {'original':>9}")
    for name, rec in layers.items():
        print(f"{name:6} {rec['d']:5d} {rec['m_a']:5d} "
              + " ".join(f"{rec['seconds'][s]:15.2f}s" for s in STAGES)
              + f" {rec['total_seconds_greedy']:13.2f}s {rec['target_seconds']:6.0f}s"
              f" {rec['original_seconds_approx']:8.0f}s")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB (after imports "
          f"{result['peak_rss_mb_after_imports']:.0f} MB); conv per-tap Hessians "
          f"{layers['conv']['seconds_hessian_per_tap']:.2f}s")


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    baseline, load_start = bench.peak_rss_mb(), bench.load_average()
    layers = {"fc7": bench_dense(rng), "conv": bench_conv(rng)}
    result = make_report(layers, baseline, load_start)
    print_table(result)
    print(f"wrote {bench.write_result(FLAGS.out, result)}")


if __name__ == "__main__":
    _cli.run(main)
