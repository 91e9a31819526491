"""mtz.pairing: costs and merges against brute force, selection, masks, schedules."""
import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from mtz import pairing


def spd(rng, d, rank=None):
    x = rng.standard_normal((rank or d + 3, d))
    return x.T @ x / len(x)


def brute_costs(w_a, w_b, h_a, h_b, alpha=0.5):
    """Double loop, explicit inverses: 1/2 D^T (A'^-1 + B'^-1)^-1 D."""
    a, b = 2 * alpha * h_a, 2 * (1 - alpha) * h_b
    p = np.linalg.inv(np.linalg.inv(a) + np.linalg.inv(b))
    out = np.zeros((w_a.shape[1], w_b.shape[1]))
    for i in range(w_a.shape[1]):
        for j in range(w_b.shape[1]):
            delta = w_a[:, i] - w_b[:, j]
            out[i, j] = 0.5 * delta @ p @ delta
    return out


def greedy_reference(costs, count):
    used_a, used_b, pairs = set(), set(), []
    for flat in np.argsort(costs.ravel(), kind="stable"):
        if len(pairs) == count:
            break
        i, j = divmod(int(flat), costs.shape[1])
        if i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j), pairs.append((i, j))
    return pairs


# (d, m_a, m_b): m_a + m_b < d uses the factored route, otherwise P is formed.
@pytest.mark.parametrize("d, m_a, m_b", [(9, 2, 3), (4, 5, 6)])
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_pair_costs_match_brute_force(d, m_a, m_b, alpha):
    rng = np.random.default_rng(d + m_a)
    h_a, h_b = spd(rng, d), spd(rng, d)
    w_a, w_b = rng.standard_normal((d, m_a)), rng.standard_normal((d, m_b))
    costs = pairing.pair_costs(w_a, w_b, h_a, h_b, alpha=alpha)
    assert costs.shape == (m_a, m_b) and costs.dtype == np.float64
    np.testing.assert_allclose(costs, brute_costs(w_a, w_b, h_a, h_b, alpha), rtol=1e-9)
    p = np.linalg.inv(np.linalg.inv(2 * alpha * h_a) + np.linalg.inv(2 * (1 - alpha) * h_b))
    np.testing.assert_allclose(pairing.pair_metric(h_a, h_b, alpha=alpha), p, rtol=1e-9)


