"""Neuron pairing costs, merged weights and pair selection of MTZ (arrays only).

Zipping neuron i of network A with neuron j of network B replaces their incoming
weights a = w_a[:, i], b = w_b[:, j] by one vector w, at the layer-wise error
increase (TMC 2021 Eq. 2.9-2.11) dE(w) = 1/2 (w-a)^T H_A (w-a) + 1/2 (w-b)^T H_B (w-b),
minimised by (Eq. 2.12-2.13)      w* = (H_A + H_B)^-1 (H_A a + H_B b),
at the cost (Eq. 2.14-2.16)       d_ij = 1/2 D^T (H_A^-1 + H_B^-1)^-1 D,  D = a - b,
with (H_A^-1 + H_B^-1)^-1 = P = H_A (H_A + H_B)^-1 H_B (no inverse of H_A or H_B).

Task weights (TMC Eq. 2.7-2.8): minimising alpha*E_A + (1-alpha)*E_B is the
same problem with H_A -> A' = 2 alpha H_A and H_B -> B' = 2 (1-alpha) H_B
(`mtz.hessian.alpha_scaled`): setting the gradient A'(w-a) + B'(w-b) to 0 gives
w* = (A'+B')^-1 (A'a + B'b); substituting, w*-a = (A'+B')^-1 B' (b-a) and
w*-b = (A'+B')^-1 A' (a-b), so the minimum is 1/2 D^T A'(A'+B')^-1 B' D. The costs are
2*(alpha dE_A + (1-alpha) dE_B); alpha = 0.5 gives the formulas above exactly.

Numerics: S = A' + B' = L L^T is Cholesky-factored once; P = A' - Y^T Y with
Y = L^-1 A' (or the same with B', whichever is smaller, so the round-off stays
near eps*min(|A'|, |B'|)); no explicit inverse. A numerically singular S falls
back to an eigendecomposition pseudo-inverse on the range of S, outside which
both quadratic forms vanish.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import scipy.linalg
from scipy.optimize import linear_sum_assignment

from models.choices import Choice
from mtz.hessian import check_alpha

__all__ = ["PairingMethod", "ShareSchedule", "pair_metric", "pair_costs", "merged_weights",
           "merge_cost", "select_pairs", "resolve_share", "random_pairs"]


def _matrix(name, value):
    """value as a finite 2-D float64 array, else ValueError."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected {name} with 2 dimensions, received shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"expected finite {name}, received NaN or inf")
    return array


def _check(w_a, w_b, h_a, h_b, alpha, same_columns=False):
    """Validated float64 (w_a, w_b, A', B'), A' = 2 alpha H_A, B' = 2 (1-alpha) H_B."""
    w_a, w_b = _matrix("w_a", w_a), _matrix("w_b", w_b)
    d = w_a.shape[0]
    if w_b.shape[0] != d:
        raise ValueError(f"expected w_b with d = {d} rows like w_a, received {w_b.shape}")
    if same_columns and w_b.shape != w_a.shape:
        raise ValueError(f"expected w_b of shape {w_a.shape} like w_a, received {w_b.shape}")
    alpha = check_alpha(alpha)
    hs = []
    for name, h, weight in (("h_a", h_a, 2 * alpha), ("h_b", h_b, 2 - 2 * alpha)):
        h = _matrix(name, h)
        if h.shape != (d, d):
            raise ValueError(f"expected {name} of shape [d, d] = [{d}, {d}], received {h.shape}")
        sym = h - h.T  # one transposed pass: asymmetry, then (H + H^T) / 2 = H - diff / 2
        asym = np.abs(sym).max(initial=0.0)
        if asym > 1e-6 * np.abs(h).max(initial=0.0):
            raise ValueError(f"expected a symmetric {name}, received max |H - H^T| = {asym:.3g}")
        sym *= -0.5 * weight
        sym += weight * h  # symmetrised and alpha-scaled (see mtz.hessian.alpha_scaled)
        hs.append(sym)
    return w_a, w_b, hs[0], hs[1]


