"""Page matching: map the pages of several networks onto one shared page pool.

Neural weight virtualization (NWV, Lee & Nirjon, MobiSys 2020) stores networks
in one pool of weight pages; each network reads its pages through an injective
page table. Matching page i of a network (weights w₁, Fisher F₁) onto pool page j
(w₂, F₂) costs the Fisher-weighted squared distance of the paper:

    C_ij = Σ_k (F₁_ik + F₂_jk) (w₁_ik − w₂_jk)²

Pool state (`PoolState`):
  * `weights` [m, P]: the value of each pool page. When pages share a pool page
    it holds their Fisher-weighted mean (ΣF w)/(ΣF) per weight (the plain mean
    where ΣF = 0): the quadratic (Laplace) approximation of every sharing
    network's loss is minimised there, so it is the starting point for the
    joint optimisation (retraining) that follows matching.
  * `fisher` [m, P]: the *summed* Fisher of the pages mapped onto each pool
    page. The sum (not the mean) is what the running Fisher-weighted mean needs
    (w ← (F_pool w_pool + F w)/(F_pool + F)), and in the cost it makes a pool
    page that already carries important weights of k networks k times as
    expensive to move again, since moving it hurts all of them.
  * `occupancy` [m]: how many networks map a page onto each pool page.

The pool starts empty; the first network's pages are copied into it bit for bit
and its page table is the identity. A network with more pages than the pool
grows the pool by the difference (new pool pages are occupancy-0 pages that
cost nothing to take); so that the pool size is that of the largest network,
add networks largest first (`order_for_pooling`).

Both methods fill the least-occupied pool pages first: with pool levels
(distinct occupancies) L₀ < L₁ < ..., a network of n pages takes every pool
page of the lowest levels and part of the first level it does not exhaust.
Within this feasible set (injective tables, level quotas):

  * `greedy` (the original NWV scheme): pages in decreasing Fisher mass
    (Σ_k F_ik) each take their cheapest still-free partner among the pool pages
    of the lowest occupancy level with free pages left. When the pool grows,
    the most Fisher-heavy pages thus get the new (exclusive) pool pages.
  * `optimal`: the minimum-cost assignment (`scipy.optimize.linear_sum_assignment`)
    under the same quotas. It is solved as ONE assignment over the levels that
    the network reaches, with dummy rows that may only take pages of the
    partially filled level: a separate assignment per level would be myopic
    (it picks which pages go to the lowest level looking at that level alone)
    and can end up costlier than greedy, whereas this is the exact optimum
    over greedy's feasible set, so optimal cost ≤ greedy cost always. When the
    network lies within one level it is exactly the per-level assignment. When
    the pool grows, it chooses which pages get new pool pages by cost.

Pages that take new (occupancy-0) pool pages are numbered in page order, which
makes the first network's table the identity. Everything is pure numpy/scipy
and deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.choices import Choice


class MatchingMethod(Choice):
    """Page matching algorithm; a string ("greedy", "optimal") is accepted."""
    GREEDY = "greedy"
    OPTIMAL = "optimal"

    @classmethod
    def _label(cls) -> str:
        return "matching method"


def _check_pages(w, f, name: str, page_size: int | None = None):
    """float64 copies of a (weights, Fisher) pair of [n, P] arrays, validated."""
    w, f = np.asarray(w, np.float64), np.asarray(f, np.float64)
    if w.ndim != 2 or w.shape[1] < 1:
        raise ValueError(f"expected {name} weights of shape [n, P] with P >= 1, "
                         f"received {w.shape}")
    if f.shape != w.shape:
        raise ValueError(f"expected {name} Fisher of shape {w.shape} (as its weights), "
                         f"received {f.shape}")
    if page_size is not None and w.shape[1] != page_size:
        raise ValueError(f"expected {name} pages of size {page_size}, received "
                         f"{w.shape[1]}")
    for array, what in ((w, "weights"), (f, "Fisher")):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"expected finite {name} {what}, received "
                             f"{int(np.sum(~np.isfinite(array)))} NaN/inf value(s)")
    if np.any(f < 0):
        raise ValueError(f"expected non-negative {name} Fisher, received minimum "
                         f"{f.min()}")
    _check_magnitudes(w, f, name)
    return w, f


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_magnitudes(w, f, name):
    """Refuses pages whose Fisher-weighted squares Σ_k F_k w_k² overflow float32.

    Such values (weights scaled by 1e19, say) are finite but no trained network's:
    their matching costs overflow, and merged into shared pages they would wreck
    every other network. Nothing is matched then.
    """
    if w.size == 0:
        return
    energy = np.einsum("ij,ij,ij->i", f, w, w)
    worst = int(np.argmax(energy))
    largest = float(np.max(np.abs(w)))
    if energy[worst] > _FLOAT32_MAX / 4 or largest > np.sqrt(_FLOAT32_MAX) / 1e3:
        raise ValueError(
            f"{name} page {worst}: weights × Fisher overflow float32 in the matching cost "
            f"(max |w| = {largest:.3g}, max F = {float(np.max(f)):.3g}, Σ F w² = "
            f"{float(energy[worst]):.3g}); these are not a trained network's weights, so "
            f"the network is refused before it can change shared pages")


@dataclasses.dataclass(frozen=True, eq=False)
class PoolState:
    """Shared page pool (read-only arrays; compared by identity).

    Attributes:
      weights: [m, P] float32 page values (Fisher-weighted means of shared pages).
      fisher: [m, P] float32 summed Fisher of the pages mapped onto each page.
      occupancy: [m] int64 number of networks using each page.
    """
    weights: np.ndarray
    fisher: np.ndarray
    occupancy: np.ndarray

    def __post_init__(self):
        w, f = _check_pages(self.weights, self.fisher, "pool")
        occ = np.asarray(self.occupancy)
        if occ.shape != (w.shape[0],):
            raise ValueError(f"expected occupancy of shape ({w.shape[0]},), received "
                             f"{occ.shape}")
        if occ.size and (not np.issubdtype(occ.dtype, np.integer) or occ.min() < 0):
            raise ValueError(f"expected non-negative integer occupancy, received dtype "
                             f"{occ.dtype}, minimum {occ.min()}")
        for key, value, dtype in (("weights", self.weights, np.float32),
                                  ("fisher", self.fisher, np.float32),
                                  ("occupancy", occ, np.int64)):
            value = np.array(value, dtype=dtype)  # a private copy
            value.setflags(write=False)
            object.__setattr__(self, key, value)

    @property
    def n_pages(self) -> int:
        return int(self.weights.shape[0])

    @property
    def page_size(self) -> int:
        return int(self.weights.shape[1])

    @classmethod
    def empty(cls, page_size: int) -> "PoolState":
        """A pool of 0 pages of `page_size` weights."""
        if page_size < 1:
            raise ValueError(f"expected page_size >= 1, received {page_size}")
        zeros = np.zeros((0, page_size), np.float32)
        return cls(zeros, zeros, np.zeros(0, np.int64))

    @classmethod
    def from_network(cls, w_pages, f_pages) -> "PoolState":
        """The pool holding one network's pages bit for bit (occupancy 1)."""
        w, _ = _check_pages(w_pages, f_pages, "network")
        return cls(np.asarray(w_pages, np.float32), np.asarray(f_pages, np.float32),
                   np.ones(w.shape[0], np.int64))


