"""Two-level pages: which pool pages stay in memory under a RAM budget.

With a budget B smaller than the pool, only some pages stay resident; the
others live in the pool file and a network's non-resident pages are read into
a preallocated swap buffer when it is switched to (TwoLevel weight
virtualization; MTZ's partial reload of task-specific weights). Memory is

    (r resident pages + k buffer slots) · page bytes <= B,
    k = max over networks of the pages it needs beyond the resident ones,

so the smallest budget is the largest network (r = 0) and B = the whole pool
is the all-in-memory runtime (k = 0). Pages are ranked: shared by more
networks first (one resident page serves them all), then by Fisher density
(the summed Fisher information per weight: what matters most stays), then
by index; the largest r that fits is taken.

    >>> plan = plan_resident({"a": np.array([0, 1]), "b": np.array([1, 2])},
    ...                      np.array([0.0, 1.0, 5.0]), page_bytes=400, budget=800)
    >>> plan.resident.tolist(), plan.buffer_slots, plan.tables["a"].tolist()
    ([1], 1, [1, 0])
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

__all__ = ["ResidentPlan", "plan_resident", "PageReader"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidentPlan:
    """Where every page lives under a budget.

    Attributes:
      resident: [r] pool pages kept in memory, in slot order (slot i holds resident[i]).
      buffer_slots: k, slots r .. r+k-1 of the in-memory pool are the swap buffer.
      tables: {network: [n] slots}: its pages' slots (a resident slot, or a buffer slot).
      swapped: {network: [j] pool pages read into buffer slots r .. r+j-1 on switch}.
      page_bytes: bytes of one page in memory; bytes: (r + k) · page_bytes.
    """

    resident: np.ndarray
    buffer_slots: int
    tables: dict
    swapped: dict
    page_bytes: int
    bytes: int


def _priority(tables, density, m):
    occupancy = np.zeros(m, np.int64)
    for table in tables.values():
        occupancy[np.unique(np.asarray(table))] += 1
    return np.lexsort((np.arange(m), -np.asarray(density, np.float64), -occupancy))


def plan_resident(tables: Mapping[str, np.ndarray], density, *, page_bytes: int,
                  budget: int) -> ResidentPlan:
    """The most resident pages that fit `budget` with a swap buffer for every network.

    Args:
      tables: {network: [n] pool page indices}.
      density: [m] priority of each pool page among equally shared ones (e.g.
        summed Fisher per page); m is the pool's page count.
      page_bytes: bytes of one page in memory.
      budget: bytes for resident pages and the swap buffer together.
    Returns:
      A `ResidentPlan`.
    Raises:
      ValueError: a budget below the largest network's pages, bad sizes.
    """
    density = np.asarray(density, np.float64)
    m = density.shape[0]
    if page_bytes < 1 or not tables:
        raise ValueError("expected page_bytes >= 1 and at least one network")
    order = _priority(tables, density, m)
    rank = np.empty(m, np.int64)
    rank[order] = np.arange(m)
    needed = {n: np.sort(rank[np.unique(np.asarray(t))]) for n, t in tables.items()}
    largest = max(v.size for v in needed.values())
    if budget < largest * page_bytes:
        raise ValueError(f"expected resident_bytes >= {largest * page_bytes} (the largest "
                         f"network's {largest} pages of {page_bytes} bytes), received {budget}")
    best = 0
    for r in range(m, -1, -1):                 # the most resident pages that fit
        k = max(v.size - int(np.searchsorted(v, r)) for v in needed.values())
        if (r + k) * page_bytes <= budget:
            best = r
            break
    resident = order[:best]
    slot = {int(p): i for i, p in enumerate(resident)}
    k = max(v.size - int(np.searchsorted(v, best)) for v in needed.values())
    out_tables, swapped = {}, {}
    for name, table in tables.items():
        table = np.asarray(table, np.int64)
        extra = [int(p) for p in np.unique(table) if int(p) not in slot]
        where = {p: best + j for j, p in enumerate(extra)}
        out_tables[name] = np.asarray([slot.get(int(p), where.get(int(p), -1))
                                       for p in table], np.int32)
        swapped[name] = np.asarray(extra, np.int64)
    return ResidentPlan(resident=resident.astype(np.int64), buffer_slots=int(k),
                        tables=out_tables, swapped=swapped, page_bytes=int(page_bytes),
                        bytes=int((best + k) * page_bytes))


class PageReader:
    """Reads pool pages from a pool directory's `pool.npy` without loading the rest.

    One unbuffered read per run of consecutive pages, straight from the file (no
    memory map, so nothing stays resident between switches beyond the OS page
    cache, which benchmarks evict).

    Args:
      path: the `.npy` file of the float32 pool [m, P] (checked when the pool was loaded).
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if len(shape) != 2 or fortran or np.dtype(dtype) != np.float32:
            raise ValueError(f"{path}: expected a C-order float32 pool [m, P], received "
                             f"{dtype} {shape}")
        self.shape = tuple(shape)
        self._file = open(path, "rb", buffering=0)

    def read(self, pages) -> np.ndarray:
        """Pages [k, P] float32 read from the file, in the order given.

        Args:
          pages: [k] pool page indices.
        Returns:
          [k, P] float32 (a copy in memory).
        """
        pages = np.asarray(pages, np.int64)
        page_bytes = 4 * self.shape[1]
        out = np.empty((pages.size, self.shape[1]), np.float32)
        order = np.argsort(pages, kind="stable")
        sorted_pages = pages[order]
        start = 0
        while start < sorted_pages.size:            # one read per run of consecutive pages
            end = start + 1
            while end < sorted_pages.size and sorted_pages[end] == sorted_pages[end - 1] + 1:
                end += 1
            self._file.seek(self._offset + int(sorted_pages[start]) * page_bytes)
            blob = self._file.read(page_bytes * (end - start))
            out[order[start:end]] = np.frombuffer(blob, np.float32).reshape(end - start, -1)
            start = end
        return out

    def close(self) -> None:
        """Closes the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