class _Factor:
    """S = A' + B' factored once: apply(M) = L^-1 M, solve(R) = S^-1 R (or pseudo-)."""

    def __init__(self, s):
        tiny = s.shape[0] * np.finfo(np.float64).eps * max(np.diag(s).max(initial=0.0), 1e-300)
        try:
            self._l, self._g = np.linalg.cholesky(s), None
            if np.diag(self._l).min(initial=np.inf) ** 2 > tiny:
                return  # well-posed; a tinier pivot means S is numerically singular
        except np.linalg.LinAlgError:
            pass
        vals, vecs = np.linalg.eigh(s)
        keep = vals > max(vals.max(initial=0.0), 0.0) * s.shape[0] * np.finfo(np.float64).eps
        self._g = (vecs[:, keep] / np.sqrt(vals[keep])).T  # S^+ = G^T G

    def apply(self, m):
        if self._g is not None:
            return self._g @ m
        return scipy.linalg.solve_triangular(self._l, m, lower=True, check_finite=False)

    def metric(self, a, b):
        """P = A' S^-1 B' = A' - Y^T Y, Y = L^-1 A' (A' the smaller of A', B'): trsm + syrk."""
        small = a if np.trace(a) <= np.trace(b) else b
        y = self.apply(small)
        p = small - y.T @ y
        return 0.5 * (p + p.T)

    def solve(self, r):
        if self._g is not None:
            return self._g.T @ (self._g @ r)
        return scipy.linalg.cho_solve((self._l, True), r, check_finite=False)


def pair_metric(h_a, h_b, *, alpha: float = 0.5) -> np.ndarray:
    """P = A'(A'+B')^-1 B' = (A'^-1 + B'^-1)^-1, the metric of the pair cost (TMC Eq. 2.16).

    Args: h_a, h_b [d, d] symmetric PSD Hessians; alpha in [0, 1].
    Returns: [d, d] float64 symmetric P (A' = 2 alpha H_A, B' = 2 (1-alpha) H_B).
    """
    d = np.shape(h_a)[0] if np.ndim(h_a) == 2 else 0
    _, _, a, b = _check(np.zeros((d, 1)), np.zeros((d, 1)), h_a, h_b, alpha)
    return _Factor(a + b).metric(a, b)


def pair_costs(w_a, w_b, h_a, h_b, *, alpha: float = 0.5) -> np.ndarray:
    """All pairing costs d_ij = 1/2 D^T P D, D = w_a[:, i] - w_b[:, j] (TMC Eq. 2.14-2.16).

    Computed as 1/2 (a_i^T P a_i + b_j^T P b_j - 2 a_i^T P b_j) with three matrix
    products. When m_a + m_b < d, P is never formed: with S = L L^T,
    u^T P v = (L^-1 A' u)^T (L^-1 B' v), which costs O(d^2 (m_a+m_b)) instead of O(d^3).

    Args:
      w_a: [d, m_a] incoming weights of network A (bias last row); w_b: [d, m_b].
      h_a, h_b: [d, d] layer Hessians; alpha: task weight (0.5: TMC Eq. 2.16).
    Returns: [m_a, m_b] float64 costs >= 0.
    Raises: ValueError: shapes disagree, non-finite inputs, asymmetric H, bad alpha.
    """
    w_a, w_b, a, b = _check(w_a, w_b, h_a, h_b, alpha)
    factor = _Factor(a + b)
    if w_a.shape[1] + w_b.shape[1] < w_a.shape[0]:
        ya, za = factor.apply(a @ w_a), factor.apply(b @ w_a)
        yb, zb = factor.apply(a @ w_b), factor.apply(b @ w_b)
        qa, qb = np.einsum("ij,ij->j", ya, za), np.einsum("ij,ij->j", yb, zb)
        costs = ya.T @ zb
    else:
        p = factor.metric(a, b)
        pa, pb = p @ w_a, p @ w_b
        qa, qb = np.einsum("ij,ij->j", w_a, pa), np.einsum("ij,ij->j", w_b, pb)
        costs = pa.T @ w_b
    costs *= -1.0  # in place: costs = 1/2 qa + 1/2 qb - cross, clipped at 0
    costs += 0.5 * qa[:, None] + 0.5 * qb[None, :]
    return np.maximum(costs, 0.0, out=costs)


def merge_cost(merged, w_a, w_b, *, h_a, h_b, alpha: float = 0.5) -> np.ndarray:
    """Per-pair error 1/2 Da^T A' Da + 1/2 Db^T B' Db, Da = merged - w_a (TMC Eq. 2.11).

    Equals the diagonal of `pair_costs` (Eq. 2.16) at the unconstrained optimum.
    Args: merged, w_a, w_b [d, k] (column k is pair k); h_a, h_b [d, d]; alpha.
    Returns: [k] float64. Raises: ValueError on bad shapes or values.
    """
    w_a, w_b, a, b = _check(w_a, w_b, h_a, h_b, alpha, same_columns=True)
    merged = _matrix("merged", merged)
    if merged.shape != w_a.shape:
        raise ValueError(f"expected merged of shape {w_a.shape}, received {merged.shape}")
    return _merge_cost(merged, w_a, w_b, a, b)