def page_costs(w_net, f_net, w_pool, f_pool, *, out=None) -> np.ndarray:
    """Matching cost of every network page against every pool page.

    C_ij = Σ_k (F_net,ik + F_pool,jk)(w_net,ik − w_pool,jk)², computed for all
    pairs at once by expanding the square into six matrix-product / row-sum
    terms (float64), in blocks of rows (small temporaries: the full matrix is
    written once). Round-off is floored: entries at most 4(P+2)·ε times the
    sum of the non-negative terms are set to 0, so identical pages cost exactly 0
    and no entry is negative.

    Args:
      w_net, f_net: [n, P] network page weights and Fisher (F ≥ 0).
      w_pool, f_pool: [m, P] pool page weights and Fisher.
      out: optional [n, m] float64 array (or view) to write the costs into.

    Returns:
      [n, m] float64 costs (`out` when given).

    Raises:
      ValueError: mismatched shapes, NaN/inf, negative Fisher, a wrong `out`.
    """
    a, fa = _check_pages(w_net, f_net, "network")
    b, fb = _check_pages(w_pool, f_pool, "pool", page_size=a.shape[1])
    n, m = a.shape[0], b.shape[0]
    if out is None:
        out = np.empty((n, m))
    elif out.shape != (n, m) or out.dtype != np.float64:
        raise ValueError(f"expected out of shape {(n, m)} float64, received {out.shape} "
                         f"{out.dtype}")
    a2, b2 = a * a, b * b
    # Σ F₁ w₂² + Σ F₂ w₁² as one product, then + Σ F₁ w₁² + Σ F₂ w₂²: the positive terms.
    left_pos, right_pos = np.hstack([fa, a2]), np.hstack([b2, fb]).T.copy()
    row_pos, col_pos = np.sum(fa * a2, axis=1), np.sum(fb * b2, axis=1)
    # Σ F₁ w₁ w₂ + Σ F₂ w₁ w₂ as one product; costs = positive − 2 cross.
    left_x, right_x = np.hstack([fa * a, a]), np.hstack([b, fb * b]).T.copy()
    floor = 4.0 * (a.shape[1] + 2) * np.finfo(np.float64).eps
    block = max(1, (1 << 22) // max(m, 1))          # ~32 MB of scratch per block
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        scale = left_pos[rows] @ right_pos
        scale += row_pos[rows, None]
        scale += col_pos[None, :]
        costs = out[rows]
        if costs.flags.c_contiguous:
            np.matmul(left_x[rows], right_x, out=costs)
        else:                                       # a column slice of the caller's matrix
            costs[...] = left_x[rows] @ right_x
        costs *= -2.0
        costs += scale
        costs[costs <= floor * scale] = 0.0
        np.maximum(costs, 0.0, out=costs)
    return out


def _pair_costs(w, f, w_pool, f_pool, table) -> np.ndarray:
    """Exact C_i,table[i] per page, by the direct formula ([n] float64)."""
    diff = w - w_pool[table]
    return np.sum((f + f_pool[table]) * diff * diff, axis=1)


def _level_quotas(occupancy: np.ndarray, n: int):
    """Pool pages a network of n pages must fill (lowest occupancy first).

    Returns (full, partial, quota): pages of the levels taken entirely, pages of
    the level taken in part (quota of them), lowest level first.
    """
    full, need = [], n
    for level in np.unique(occupancy):
        cols = np.flatnonzero(occupancy == level)
        if need >= cols.size:
            full.append(cols)
            need -= cols.size
        else:
            return (np.concatenate(full) if full else np.zeros(0, np.int64)), cols, need
        if need == 0:
            break
    return (np.concatenate(full) if full else np.zeros(0, np.int64)), \
        np.zeros(0, np.int64), 0


def _match_greedy(costs, mass, occupancy) -> np.ndarray:
    n, m = costs.shape
    order = np.lexsort((np.arange(n), -mass))       # Fisher mass desc, then index
    levels = [np.flatnonzero(occupancy == lv) for lv in np.unique(occupancy)]
    free = np.ones(m, bool)
    table = np.empty(n, np.int64)
    level = 0
    for i in order:
        while not free[levels[level]].any():
            level += 1
        cand = levels[level][free[levels[level]]]
        row = costs[i, cand]
        j = cand[np.argmin(row)]                    # ties: lowest pool index
        if i < m and free[i] and occupancy[i] == occupancy[j] and costs[i, i] <= row.min():
            j = i                                   # ties: keep a page in its own slot
        table[i] = j
        free[j] = False
    return table


def _match_optimal_dense(costs, occupancy) -> np.ndarray:
    """The optimal assignment under the level quotas, by one dense assignment."""
    n = costs.shape[0]
    full, partial, quota = _level_quotas(occupancy, n)
    cols = np.concatenate([full, partial])
    matrix = costs[:, cols]
    if partial.size > quota:                        # dummies absorb unused partial pages
        dummy = np.full((partial.size - quota, cols.size), np.inf)
        dummy[:, full.size:] = 0.0
        matrix = np.vstack([matrix, dummy])
    rows, picked = linear_sum_assignment(matrix)
    table = np.empty(n, np.int64)
    keep = rows < n
    table[rows[keep]] = cols[picked[keep]]
    return table


# Below this many matrix entries the dense assignment is fast enough as it is.
_DENSE_ENTRIES = 1 << 21


def _match_optimal(costs, occupancy, *, candidates: int = 16,
                   force_sparse: bool = False) -> np.ndarray:
    """The optimal assignment under the level quotas, by sparse min-cost flows with pricing.

    Same optimum as `_match_optimal_dense`, found on a few candidate pairs per page:

    1. Costs are scaled to [0, 1].
    2. Solve the assignment restricted to each page's `candidates` cheapest pool
       pages, each pool page's `candidates` cheapest pages (by reduced costs) and
       a feasible assignment, as a min-cost flow (`_restricted_flow`: network
       pages -> pool pages -> sink for the partly taken level), which also
       returns its node potentials π.
    3. Certificate: if every pair (i, j) of the FULL matrix has a non-negative
       reduced cost c_ij + π_i − π_j (to 1e-14), no improving cycle exists in the
       full residual graph either (its other edges depend only on the matching):
       by LP duality the matching is optimal for the full problem.
    4. Otherwise the violating pairs, and the cheapest pairs of the pages and pool
       pages they touch, join the candidates and step 2 repeats; it ends because
       candidates only grow (at worst to the full matrix).
    """
    n = costs.shape[0]
    full, partial, quota = _level_quotas(occupancy, n)
    cols = np.concatenate([full, partial])
    if n * cols.size <= _DENSE_ENTRIES and not force_sparse:
        return _match_optimal_dense(costs, occupancy)
    # `costs` belongs to the caller's scratch (match_network): rescaled in place.
    weights = costs if np.array_equal(cols, np.arange(costs.shape[1])) else costs[:, cols]
    scale = float(weights.max(initial=0.0))
    if scale > 0:
        weights /= scale
    k = min(candidates, cols.size)
    kc = min(candidates, n)
    mask = np.zeros(weights.shape, bool)
    # Candidates by reduced costs (dual estimates), both ways: each network page's k
    # cheapest pool pages after subtracting column then row minima, so pool pages cheap
    # for every network page do not crowd out each page's own; and each pool page's k
    # cheapest network pages after subtracting row then column minima, so such hub pages
    # are priced by their best takers. Row candidates alone left 2.5 M violating pairs
    # on the reference gsc network at P = 10 (seven rounds); both ways, ~150 (three).
    reduced = weights - weights.min(axis=0)[None, :]
    reduced -= reduced.min(axis=1, keepdims=True)
    np.put_along_axis(mask, np.argpartition(reduced, k - 1, axis=1)[:, :k], True, axis=1)
    np.subtract(weights, weights.min(axis=1, keepdims=True), out=reduced)
    reduced -= reduced.min(axis=0)[None, :]
    np.put_along_axis(mask, np.argpartition(reduced, kc - 1, axis=0)[:kc], True, axis=0)
    mask[np.arange(n), np.arange(n)] = True   # a feasible assignment: a full matching exists
    while True:
        col_of_row, potentials = _restricted_flow(weights, mask, full.size)
        np.add(weights, potentials[:n, None], out=reduced)
        reduced -= potentials[None, n:n + cols.size]
        # Candidate pairs are certified by the restricted flow itself (its potentials
        # hold to its last integer step); the others must price at >= -1e-14 (scaled
        # costs: the float resolution of potentials around 1, so round-off never loops).
        bad = (reduced < -1e-14) & ~mask
        if not bad.any():
            return cols[col_of_row]
        # Every violating pair, and the k cheapest pairs under the new potentials of the
        # pages and pool pages that violate (the optimum's support is close to them).
        mask |= bad
        rows, columns = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        mask[rows[:, None], np.argpartition(reduced[rows], k - 1, axis=1)[:, :k]] = True
        mask[np.argpartition(reduced[:, columns], kc - 1, axis=0)[:kc], columns[None, :]] = True


# Integer cost range of one min-cost-flow stage: its potentials stay exact in int64
# (|π| <= nodes · 2^40 < 2^63 for up to 2^22 nodes).
_FLOW_BITS = 40


def _restricted_flow(weights, mask, n_full: int, *, stages: int = 2):
    """Minimum-cost assignment restricted to `mask`, and its node potentials.

    The problem as a min-cost flow: each network page i (supply 1) sends one unit
    to a pool page j along a candidate arc (cost w_ij); the first `n_full` pool
    pages (a fully taken level) each absorb one unit, the others pass theirs to a
    sink (arc cost 0, capacity 1) that absorbs the rest. OR-Tools' cost-scaling
    solver (`ortools.graph.python.min_cost_flow`) needs integer costs, so the
    float problem is solved in stages: stage s rounds the costs reduced by the
    potentials so far to 2^40 steps of a quantum q_s, solves them exactly, and
    takes the integer problem's exact potentials (`bellman_ford` in int64) into π.
    After a stage an unused arc's reduced cost is >= −q_s/2 and a used one's
    <= q_s/2, so an arc above (arcs + 2)·q_s is in no optimum and one below minus
    that is in every optimum: reduced costs are clipped to that range, and the
    next quantum is ~2^-23 of the last: the second stage reaches float64
    resolution.

    Args:
      weights: [n, m] float64 costs in [0, 1].
      mask: [n, m] bool candidate pairs, holding a full matching.
      n_full: pool pages (the first ones) that must all be taken.

    Returns:
      (col_of_row [n] int64, potentials [n + m + 1] float64: network pages, pool
      pages, sink), with reduced costs w_ij + π_i − π_(n+j) >= −q/2 on every
      candidate pair and within q/2 of 0 on the matched ones, q the last stage's
      quantum (float round-off aside).

    Raises:
      ValueError: the candidates hold no full matching, or the solver failed.
    """
    from ortools.graph.python import min_cost_flow

    n, m = weights.shape
    sink = n + m
    rows, cols = np.nonzero(mask)
    cost, k = weights[rows, cols], rows.size
    swap = np.arange(n_full, m)                     # pool pages that pass to the sink
    tails = np.concatenate([rows, n + swap])        # arcs [:k] page -> pool page,
    heads = np.concatenate([n + cols, np.full(swap.size, sink)])   # [k:] pool -> sink
    arc_cost = np.concatenate([cost, np.zeros(swap.size)])
    supplies = np.concatenate([np.ones(n, np.int64), np.zeros(m, np.int64), [0]])
    supplies[n:n + n_full] = -1
    supplies[sink] = -(n - n_full)
    potentials = np.zeros(n + m + 1)
    cap, used = np.inf, None
    for _ in range(stages):
        reduced = np.clip(arc_cost + potentials[tails] - potentials[heads], -cap, cap)
        # Shift each family to start at 0 (every flow sends n units through the
        # first and n − n_full through the second: the same constant for all flows).
        shift = (reduced[:k].min(initial=0.0), reduced[k:].min(initial=0.0))
        reduced[:k] -= shift[0]
        reduced[k:] -= shift[1]
        top = float(reduced.max(initial=0.0))
        if used is not None and \
                top <= 4 * np.finfo(np.float64).eps * (1.0 + np.abs(potentials).max()):
            break                                   # every arc tight: nothing left to resolve
        quantum = top / 2.0 ** _FLOW_BITS if top > 0 else 1.0
        integer_cost = np.rint(reduced / quantum).astype(np.int64)
        flow = min_cost_flow.SimpleMinCostFlow()
        arcs = flow.add_arcs_with_capacity_and_unit_cost(
            tails, heads, np.ones(tails.size, np.int64), integer_cost)
        flow.set_nodes_supplies(np.arange(n + m + 1), supplies)
        status = flow.solve()
        if status == flow.INFEASIBLE:
            raise ValueError("the candidate pairs hold no full matching of the network's "
                             "pages")
        if status != flow.OPTIMAL:
            raise ValueError(f"OR-Tools min-cost flow failed on the page matching: {status}")
        used = flow.flows(arcs) > 0
        # Residual graph: unused arcs forward, used arcs backward at minus their cost.
        dist = bellman_ford(n + m + 1, np.where(used, heads, tails), np.where(used, tails, heads),
                            np.where(used, -integer_cost, integer_cost))
        potentials += quantum * dist
        potentials[:n] -= shift[0]                  # the shifts as potentials: rows only
        potentials[sink] += shift[1]                # send, the sink only receives
        cap = (tails.size + 2) * quantum
    col_of_row = np.empty(n, np.int64)
    col_of_row[rows[used[:k]]] = cols[used[:k]]
    return col_of_row, potentials


def bellman_ford(nodes: int, src, dst, weights) -> np.ndarray:
    """Shortest distances from a virtual source joined to every node at cost 0.

    Vectorised passes (each relaxes every edge) that stop as soon as a pass
    changes nothing: with potentials close to final (as here) a few dozen passes,
    not the |V| of a textbook run. Exact in integers.

    Args:
      nodes: node count; src, dst, weights: [E] edges src -> dst (float or int).
    Returns:
      [nodes] distances (<= 0), of the weights' dtype.
    Raises:
      ValueError: a negative cycle (no distances exist).
    """
    weights = np.asarray(weights)
    if weights.dtype.kind not in "iu":
        weights = weights.astype(np.float64)
    order = np.argsort(dst, kind="stable")
    src, dst, weights = src[order], dst[order], weights[order]
    heads, starts = np.unique(dst, return_index=True)
    dist = np.zeros(nodes, weights.dtype)
    for _ in range(nodes + 1):
        best = np.minimum.reduceat(dist[src] + weights, starts)
        improved = best < dist[heads]
        if not improved.any():
            return dist
        dist[heads[improved]] = best[improved]
    raise ValueError("negative cycle: the restricted assignment is not optimal")


SOLVERS = ("auto", "dense", "sparse")


def match_network(pool: PoolState, w_net_pages, f_net_pages,
                  method: MatchingMethod | str = MatchingMethod.OPTIMAL, *,
                  solver: str = "auto"):
    """Maps a network's pages onto the pool (growing it if needed) and merges them.

    Cost of the network: Σ_i C_i,t(i) with C_ij = Σ_k (F_ik + F_pool,jk)(w_ik −
    w_pool,jk)² against the pool before the merge (0 for pages taking empty
    pool pages). Merge of page i into pool page j = t(i):
      w_pool,j ← (F_pool,j w_pool,j + F_i w_i) / (F_pool,j + F_i)   (per weight;
                 (o_j w_pool,j + w_i)/(o_j + 1) where F_pool,j + F_i = 0),
      F_pool,j ← F_pool,j + F_i,  o_j ← o_j + 1;  empty pages take w_i, F_i as is.

    Args:
      pool: current PoolState ([m, P]).
      w_net_pages, f_net_pages: [n, P] the network's pages and their Fisher.
      method: MatchingMethod or "optimal" (default) / "greedy".
      solver: how "optimal" is solved, with the same optimum: "dense" (one
        assignment on the full matrix), "sparse" (min-cost flows on candidate
        pairs priced by an LP-duality certificate, `_match_optimal`), "auto"
        (sparse above 2M pairs).

    Returns:
      (page_table [n] int64 injective into the new pool, new PoolState
       [max(m, n), P], total_cost float).

    Raises:
      ValueError: page-size mismatch, bad shapes, NaN/inf, negative Fisher,
        unknown method.
    """
    method = MatchingMethod.parse(method)
    if not isinstance(pool, PoolState):
        raise ValueError(f"expected a PoolState, received {type(pool).__name__}")
    w, f = _check_pages(w_net_pages, f_net_pages, "network", page_size=pool.page_size)
    n, m = w.shape[0], pool.n_pages
    if n == 0:
        raise ValueError("expected a network of at least one page, received 0 pages")
    grow = max(0, n - m)
    occupancy = np.concatenate([pool.occupancy, np.zeros(grow, np.int64)])
    w_pool = np.concatenate([pool.weights, np.zeros((grow, w.shape[1]), np.float32)])
    f_pool = np.concatenate([pool.fisher, np.zeros((grow, w.shape[1]), np.float32)])
    costs = np.zeros((n, m + grow))
    used = np.flatnonzero(pool.occupancy > 0)
    if used.size == m:                              # every pool page taken: in place
        page_costs(w, f, pool.weights, pool.fisher, out=costs[:, :m])
    elif used.size:
        costs[:, used] = page_costs(w, f, pool.weights[used], pool.fisher[used])

    if used.size == 0:                              # an empty pool: every page is new
        table = np.arange(m, m + n) if grow == n else np.flatnonzero(occupancy == 0)[:n]
    elif method is MatchingMethod.GREEDY:
        table = _match_greedy(costs, f.sum(axis=1), occupancy)
    elif solver == "dense":
        table = _match_optimal_dense(costs, occupancy)
    elif solver in ("auto", "sparse"):
        table = _match_optimal(costs, occupancy, force_sparse=solver == "sparse")
    else:
        raise ValueError(f"expected a solver in {list(SOLVERS)}, received {solver!r}")
    new_pages = np.flatnonzero(table >= m)          # number new pool pages in page order
    table[new_pages] = m + np.arange(new_pages.size)

    shared = occupancy[table] > 0
    pair = _pair_costs(w, f, w_pool.astype(np.float64), f_pool.astype(np.float64), table)
    total_cost = float(np.sum(pair[shared]))

    new_w, new_f, new_occ = w_pool.copy(), f_pool.copy(), occupancy.copy()
    fresh = table[~shared]
    new_w[fresh] = np.asarray(w_net_pages, np.float32)[~shared]   # bit for bit
    new_f[fresh] = np.asarray(f_net_pages, np.float32)[~shared]
    j = table[shared]
    if j.size:
        fp, wp = f_pool[j].astype(np.float64), w_pool[j].astype(np.float64)
        fi, wi = f[shared], w[shared]
        total_f = fp + fi
        occ = occupancy[j][:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            merged = np.where(total_f > 0, (fp * wp + fi * wi) / total_f,
                              (occ * wp + wi) / (occ + 1.0))
        new_w[j], new_f[j] = merged, total_f
    new_occ[table] += 1
    return table, PoolState(new_w, new_f, new_occ), total_cost


def order_for_pooling(sizes: Sequence[int]) -> list:
    """Indices of networks largest first (ties: given order).

    Adding networks in this order makes the first (largest) network set the
    pool size, max_i n_i pages, so no later network grows the pool and every
    later page is shared.

    Args:
      sizes: per-network size (page or weight counts).

    Returns:
      list of indices into `sizes`.
    """
    sizes = np.asarray(sizes)
    if sizes.ndim != 1:
        raise ValueError(f"expected a 1-D list of sizes, received shape {sizes.shape}")
    return [int(i) for i in np.lexsort((np.arange(sizes.size), -sizes))]


def virtualize_pages(networks: Sequence, method: MatchingMethod | str = MatchingMethod.OPTIMAL,
                     pool: PoolState | None = None, *, solver: str = "auto"):
    """Adds networks to one pool in the given order (`match_network` each).

    Args:
      networks: list of (w_pages [n_i, P], f_pages [n_i, P]).
      method: MatchingMethod or "optimal" (default) / "greedy".
      pool: starting pool; default empty (the first network is copied).
      solver: of "optimal", see `match_network`.

    Returns:
      (PoolState [max_i n_i, P] when started empty, page tables list of [n_i]
       int64, costs list of float per network).

    Raises:
      ValueError: no networks, page sizes that disagree, bad pages.
    """
    if len(networks) == 0:
        raise ValueError("expected at least one (w_pages, f_pages) network, received 0")
    if pool is None:
        first = np.asarray(networks[0][0])
        if first.ndim != 2:
            raise ValueError(f"expected network weights of shape [n, P], received "
                             f"{first.shape}")
        pool = PoolState.empty(first.shape[1])
    tables, costs = [], []
    for w_pages, f_pages in networks:
        table, pool, cost = match_network(pool, w_pages, f_pages, method, solver=solver)
        tables.append(table)
        costs.append(cost)
    return pool, tables, costs
