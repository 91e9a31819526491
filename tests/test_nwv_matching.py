"""Known-answer tests of nwv.matching: costs, pool growth, greedy vs optimal, errors."""
import os

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from nwv import matching, pages
from nwv.matching import MatchingMethod, PoolState

METHODS = ["greedy", "optimal"]


def _pages(rng, n, p=6, zero_fisher_rows=0):
    w = rng.normal(size=(n, p)).astype(np.float32)
    f = rng.gamma(0.5, size=(n, p)).astype(np.float32)
    f[:zero_fisher_rows] = 0.0
    return w, f


def _brute_cost(w, f, w_pool, f_pool):
    out = np.zeros((len(w), len(w_pool)))
    for i in range(len(w)):
        for j in range(len(w_pool)):
            for k in range(w.shape[1]):
                d = float(w[i, k]) - float(w_pool[j, k])
                out[i, j] += (float(f[i, k]) + float(f_pool[j, k])) * d * d
    return out


def test_page_costs_equal_brute_force():
    rng = np.random.default_rng(0)
    w, f = _pages(rng, 9, zero_fisher_rows=2)
    w_pool, f_pool = _pages(rng, 7)
    costs = matching.page_costs(w, f, w_pool, f_pool)
    assert costs.shape == (9, 7) and costs.dtype == np.float64
    np.testing.assert_allclose(costs, _brute_cost(w, f, w_pool, f_pool), rtol=1e-10, atol=1e-12)
    assert np.all(costs >= 0)


def test_identical_pages_cost_exactly_zero():
    rng = np.random.default_rng(1)
    w, f = _pages(rng, 12)
    w *= 1e3                                     # large values: round-off must still vanish
    costs = matching.page_costs(w, f, w, f)
    assert np.all(np.diag(costs) == 0.0)
    assert np.all(costs[~np.eye(12, dtype=bool)] > 0)


@pytest.mark.parametrize("method", METHODS)
def test_first_network_is_copied_and_self_match_costs_zero(method):
    rng = np.random.default_rng(2)
    w, f = _pages(rng, 15)
    table, pool, cost = matching.match_network(PoolState.empty(6), w, f, method)
    np.testing.assert_array_equal(table, np.arange(15))
    assert cost == 0.0 and pool.weights.tobytes() == w.tobytes()
    np.testing.assert_array_equal(pool.occupancy, np.ones(15))
    assert PoolState.from_network(w, f).weights.tobytes() == w.tobytes()

    table, pool2, cost = matching.match_network(pool, w, f, method)
    assert cost == 0.0
    np.testing.assert_array_equal(table, np.arange(15))
    np.testing.assert_array_equal(pool2.weights, w)          # mean of equal pages
    np.testing.assert_allclose(pool2.fisher, 2 * f, rtol=1e-6)
    np.testing.assert_array_equal(pool2.occupancy, np.full(15, 2))


def test_merge_is_fisher_weighted_mean_with_plain_mean_fallback():
    pool = PoolState(np.array([[1.0, 2.0, 4.0]], np.float32),
                     np.array([[3.0, 0.0, 0.0]], np.float32), np.array([1]))
    w, f = np.array([[5.0, 6.0, 8.0]], np.float32), np.array([[1.0, 2.0, 0.0]], np.float32)
    table, new, cost = matching.match_network(pool, w, f)
    np.testing.assert_array_equal(table, [0])
    # (3*1 + 1*5)/4 = 2; Fisher-weighted 6 (pool Fisher 0); plain mean (4 + 8)/2 = 6.
    np.testing.assert_allclose(new.weights, [[2.0, 6.0, 6.0]])
    np.testing.assert_allclose(new.fisher, [[4.0, 2.0, 0.0]])    # summed Fisher
    assert cost == pytest.approx(4 * 16 + 2 * 16 + 0)
    with pytest.raises(ValueError):
        new.weights[0, 0] = 1.0                                    # read-only state


def test_constructed_case_optimal_strictly_beats_greedy():
    # Pool pages 0.0 and 1.0 (Fisher 1). Page A=0.4 (Fisher 10) is Fisher-heavier,
    # so greedy gives it its cheapest partner 0.0 (cost 11*0.16) and leaves B=-1
    # (Fisher 5) the costly 1.0 (6*4); optimal swaps them: 11*0.36 + 6*1.
    pool = PoolState.from_network(np.array([[0.0], [1.0]]), np.ones((2, 1)))
    w, f = np.array([[0.4], [-1.0]]), np.array([[10.0], [5.0]])
    t_greedy, _, c_greedy = matching.match_network(pool, w, f, "greedy")
    t_opt, _, c_opt = matching.match_network(pool, w, f, MatchingMethod.OPTIMAL)
    np.testing.assert_array_equal(t_greedy, [0, 1])
    np.testing.assert_array_equal(t_opt, [1, 0])
    assert c_greedy == pytest.approx(1.76 + 24.0) and c_opt == pytest.approx(3.96 + 6.0)