def _merge_cost(merged, w_a, w_b, a, b):
    da, db = merged - w_a, merged - w_b
    return 0.5 * (np.einsum("ij,ij->j", da, a @ da) + np.einsum("ij,ij->j", db, b @ db))


def _kept_mask(mask_a, mask_b, shape):
    """Per pair, the mask (of A or B) with more ones; ties keep A's. None = dense."""
    m = [np.ones(shape, bool) if x is None else np.asarray(x, bool) for x in (mask_a, mask_b)]
    for name, mask in zip(("mask_a", "mask_b"), m):
        if mask.shape != shape:
            raise ValueError(f"expected {name} of shape {shape}, received {mask.shape}")
    return np.where((m[0].sum(axis=0) >= m[1].sum(axis=0))[None, :], m[0], m[1])


def merged_weights(w_a, w_b, h_a, h_b, *, alpha: float = 0.5, mask_a=None, mask_b=None,
                   return_costs: bool = False):
    """Merged weights w* = (A'+B')^-1 (A' w_a + B' w_b) of aligned pairs (TMC Eq. 2.12-2.13).

    Sparse networks ("zeros stay zeros"): with masks, each pair keeps the mask of
    the neuron with more non-zeros (ties: A's; a missing mask counts as dense) and
    w* minimises the same error subject to w*[~M] = 0, i.e. solves the principal
    system S[M, M] w*[M] = (A' a + B' b)[M]. Pairs sharing one kept mask are solved
    together, so the loop runs over distinct masks, not pairs.

    Args:
      w_a, w_b: [d, k] weights, column k of both is pair k; h_a, h_b: [d, d]; alpha.
      mask_a, mask_b: optional [d, k] booleans, True where a weight may be non-zero.
      return_costs: also return the per-pair error (`merge_cost`; without masks it
        equals the diagonal of `pair_costs`).
    Returns: [d, k] float64 merged weights, or (merged, costs [k]) with return_costs.
    """
    w_a, w_b, a, b = _check(w_a, w_b, h_a, h_b, alpha, same_columns=True)
    s, diff = a + b, w_b - w_a
    r = b @ diff
    merged = _Factor(s).solve(r)
    # Unconstrained cost 1/2 D^T A' S^-1 B' D = 1/2 (B'D)^T (D - S^-1 B'D): no extra product.
    costs = 0.5 * np.einsum("ij,ij->j", r, diff - merged) if return_costs else None
    merged += w_a  # = S^-1 (A' w_a + B' w_b)
    kept = None if mask_a is None and mask_b is None else _kept_mask(mask_a, mask_b, w_a.shape)
    sparse = np.zeros(0, int) if kept is None else np.flatnonzero(~kept.all(axis=0))
    if sparse.size:
        rhs = a @ w_a[:, sparse] + b @ w_b[:, sparse]
        masks, group = np.unique(kept[:, sparse].T, axis=0, return_inverse=True)
        for g, support in enumerate(masks):  # one solve per distinct mask
            cols = np.flatnonzero(group.ravel() == g)
            merged[:, sparse[cols]] = 0.0
            if support.any():
                solved = _Factor(s[np.ix_(support, support)]).solve(rhs[support][:, cols])
                merged[np.ix_(support, sparse[cols])] = solved
        if return_costs:
            costs[sparse] = _merge_cost(merged[:, sparse], w_a[:, sparse], w_b[:, sparse], a, b)
    return (merged, np.maximum(costs, 0.0)) if return_costs else merged


class PairingMethod(Choice):
    """How `select_pairs` matches neurons (see there); strings are accepted.

    "optimal_k" (the name of the exact k-pair matching before "optimal" became
    exact for every count) is accepted as an alias of "optimal".
    """

    GREEDY = "greedy"
    OPTIMAL = "optimal"
    RANDOM = "random"

    @classmethod
    def _label(cls) -> str:
        return "pairing method"

    @classmethod
    def _aliases(cls) -> dict:
        return {"optimal_k": "optimal"}


def resolve_share(m_a: int, m_b: int, *, count=None, fraction=None, threshold=None):
    """(count, None) or (None, threshold) from exactly one of count / fraction / threshold.

    fraction is of min(m_a, m_b), rounded half up. Raises ValueError when not exactly
    one is given, a value is out of range, or count > min(m_a, m_b).
    """
    given = [k for k, v in zip(("count", "fraction", "threshold"), (count, fraction, threshold))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"expected exactly one of count, fraction, threshold, received {given}")
    n = min(m_a, m_b)
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"expected fraction in [0, 1], received {fraction!r}")
        count = int(math.floor(fraction * n + 0.5))
    if threshold is not None:
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"expected a threshold >= 0, received {threshold!r}")
        return None, float(threshold)
    if int(count) != count or count < 0:
        raise ValueError(f"expected a count >= 0, received {count!r}")
    if count > n:
        raise ValueError(f"expected count <= min(m_a, m_b) = min({m_a}, {m_b}) = {n}, "
                         f"received count {count}")
    return int(count), None


