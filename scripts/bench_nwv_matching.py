r"""Benchmark NWV page matching (greedy vs optimal) on the five reference networks.

    python scripts/bench_nwv_matching.py \
        --reference_dir=../shared/reference/nwv --page_size=100 \
        --out=results/bench_nwv_matching.json

Reads `<net>.npz` (weights and diagonal Fisher, `models.read_npz`) for mnist,
cifar10, svhn, gtsrb and gsc, pages each network (100 weights per page, layer order), adds them
largest first (`nwv.matching.order_for_pooling`: gtsrb, gsc, mnist, cifar10, svhn) to one pool with
`nwv.matching.virtualize_pages`, once per method, and reports the total and
per-network matching cost Σ(F₁+F₂)(w₁−w₂)² (each network against the pool as
it stood when the network was added), the final distortion of each network
Σ F (w − w_pool)² against the finished (Fisher-weighted mean) pool, the pool
size, the compression (268,692 weights into the pool's 665 × 100) and the wall
time of each method (fastest of --repeats runs of the whole five-network
`virtualize_pages`).

Then: --brute_force_problems tiny random problems where both optimal solvers
(dense, sparse) must reach the brute-force optimum and greedy is scored against
it; and optimal matching at --small_page_size weights per page (sparse solver,
and the dense one when --small_page_dense: minutes per network) with greedy's
cost beside it.
Relative paths are resolved against the repository root. Exits with a message
when the reference folder is missing.
"""
import os
import time

import _cli
import numpy as np
from absl import flags

import _bench as bench
import models
from nwv import matching, pages

NETS = ("mnist", "cifar10", "svhn", "gtsrb", "gsc")

FLAGS = flags.FLAGS
flags.DEFINE_string("reference_dir", "../shared/reference/nwv",
                    "Folder of <net>.npz reference weights + Fisher (relative: to repo root).")
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_integer("seed", 0, "Random seed (matching is deterministic; recorded only).")
flags.DEFINE_integer("repeats", 3, "Timed runs per method (the fastest is reported).")
flags.DEFINE_integer("small_page_size", 10, "Page size of the small-page section: optimal "
                     "matching by the sparse solver with a duality certificate against one "
                     "dense assignment (0: skip).")
flags.DEFINE_bool("small_page_dense", True, "Also time the dense solver at the small page "
                  "size (minutes per network).")
flags.DEFINE_integer("brute_force_problems", 60, "Random tiny problems checked against "
                     "brute force (every injective table).")
flags.DEFINE_string("out", "results/bench_nwv_matching.json",
                    "Output JSON (relative: to repo root).")