@pytest.mark.parametrize("seed", range(8))
def test_optimal_never_costlier_than_greedy_and_tables_injective(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 30, size=4)
    nets = [_pages(rng, int(n), zero_fisher_rows=int(seed % 3)) for n in sizes]
    results = {m: matching.virtualize_pages(nets, m) for m in METHODS}
    for method, (pool, tables, costs) in results.items():
        assert pool.n_pages == sizes.max()
        for (w, _), table in zip(nets, tables):
            assert table.shape == (len(w),) and np.unique(table).size == len(w)
            assert table.min() >= 0 and table.max() < pool.n_pages
        np.testing.assert_array_equal(np.bincount(np.concatenate(tables)), pool.occupancy)
    # Same pool before each network: optimal <= greedy network by network.
    pool = PoolState.empty(6)
    for w, f in nets:
        _, _, c_greedy = matching.match_network(pool, w, f, "greedy")
        table, pool, c_opt = matching.match_network(pool, w, f, "optimal")
        assert c_opt <= c_greedy * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_lowest_occupancy_pages_fill_first(method):
    rng = np.random.default_rng(5)
    w_pool, f_pool = _pages(rng, 5)
    pool = PoolState(w_pool, f_pool, np.array([2, 1, 3, 1, 2]))
    w, f = _pages(rng, 3)
    table, new, _ = matching.match_network(pool, w, f, method)
    assert set(table) >= {1, 3} and len(set(table) & {0, 4}) == 1
    np.testing.assert_array_equal(new.occupancy - pool.occupancy, np.isin(range(5), table))


@pytest.mark.parametrize("method", METHODS)
def test_bigger_network_grows_the_pool(method):
    rng = np.random.default_rng(6)
    small, big = _pages(rng, 5), _pages(rng, 8)
    big[1][[2, 5, 7]] *= 100.0                       # the three Fisher-heaviest pages
    pool, tables, costs = matching.virtualize_pages([small, big], method)
    table = tables[1]
    assert pool.n_pages == 8 and np.unique(table).size == 8
    np.testing.assert_array_equal(pool.occupancy, [2] * 5 + [1] * 3)
    fresh = np.flatnonzero(table >= 5)
    np.testing.assert_array_equal(table[fresh], [5, 6, 7])   # new pages in page order
    assert pool.weights[5:].tobytes() == big[0][fresh].tobytes()
    if method == "greedy":
        np.testing.assert_array_equal(fresh, [2, 5, 7])
    greedy_cost = matching.virtualize_pages([small, big], "greedy")[2][1]
    assert costs[1] <= greedy_cost * (1 + 1e-9)


def test_order_for_pooling_is_largest_first():
    assert matching.order_for_pooling([3, 7, 7, 2]) == [1, 2, 0, 3]
    rng = np.random.default_rng(7)
    nets = [_pages(rng, n) for n in (4, 9, 6)]
    ordered = [nets[i] for i in matching.order_for_pooling([len(w) for w, _ in nets])]
    pool, tables, _ = matching.virtualize_pages(ordered)
    assert pool.n_pages == 9 and list(tables[0]) == list(range(9))


def test_errors_are_clear():
    rng = np.random.default_rng(8)
    w, f = _pages(rng, 4)
    pool = PoolState.from_network(w, f)
    with pytest.raises(ValueError, match=r"expected network Fisher of shape \(4, 6\)"):
        matching.match_network(pool, w, f[:3])
    with pytest.raises(ValueError, match="expected network pages of size 6, received 5"):
        matching.match_network(pool, w[:, :5], f[:, :5])
    with pytest.raises(ValueError, match=r"expected network weights of shape \[n, P\]"):
        matching.page_costs(w[0], f[0], w, f)
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="expected finite network weights, received 1"):
        matching.match_network(pool, bad, f)
    with pytest.raises(ValueError, match="expected non-negative network Fisher"):
        matching.match_network(pool, w, -f)
    with pytest.raises(ValueError, match="expected a matching method in"):
        matching.match_network(pool, w, f, "hungarian")
    assert MatchingMethod.parse("OPTIMAL") is MatchingMethod.OPTIMAL
    with pytest.raises(ValueError, match=r"expected occupancy of shape \(4,\)"):
        PoolState(w, f, np.ones(3, np.int64))
    with pytest.raises(ValueError, match="expected at least one"):
        matching.virtualize_pages([])