def _sorted_flat(flat, subset=None):
    """Flat indices (of `subset`, default all) by ascending (cost, index).

    SIMD quicksort, then only runs of equal costs are re-sorted by index: the
    same order as a stable argsort at less than half its time.
    """
    order = np.argsort(flat) if subset is None else subset[np.argsort(flat[subset])]
    values = flat[order]
    tied = np.flatnonzero(values[1:] == values[:-1])
    if tied.size:
        pos = np.union1d(tied, tied + 1)
        order[pos] = order[pos][np.lexsort((order[pos], values[pos]))]
    return order


def _greedy(costs, count, threshold):
    m_a, m_b = costs.shape
    flat = costs.ravel()
    order = _sorted_flat(flat, None if threshold is None else np.flatnonzero(flat <= threshold))
    target = min(m_a, m_b) if count is None else count
    used_r, used_c = bytearray(m_a), bytearray(m_b)
    np_r = np.frombuffer(used_r, np.uint8).view(bool)  # shares memory with used_r
    np_c = np.frombuffer(used_c, np.uint8).view(bool)
    rows, cols, pos, block = [], [], 0, 4096
    while len(rows) < target and pos < order.size:
        r, c = np.divmod(order[pos:pos + block], m_b)
        pos, block = pos + block, min(2 * block, 1 << 20)
        alive = ~(np_r[r] | np_c[c])  # drop pairs blocked before this block
        for i, j in zip(r[alive].tolist(), c[alive].tolist()):
            if not (used_r[i] or used_c[j]):
                used_r[i] = used_c[j] = 1
                rows.append(i), cols.append(j)
                if len(rows) == target:
                    break
    return np.array(rows, np.int64), np.array(cols, np.int64)


def _optimal_k(costs, count):
    """The minimum-cost matching of exactly `count` pairs: an assignment on the
    matrix padded with zero-cost dummies (dummy rows may not take dummy columns)."""
    m_a, m_b = costs.shape
    if count == min(m_a, m_b):
        return linear_sum_assignment(costs)
    padded = np.zeros((m_a + m_b - count, m_a + m_b - count))
    padded[:m_a, :m_b] = costs
    padded[m_a:, m_b:] = np.inf
    rows, cols = linear_sum_assignment(padded)
    real = (rows < m_a) & (cols < m_b)
    return rows[real], cols[real]


def _optimal_threshold(costs, threshold):
    """The most pairs of cost <= threshold, and among those the cheapest matching:
    a pair above the threshold costs more than all allowed pairs together, so the
    assignment first maximises the allowed pairs, then minimises their cost."""
    allowed = costs <= threshold
    if not allowed.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    penalty = 1.0 + 2.0 * float(np.sum(costs[allowed]))
    rows, cols = linear_sum_assignment(np.where(allowed, costs, penalty))
    keep = allowed[rows, cols]
    return rows[keep], cols[keep]


def select_pairs(costs, *, count=None, fraction=None, threshold=None, method="greedy",
                 seed=None):
    """Chooses disjoint neuron pairs to zip from a cost matrix (TMC Sec. 2.3).

    Args:
      costs: [m_a, m_b] finite costs (`pair_costs`).
      count / fraction / threshold: exactly one: number of pairs, fraction of
        min(m_a, m_b) (rounded half up), or pairs with cost <= threshold.
      method: `PairingMethod` or its string.
        greedy (MTZ): ascending cost, each neuron at most once; one pass over the
          (cost, index)-sorted matrix, vectorised per block.
        optimal: the minimum-cost matching of exactly `count` pairs (an
          assignment on the matrix padded with zero-cost dummies), so its total
          cost is never above greedy's; with a threshold, the largest matching of
          pairs at or below it and, among those, the cheapest.
        random: `count` uniformly random disjoint pairs (the ablation; `seed`).
      seed: seed of the random pairing.
    Returns: (idx_a, idx_b) int64 arrays by ascending cost (ties: row-major order).
    Raises: ValueError: bad costs, share spec or method; random with a threshold.
    """
    costs = _matrix("costs", costs)
    m_a, m_b = costs.shape
    count, threshold = resolve_share(m_a, m_b, count=count, fraction=fraction,
                                     threshold=threshold)
    method = PairingMethod.parse(method)
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if method is PairingMethod.GREEDY:
        return _greedy(costs, count, threshold)
    if method is PairingMethod.RANDOM:
        if count is None:
            raise ValueError("expected count or fraction for method 'random', received a "
                             "threshold")
        rows, cols = random_pairs(m_a, m_b, count, rng=seed)
    elif count is None:
        rows, cols = _optimal_threshold(costs, threshold)
    else:
        rows, cols = _optimal_k(costs, count)
    values = costs[rows, cols]
    order = np.lexsort((rows * m_b + cols, values))
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def random_pairs(m_a: int, m_b: int, count: int, rng=None):
    """`count` disjoint uniformly random pairs (the random-pairing ablation).

    Args: m_a, m_b widths; count <= min(m_a, m_b); rng: Generator or seed.
    Returns: (idx_a, idx_b) int64 arrays of length count.
    """
    count, _ = resolve_share(m_a, m_b, count=count)
    rng = np.random.default_rng(rng)
    return (rng.choice(m_a, count, replace=False).astype(np.int64),
            rng.choice(m_b, count, replace=False).astype(np.int64))


