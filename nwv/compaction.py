"""Pool maintenance: drop unused pages, merge pages onto others (arrays in, arrays out).

A pool is [m, P] pages; each network reads it through a page table [n] of pool
indices. Two operations keep it small:

  * `compact`: pages no table uses are dropped and every table renumbered
    (after a network is removed, or pages merged away).
  * `merge_pages`: pages s_k are stored in pages t_k from now on: every table
    entry s_k becomes t_k and t_k takes the Fisher-weighted mean of the values
    (the matching merge of `nwv.matching`):

        w_t ← (F_t w_t + Σ_k F_s_k w_s_k) / (F_t + Σ_k F_s_k)   (plain mean where ΣF = 0)
        F_t ← F_t + Σ_k F_s_k

    then the freed pages are compacted away. A table may then name one pool page
    twice (a network's pages sharing a page with each other), which the runtime
    supports: it is how a pool goes below the size of its largest network.
  * `cheapest_merges`: which pages to merge to shed d pages: the d disjoint
    pairs of least cost Σ_k (F_i + F_j)(w_i − w_j)² (the matching cost of
    `nwv.matching`), cheapest first; each pair keeps the page of larger Fisher mass.

    >>> pool = np.array([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]], np.float32)
    >>> new_pool, fisher, tables, dropped = merge_pages(
    ...     pool, np.ones_like(pool), {"a": np.array([0, 1]), "b": np.array([2])},
    ...     sources=[1], targets=[0])
    >>> new_pool.tolist(), tables["a"].tolist(), tables["b"].tolist(), dropped
    ([[2.0, 2.0], [9.0, 9.0]], [0, 0], [1], 1)
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["compact", "merge_pages", "cheapest_merges"]


def compact(pool: np.ndarray, tables: Mapping[str, np.ndarray], *, others=None):
    """Drops the pool pages no table uses and renumbers the tables.

    Args:
      pool: [m, P] pages.
      tables: {name: [n] int page indices into the pool}.
      others: optional {name: [k] page indices} that are renumbered too without
        keeping their pages (-1 where a page was dropped), e.g. undo records.
    Returns:
      (pool [m', P] of the used pages in their order, {name: renumbered int32
      table} (with `others` added when given), number of pages dropped).
    Raises:
      ValueError: a table index outside the pool.
    """
    pool = np.asarray(pool)
    used = np.zeros(pool.shape[0], bool)
    for name, table in tables.items():
        table = np.asarray(table, np.int64)
        if table.size and (table.min() < 0 or table.max() >= pool.shape[0]):
            raise ValueError(f"table {name!r}: page index outside the pool of "
                             f"{pool.shape[0]} pages")
        used[table] = True
    renumber = np.where(used, np.cumsum(used) - 1, -1)
    renumbered = {n: renumber[np.asarray(t, np.int64)].astype(np.int32)
                  for n, t in {**tables, **dict(others or {})}.items()}
    return pool[used], renumbered, int(np.sum(~used))


def merge_pages(pool: np.ndarray, fisher: np.ndarray, tables: Mapping[str, np.ndarray], *,
                sources, targets):
    """Stores pages `sources` in pages `targets` (Fisher-weighted merge), then compacts.

    Args:
      pool: [m, P] page values.
      fisher: [m, P] summed Fisher of each pool page (>= 0).
      tables: {name: [n] int page indices}.
      sources, targets: [k] page indices; source k is merged into target k.
        Sources are distinct and never targets; several sources may share a target.
    Returns:
      (pool [m', P] float32, fisher [m', P] float32, {name: int32 table}, pages dropped).
    Raises:
      ValueError: shapes that disagree, repeated sources, a source that is also a
        target, indices outside the pool.
    """
    pool, fisher = np.asarray(pool, np.float64), np.asarray(fisher, np.float64)
    sources, targets = np.asarray(sources, np.int64), np.asarray(targets, np.int64)
    if fisher.shape != pool.shape or pool.ndim != 2:
        raise ValueError(f"expected pool and fisher of one shape [m, P], received "
                         f"{pool.shape} and {fisher.shape}")
    if sources.shape != targets.shape or sources.ndim != 1:
        raise ValueError(f"expected sources and targets of one shape [k], received "
                         f"{sources.shape} and {targets.shape}")
    m = pool.shape[0]
    if sources.size and (min(sources.min(), targets.min()) < 0
                         or max(sources.max(), targets.max()) >= m):
        raise ValueError(f"expected page indices in [0, {m}), received sources in "
                         f"[{sources.min()}, {sources.max()}], targets in "
                         f"[{targets.min()}, {targets.max()}]")
    if np.unique(sources).size != sources.size or np.intersect1d(sources, targets).size:
        raise ValueError("expected distinct sources that are not also targets")
    weighted, total = fisher * pool, fisher.copy()
    count = np.ones(m)
    plain = pool.copy()
    np.add.at(weighted, targets, fisher[sources] * pool[sources])
    np.add.at(total, targets, fisher[sources])
    np.add.at(plain, targets, pool[sources])
    np.add.at(count, targets, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(total > 0, weighted / np.where(total > 0, total, 1.0),
                          plain / count[:, None])
    remap = np.arange(m)
    remap[sources] = targets
    moved = {n: remap[np.asarray(t, np.int64)] for n, t in tables.items()}
    values = np.concatenate([merged, total], axis=1)
    kept, renumbered, dropped = compact(values, moved)
    page_size = pool.shape[1]
    return (kept[:, :page_size].astype(np.float32), kept[:, page_size:].astype(np.float32),
            renumbered, dropped)


def cheapest_merges(pool: np.ndarray, fisher: np.ndarray, count: int):
    """The `count` disjoint page pairs cheapest to merge, greedily by ascending cost.

    Args:
      pool: [m, P] page values; fisher: [m, P] summed Fisher of each page.
      count: pairs wanted (<= m // 2).
    Returns:
      (sources [count], targets [count]) int64 for `merge_pages`: in each pair the
      target is the page of larger Fisher mass (ties: the lower index).
    Raises:
      ValueError: count outside [0, m // 2].
    """
    from nwv.matching import page_costs

    pool, fisher = np.asarray(pool, np.float64), np.asarray(fisher, np.float64)
    m = pool.shape[0]
    if not 0 <= count <= m // 2:
        raise ValueError(f"expected between 0 and {m // 2} merges for {m} pages, "
                         f"received {count}")
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    costs = page_costs(pool, fisher, pool, fisher)
    upper = np.triu_indices(m, 1)
    values = costs[upper]
    order = np.lexsort((np.arange(values.size), values))
    used = np.zeros(m, bool)
    mass = fisher.sum(axis=1)
    sources, targets = [], []
    for pair in order:
        i, j = int(upper[0][pair]), int(upper[1][pair])
        if used[i] or used[j]:
            continue
        used[i] = used[j] = True
        keep, drop = (i, j) if (mass[i], -i) >= (mass[j], -j) else (j, i)
        targets.append(keep)
        sources.append(drop)
        if len(sources) == count:
            break
    return np.asarray(sources, np.int64), np.asarray(targets, np.int64)