def test_identical_columns_cost_zero_and_singular_hessians():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4))
    h_a, h_b = spd(rng, 6, rank=2), spd(rng, 6, rank=3)  # singular, undamped
    costs = pairing.pair_costs(w, w, h_a, h_b)
    assert np.isfinite(costs).all() and (costs >= 0).all()
    np.testing.assert_allclose(np.diag(costs), 0.0, atol=1e-12 * costs.max())
    # Shared null space: S = H_A + H_B singular, the pseudo-inverse path is used.
    h = spd(rng, 6, rank=2)
    costs = pairing.pair_costs(w, w[:, ::-1], h, 2 * h)
    expected = np.array([[0.5 * (u - v) @ (2 / 3 * h) @ (u - v) for v in w.T[::-1]]
                         for u in w.T])
    np.testing.assert_allclose(costs, expected, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", ["greedy", "optimal", "OPTIMAL_K"])
def test_permutation_recovered_with_zero_cost(method):
    rng = np.random.default_rng(2)
    w_a = rng.standard_normal((8, 6))
    perm = rng.permutation(6)
    w_b = w_a[:, perm]
    costs = pairing.pair_costs(w_a, w_b, spd(rng, 8), spd(rng, 8))
    idx_a, idx_b = pairing.select_pairs(costs, fraction=1.0, method=method)
    assert sorted(idx_a.tolist()) == list(range(6))
    np.testing.assert_array_equal(perm[idx_b], idx_a)
    np.testing.assert_allclose(costs[idx_a, idx_b], 0.0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_merged_weights_are_the_constrained_minimum(alpha):
    rng = np.random.default_rng(3)
    d, k = 5, 3
    h_a, h_b = spd(rng, d), spd(rng, d)
    w_a, w_b = rng.standard_normal((d, k)), rng.standard_normal((d, k))
    merged, cost = pairing.merged_weights(w_a, w_b, h_a, h_b, alpha=alpha, return_costs=True)
    for c in range(k):
        def objective(w):
            da, db = w - w_a[:, c], w - w_b[:, c]
            return alpha * 0.5 * da @ h_a @ da + (1 - alpha) * 0.5 * db @ h_b @ db
        best = minimize(objective, np.zeros(d), method="BFGS", options={"gtol": 1e-12})
        np.testing.assert_allclose(merged[:, c], best.x, atol=1e-5)
        # Costs are 2 * (alpha dE_A + (1 - alpha) dE_B); alpha = 0.5: dE_A + dE_B.
        np.testing.assert_allclose(cost[c], 2 * best.fun, rtol=1e-8)
    normal = np.linalg.solve(alpha * h_a + (1 - alpha) * h_b,
                             alpha * h_a @ w_a + (1 - alpha) * h_b @ w_b)
    np.testing.assert_allclose(merged, normal, rtol=1e-9, atol=1e-12)
    # The merged vector achieves exactly the pair cost.
    np.testing.assert_allclose(cost, np.diag(pairing.pair_costs(w_a, w_b, h_a, h_b, alpha=alpha)),
                               rtol=1e-9)
    np.testing.assert_allclose(pairing.merge_cost(merged, w_a, w_b, h_a=h_a, h_b=h_b, alpha=alpha), cost,
                               rtol=1e-12)


def test_equal_hessians_average():
    rng = np.random.default_rng(4)
    h = spd(rng, 4)
    w_a, w_b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(pairing.merged_weights(w_a, w_b, h, h), (w_a + w_b) / 2,
                               rtol=1e-10, atol=1e-12)
    only_a = pairing.merged_weights(w_a, w_b, h, h, alpha=1.0)
    np.testing.assert_allclose(only_a, w_a, rtol=1e-10, atol=1e-12)


def test_sparse_masks_zeros_stay_zeros():
    rng = np.random.default_rng(5)
    d, k = 7, 5
    h_a, h_b = spd(rng, d), spd(rng, d)
    mask_a, mask_b = rng.random((d, k)) < 0.5, rng.random((d, k)) < 0.6
    mask_a[:, 0], mask_b[:, 0] = True, False  # dense beats empty
    mask_a[:, 1] = mask_b[:, 1] = False  # dead pair
    mask_a[:, 2], mask_b[:, 2] = mask_a[:, 3], mask_b[:, 3]  # two pairs share masks
    w_a, w_b = rng.standard_normal((d, k)) * mask_a, rng.standard_normal((d, k)) * mask_b
    merged, cost = pairing.merged_weights(w_a, w_b, h_a, h_b, mask_a=mask_a, mask_b=mask_b,
                                          return_costs=True)
    free = pairing.merged_weights(w_a, w_b, h_a, h_b, return_costs=True)[1]
    for c in range(k):
        kept = mask_a[:, c] if mask_a[:, c].sum() >= mask_b[:, c].sum() else mask_b[:, c]
        assert not merged[~kept, c].any()
        s = h_a + h_b
        expected = np.zeros(d)
        if kept.any():
            expected[kept] = np.linalg.solve(s[np.ix_(kept, kept)],
                                             (h_a @ w_a[:, c] + h_b @ w_b[:, c])[kept])
        np.testing.assert_allclose(merged[:, c], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged[:, 0], pairing.merged_weights(
        w_a[:, :1], w_b[:, :1], h_a, h_b)[:, 0])
    assert (cost >= free - 1e-12).all()  # constraints cannot lower the error
    with pytest.raises(ValueError, match="expected mask_b of shape"):
        pairing.merged_weights(w_a, w_b, h_a, h_b, mask_b=mask_b[:, :2])


def test_greedy_matches_reference_and_optimal_is_cheaper():
    rng = np.random.default_rng(6)
    for trial in range(30):
        m_a, m_b = rng.integers(1, 25, 2)
        costs = (rng.integers(0, 4, (m_a, m_b)).astype(float) if trial % 3 == 0
                 else rng.random((m_a, m_b)))  # integer costs: many ties
        count = int(rng.integers(0, min(m_a, m_b) + 1))
        idx_a, idx_b = pairing.select_pairs(costs, count=count)
        assert list(zip(idx_a.tolist(), idx_b.tolist())) == greedy_reference(costs, count)
        assert np.all(np.diff(costs[idx_a, idx_b]) >= 0)
        full_g = pairing.select_pairs(costs, fraction=1.0)
        full_o = pairing.select_pairs(costs, fraction=1.0, method="optimal")
        assert costs[full_o].sum() <= costs[full_g].sum() + 1e-12
        for idx in (full_o, pairing.select_pairs(costs, count=count, method="optimal")):
            assert len(set(idx[0].tolist())) == len(idx[0]) == len(set(idx[1].tolist()))


def test_optimal_is_the_best_k_matching():
    rng = np.random.default_rng(7)
    costs = rng.random((4, 5))
    for count in range(5):
        idx = pairing.select_pairs(costs, count=count, method="optimal")
        alias = pairing.select_pairs(costs, count=count, method="optimal_k")
        assert [a.tolist() for a in alias] == [i.tolist() for i in idx]
        best = min(sum(costs[r, c] for r, c in zip(rows, cols))
                   for rows in itertools.combinations(range(4), count)
                   for cols in itertools.permutations(range(5), count))
        assert len(idx[0]) == count
        np.testing.assert_allclose(costs[idx].sum(), best, atol=1e-12)
        greedy = pairing.select_pairs(costs, count=count)
        assert costs[idx].sum() <= costs[greedy].sum() + 1e-12


def test_optimal_never_costs_more_than_greedy():
    """For every count, not only the full matching (200 random problems)."""
    rng = np.random.default_rng(17)
    for _ in range(200):
        m_a, m_b = rng.integers(2, 12, 2)
        costs = rng.random((m_a, m_b)) ** 3
        count = int(rng.integers(1, min(m_a, m_b) + 1))
        optimal = pairing.select_pairs(costs, count=count, method="optimal")
        greedy = pairing.select_pairs(costs, count=count, method="greedy")
        assert len(optimal[0]) == len(greedy[0]) == count
        assert costs[optimal].sum() <= costs[greedy].sum() + 1e-12


def test_optimal_under_a_threshold_takes_the_most_pairs_then_the_cheapest():
    costs = np.array([[0.1, 0.2], [0.15, 0.9]])
    # Greedy takes (0,0) first and is then blocked; optimal finds two cheap pairs.
    assert len(pairing.select_pairs(costs, threshold=0.3)[0]) == 1
    idx_a, idx_b = pairing.select_pairs(costs, threshold=0.3, method="optimal")
    assert sorted(zip(idx_a.tolist(), idx_b.tolist())) == [(0, 1), (1, 0)]
    assert pairing.select_pairs(costs, threshold=0.01, method="optimal")[0].size == 0


def test_threshold_fraction_and_errors():
    rng = np.random.default_rng(8)
    costs = rng.random((6, 9))
    for method in ("greedy", "optimal"):
        idx_a, idx_b = pairing.select_pairs(costs, threshold=0.3, method=method)
        assert (costs[idx_a, idx_b] <= 0.3).all()
    greedy = pairing.select_pairs(costs, threshold=0.3)
    below = costs <= 0.3
    # Greedy under a threshold is the greedy matching restricted to cheap pairs.
    masked = np.where(below, costs, np.inf)
    ref = [(i, j) for i, j in greedy_reference(masked, 6) if below[i, j]]
    assert list(zip(*[g.tolist() for g in greedy])) == ref
    assert len(pairing.select_pairs(costs, fraction=0.5)[0]) == 3
    assert len(pairing.select_pairs(costs, fraction=0.0)[0]) == 0
    with pytest.raises(ValueError, match=r"min\(6, 9\) = 6, received count 7"):
        pairing.select_pairs(costs, count=7)
    with pytest.raises(ValueError, match="exactly one of count, fraction, threshold"):
        pairing.select_pairs(costs, count=2, threshold=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        pairing.select_pairs(costs)
    with pytest.raises(ValueError, match="pairing method"):
        pairing.select_pairs(costs, count=2, method="hungarian")
    with pytest.raises(ValueError, match="'random', received a threshold"):
        pairing.select_pairs(costs, threshold=0.1, method="random")
    with pytest.raises(ValueError, match="expected finite costs"):
        pairing.select_pairs(np.array([[np.nan]]), count=1)
    assert pairing.PairingMethod.parse("Greedy") is pairing.PairingMethod.GREEDY
    assert pairing.PairingMethod.parse("optimal_k") is pairing.PairingMethod.OPTIMAL


def test_shape_and_value_errors():
    rng = np.random.default_rng(9)
    h = spd(rng, 3)
    w = rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match=r"expected h_b of shape \[d, d\] = \[3, 3\]"):
        pairing.pair_costs(w, w, h, np.eye(4))
    with pytest.raises(ValueError, match="expected w_b with d = 3 rows"):
        pairing.pair_costs(w, np.zeros((4, 2)), h, h)
    with pytest.raises(ValueError, match="expected finite w_a"):
        pairing.pair_costs(np.full((3, 2), np.nan), w, h, h)
    with pytest.raises(ValueError, match="expected a symmetric h_a"):
        pairing.pair_costs(w, w, h + np.triu(np.ones((3, 3)), 1), h)
    with pytest.raises(ValueError, match=r"expected alpha in \[0, 1\]"):
        pairing.pair_costs(w, w, h, h, alpha=2.0)
    with pytest.raises(ValueError, match=r"expected w_b of shape \(3, 2\)"):
        pairing.merged_weights(w, w[:, :1], h, h)


def test_random_pairs():
    idx_a, idx_b = pairing.random_pairs(10, 7, 5, rng=0)
    assert len(set(idx_a.tolist())) == len(set(idx_b.tolist())) == 5
    assert idx_a.max() < 10 and idx_b.max() < 7
    np.testing.assert_array_equal(idx_a, pairing.random_pairs(10, 7, 5, rng=0)[0])
    with pytest.raises(ValueError, match="received count 8"):
        pairing.random_pairs(10, 7, 8, rng=0)


def test_share_schedule():
    s = pairing.ShareSchedule.parse("1.0")
    assert (s.kind, s.values) == ("fraction", (1.0,))
    assert s.for_layer(5, 30, 20) == {"count": 20}
    s = pairing.ShareSchedule.parse("300, 100")
    assert (s.kind, s.values) == ("count", (300, 100))
    assert s.for_layer(1, 100, 120) == {"count": 100}
    with pytest.raises(ValueError, match=r"min\(100, 50\) = 50, received count 100"):
        s.for_layer(1, 100, 50)
    with pytest.raises(ValueError, match=r"layer index in \[0, 2\), received 2"):
        s.for_layer(2, 500, 500)
    s = pairing.ShareSchedule.parse("eps=0.01")
    assert s.for_layer(0, 3, 4) == {"threshold": 0.01}
    assert pairing.ShareSchedule.parse("fraction=0.5,0.25").values == (0.5, 0.25)
    for schedule in (s, pairing.ShareSchedule("count", (3, 4))):
        assert pairing.ShareSchedule.from_config(schedule.get_config()) == schedule
        assert pairing.ShareSchedule.parse(str(schedule)) == schedule
    for bad, message in [("300,0.5", "all counts"), ("1.5", "fraction in"),
                         ("abc", "comma-separated numbers"), ("foo=1", "prefix"),
                         ("eps=-1", "threshold >= 0"), ("count=2.5", "integer counts")]:
        with pytest.raises(ValueError, match=message):
            pairing.ShareSchedule.parse(bad)
    with pytest.raises(ValueError, match="expected kind"):
        pairing.ShareSchedule("percent", (1,))
    with pytest.raises(Exception):
        s.kind = "count"  # frozen


def test_default_damping_keeps_merged_weights_near_the_originals():
    """Directions few inputs excite, correlated differently in A and B, make the
    undamped merge w* = (H_A + H_B)^-1 (H_A a + H_B b) explode (what zipped three
    keyword networks to chance); ZipConfig's damping keeps w* within their range."""
    from mtz import ZipConfig, hessian
    rng = np.random.default_rng(0)
    n, d = 200, 20
    scale = np.r_[np.ones(10), 1e-3 * np.ones(10)]          # ten weak input directions
    xa = rng.normal(size=(n, d)) * scale
    xb = rng.normal(size=(n, d)) * scale
    xb[:, 10:] += 1e-3 * xb[:, :10]
    a, b = rng.normal(size=(d, 4)), rng.normal(size=(d, 4))
    bound = max(np.abs(a).max(), np.abs(b).max())

    def merged(damping):
        return pairing.merged_weights(a, b, hessian.layer_hessian(xa, bias=False,
                                                                  damping=damping),
                                      hessian.layer_hessian(xb, bias=False, damping=damping))

    assert np.abs(merged(1e-6)).max() > 50 * bound
    assert np.abs(merged(ZipConfig().damping)).max() <= bound