_KINDS = {"count": "count", "fraction": "fraction", "threshold": "threshold", "eps": "threshold"}


@dataclasses.dataclass(frozen=True)
class ShareSchedule:
    """How many neurons each layer shares: counts, fractions or cost thresholds.

    kind: "count" | "fraction" | "threshold"; values: one per layer, or a single
    value applied to every layer. `parse("1.0")` -> fraction 1.0 for all layers,
    `parse("300,100")` -> counts per layer, `parse("eps=0.01")` -> threshold; the
    prefixes count= / fraction= / threshold= (alias eps=) are also accepted.
    """

    kind: str
    values: tuple

    def __post_init__(self):
        if self.kind not in ("count", "fraction", "threshold"):
            raise ValueError(f"expected kind 'count', 'fraction' or 'threshold', "
                             f"received {self.kind!r}")
        values = tuple(self.values) if isinstance(self.values, (tuple, list)) else (self.values,)
        for v in values or [None]:
            try:
                resolve_share(1 << 62, 1 << 62, **{self.kind: v})  # range checks only
            except (TypeError, ValueError) as error:
                raise ValueError(f"invalid {self.kind} {v!r} in ShareSchedule: {error}") from None
        cast = int if self.kind == "count" else float
        object.__setattr__(self, "values", tuple(cast(v) for v in values))

    @classmethod
    def parse(cls, text: str) -> "ShareSchedule":
        """Schedule from "1.0", "300,100", "eps=0.01", "fraction=0.5,0.25", ..."""
        prefix, _, body = str(text).replace(" ", "").rpartition("=")
        if prefix and prefix not in _KINDS:
            raise ValueError(f"expected a prefix in {sorted(_KINDS)}, received {text!r}")
        tokens = body.split(",")
        if not all(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", t) for t in tokens):
            raise ValueError(f"expected comma-separated numbers like '1.0', '300,100' or "
                             f"'eps=0.01', received {text!r}")
        ints = [t.isdigit() for t in tokens]
        if not prefix and any(ints) and not all(ints):
            raise ValueError(f"expected all counts (integers) or all fractions (with a "
                             f"decimal point), received {text!r}")
        kind = _KINDS[prefix] if prefix else ("count" if all(ints) else "fraction")
        values = [float(t) for t in tokens]
        if kind == "count" and not all(v.is_integer() for v in values):
            raise ValueError(f"expected integer counts, received {text!r}")
        return cls(kind, tuple(values))

    def for_layer(self, i: int, n_a: int, n_b: int) -> dict:
        """select_pairs keyword for layer i of widths n_a, n_b: {"count": k} or {"threshold": e}.

        Raises ValueError for i outside the schedule or a count > min(n_a, n_b).
        """
        if len(self.values) == 1:
            value = self.values[0]
        elif 0 <= i < len(self.values):
            value = self.values[i]
        else:
            raise ValueError(f"expected a layer index in [0, {len(self.values)}), received {i}")
        count, threshold = resolve_share(n_a, n_b, **{self.kind: value})
        return {"threshold": threshold} if count is None else {"count": count}

    def get_config(self) -> dict:
        """JSON-able {"kind", "values"}; `from_config` inverts it."""
        return {"kind": self.kind, "values": list(self.values)}

    @classmethod
    def from_config(cls, config: dict) -> "ShareSchedule":
        return cls(config["kind"], tuple(config["values"]))

    def __str__(self) -> str:
        return f"{self.kind}=" + ",".join(str(v) for v in self.values)