def test_reference_networks_optimal_beats_greedy(shared_dir):
    nets = []
    for net in ("gtsrb", "gsc", "mnist", "cifar10", "svhn"):     # largest first
        with np.load(os.path.join(shared_dir, "reference", "nwv", f"{net}.npz")) as npz:
            n = sum(k.startswith("weight_") for k in npz.files)
            keys = [f"{kind}_{i}" for i in range(n) for kind in ("weight", "bias")]
            nets.append((pages.paginate([npz[k] for k in keys], 100)[0],
                         pages.paginate([npz["fisher_" + k] for k in keys], 100)[0]))
    greedy = matching.virtualize_pages(nets, "greedy")
    optimal = matching.virtualize_pages(nets, "optimal")
    assert greedy[0].n_pages == optimal[0].n_pages == 665
    assert greedy[2][0] == optimal[2][0] == 0.0
    assert sum(optimal[2]) < sum(greedy[2])


def test_sparse_optimal_with_certificate_equals_the_dense_assignment(monkeypatch):
    """Large problems are solved on candidate pairs with an LP-duality certificate
    (`_match_optimal`); on 120 random problems with occupancy levels, ties and
    few candidates (so the pricing loop runs), it finds the dense optimum."""
    monkeypatch.setattr(matching, "_DENSE_ENTRIES", 0)
    rng = np.random.default_rng(11)
    for trial in range(120):
        n = int(rng.integers(5, 50))
        m = int(rng.integers(n, 70))
        costs = rng.random((n, m)) ** 3
        if trial == 0:
            costs[:] = 0.0                               # nothing to choose between
        elif trial % 3 == 0:
            costs[:, : m // 3] = 0.0                     # ties
        elif trial % 3 == 1:                             # 14 decades: below the flow's
            costs = 10.0 ** rng.uniform(-14, 0, (n, m))  # integer step of 2^-40
        occupancy = rng.integers(0, 3, m)
        dense = matching._match_optimal_dense(costs, occupancy)
        sparse = matching._match_optimal(costs.copy(), occupancy, candidates=2)
        assert len(set(sparse.tolist())) == n
        assert sorted(occupancy[sparse]) == sorted(occupancy[dense])   # same level quotas
        np.testing.assert_allclose(costs[np.arange(n), sparse].sum(),
                                   costs[np.arange(n), dense].sum(), rtol=1e-12,
                                   atol=1e-12 if trial % 3 != 1 else 1e-13)


@pytest.mark.parametrize("swap", [False, True])
def test_restricted_flow_resolves_costs_below_its_integer_step(swap):
    """Cost differences of 1e-14 against a range of 1 vanish in the first integer stage
    (step 2^-40 ≈ 9e-13); the second stage, on the reduced costs, finds the optimum
    whichever way the first stage broke the tie, with potentials that certify it."""
    costs = np.array([[3e-14, 1e-14, 1.0],
                      [1e-14, 3e-14, 1.0],
                      [1.0, 1.0, 0.0]])
    if swap:
        costs = costs[:, [1, 0, 2]]
    col_of_row, potentials = matching._restricted_flow(costs, np.ones((3, 3), bool), 3)
    rows, best = linear_sum_assignment(costs)
    np.testing.assert_array_equal(col_of_row, best)
    reduced = costs + potentials[:3, None] - potentials[None, 3:6]
    assert reduced.min() >= -1e-20
    np.testing.assert_allclose(reduced[rows, col_of_row], 0.0, atol=1e-20)


def test_restricted_flow_names_candidates_without_a_full_matching():
    with pytest.raises(ValueError, match="no full matching"):
        matching._restricted_flow(np.ones((2, 2)), np.array([[True, False], [True, False]]), 0)


def test_bellman_ford_stops_early_and_detects_negative_cycles():
    dist = matching.bellman_ford(4, np.array([0, 1, 2]), np.array([1, 2, 3]),
                                 np.array([-1.0, 2.0, -5.0]))
    np.testing.assert_allclose(dist, [0.0, -1.0, 0.0, -5.0])
    with pytest.raises(ValueError, match="negative cycle"):
        matching.bellman_ford(2, np.array([0, 1]), np.array([1, 0]), np.array([-1.0, 0.5]))
    exact = matching.bellman_ford(3, np.array([0, 1]), np.array([1, 2]),
                                  np.array([-(2 ** 60), 2 ** 60 - 1]))
    assert exact.dtype == np.int64 and exact.tolist() == [0, -(2 ** 60), -1]   # no rounding