def paged_references():
    """{net: (weight pages, Fisher pages, layout)} of the five reference files."""
    ref_dir = bench.resolve(FLAGS.reference_dir)
    files = {net: os.path.join(ref_dir, f"{net}.npz") for net in NETS}
    absent = [p for p in files.values() if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(
            f"reference weights not found: {', '.join(absent)} (pass --reference_dir="
            f"<folder holding {', '.join(n + '.npz' for n in NETS)}>)")
    paged = {}
    for net, path in files.items():
        w_pages, layout = pages.paginate(models.read_npz(path), FLAGS.page_size)
        f_pages, f_layout = pages.paginate(models.read_npz(path, "fisher_"), FLAGS.page_size)
        if f_layout != layout:
            raise ValueError(f"{path}: Fisher shapes {f_layout.shapes} differ from weight "
                             f"shapes {layout.shapes}")
        paged[net] = (w_pages, f_pages, layout)
    return paged


def distortion(w, f, pool, table) -> float:
    """Σ F (w − w_pool)² of a network against the finished pool."""
    return float(np.sum(f * (w - pool.weights[table]) ** 2, dtype=np.float64))


def time_method(method, networks, order, n_weights):
    """One method's figures: costs, pool, compression, distortion, fastest wall time."""
    times = []
    for _ in range(max(1, FLAGS.repeats)):
        start = time.perf_counter()
        pool, tables, costs = matching.virtualize_pages(networks, method)
        times.append(time.perf_counter() - start)
    for table in tables:
        assert np.unique(table).size == table.size, "page table is not injective"
    per_net = {n: distortion(w, f, pool, t) for n, (w, f), t in zip(order, networks, tables)}
    return dict(
        total_cost=float(sum(costs)),
        cost_per_network={n: float(c) for n, c in zip(order, costs)},
        pool_pages=pool.n_pages,
        pool_weights=pool.n_pages * pool.page_size,
        compression=n_weights / (pool.n_pages * pool.page_size),
        occupancy_histogram={int(k): int(v) for k, v in
                             zip(*np.unique(pool.occupancy, return_counts=True))},
        final_distortion=float(sum(per_net.values())),
        final_distortion_per_network=per_net,
        seconds=min(times), seconds_all=times)


def compute(paged):
    """The result JSON: both methods on the networks added largest first."""
    order = [NETS[i] for i in matching.order_for_pooling(
        [paged[n][2].n_weights for n in NETS])]
    n_weights = sum(paged[n][2].n_weights for n in NETS)
    result = dict(page_size=FLAGS.page_size, seed=FLAGS.seed, order=order,
                  networks={n: dict(n_weights=paged[n][2].n_weights,
                                    n_pages=paged[n][2].n_pages) for n in order},
                  total_weights=n_weights, methods={})
    networks = [(paged[n][0], paged[n][1]) for n in order]
    for method in matching.MatchingMethod:
        result["methods"][method.value] = time_method(method, networks, order, n_weights)
    greedy, optimal = result["methods"]["greedy"], result["methods"]["optimal"]
    result["optimal_over_greedy_cost"] = optimal["total_cost"] / greedy["total_cost"]
    return result


def print_table(result):
    order, methods = result["order"], result["methods"]
    print(f"{'method':<8} {'total cost':>12} " + " ".join(f"{n:>9}" for n in order)
          + f" {'pool':>5} {'compr.':>6} {'seconds':>8}")
    for name, r in methods.items():
        print(f"{name:<8} {r['total_cost']:>12.4f} "
              + " ".join(f"{r['cost_per_network'][n]:>9.4f}" for n in order)
              + f" {r['pool_pages']:>5} {r['compression']:>5.2f}x {r['seconds']:>8.3f}")
    greedy, optimal = methods["greedy"], methods["optimal"]
    print(f"{result['total_weights']} weights into {greedy['pool_weights']} pool weights; "
          f"optimal/greedy cost = {result['optimal_over_greedy_cost']:.4f}; final distortion "
          f"greedy {greedy['final_distortion']:.4f}, optimal {optimal['final_distortion']:.4f}")


def small_pages() -> dict:
    """Optimal matching at `small_page_size` of the five networks added largest first:
    the sparse solver (min-cost flows on candidate pairs + LP certificate) against one
    dense assignment, each timed, with the costs they reach (equal up to round-off)."""
    size = FLAGS.small_page_size
    ref_dir = bench.resolve(FLAGS.reference_dir)
    paged = {n: (pages.paginate(models.read_npz(f"{ref_dir}/{n}.npz"), size)[0],
                 pages.paginate(models.read_npz(f"{ref_dir}/{n}.npz", "fisher_"), size)[0])
             for n in NETS}
    order = [NETS[i] for i in matching.order_for_pooling([paged[n][0].shape[0] for n in NETS])]
    pool, rows = matching.PoolState.empty(size), []
    for net in order:
        w, f = paged[net]
        row = {"network": net, "pages": int(w.shape[0]), "pool_pages": pool.n_pages}
        for solver in ("sparse", "dense") if FLAGS.small_page_dense else ("sparse",):
            start = time.perf_counter()
            table, new_pool, cost = matching.match_network(pool, w, f, "optimal",
                                                           solver=solver)
            row[f"{solver}_seconds"] = round(time.perf_counter() - start, 2)
            row[f"{solver}_cost"] = float(cost)
            bench.log(f"P={size} {net}: {solver} {row[f'{solver}_seconds']} s, cost {cost:.6g}")
            if solver == "sparse":
                next_pool = new_pool
        start = time.perf_counter()
        row["greedy_cost"] = float(matching.match_network(pool, w, f, "greedy")[2])
        row["greedy_seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        pool = next_pool
    return {"page_size": size, "order": order, "networks": rows,
            "load_average": bench.load_average()}


def brute_force(problems: int) -> dict:
    """Optimal and greedy matching on tiny random pools against brute force."""
    import itertools
    rng = np.random.default_rng(FLAGS.seed)
    exact, greedy_excess = {"dense": 0, "sparse": 0}, []
    for _ in range(problems):
        m, n, size = int(rng.integers(3, 7)), 0, 4
        n = int(rng.integers(2, m + 1))
        pool = matching.PoolState(rng.normal(size=(m, size)).astype(np.float32),
                                  rng.gamma(0.5, size=(m, size)).astype(np.float32),
                                  np.ones(m, np.int64))
        w = rng.normal(size=(n, size)).astype(np.float32)
        f = rng.gamma(0.5, size=(n, size)).astype(np.float32)
        costs = matching.page_costs(w, f, pool.weights, pool.fisher)
        best = min(sum(costs[i, j] for i, j in enumerate(p))
                   for p in itertools.permutations(range(m), n))
        for solver in ("dense", "sparse"):      # "auto" picks dense at these sizes
            optimal = matching.match_network(pool, w, f, "optimal", solver=solver)[2]
            exact[solver] += int(abs(optimal - best) <= 1e-9 * max(1.0, best))
        greedy = matching.match_network(pool, w, f, "greedy")[2]
        greedy_excess.append(greedy / best - 1 if best > 0 else 0.0)
    return {"problems": problems, "optimal_equals_brute_force": exact,
            "greedy_mean_excess": float(np.mean(greedy_excess)),
            "greedy_worse_in": int(np.sum(np.asarray(greedy_excess) > 1e-9))}


def main(argv):
    del argv
    np.random.seed(FLAGS.seed)
    result = compute(paged_references())
    print_table(result)
    if FLAGS.brute_force_problems:
        result["brute_force"] = brute_force(FLAGS.brute_force_problems)
        print(f"brute force: {result['brute_force']}")
    if FLAGS.small_page_size:
        result["small_pages"] = small_pages()
    print(f"-> {bench.write_result(FLAGS.out, result)}")


if __name__ == "__main__":
    _cli.run(main)
