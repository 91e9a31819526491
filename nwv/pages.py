"""Weight pages: cut a network's variables into fixed-size pages and back.

Neural weight virtualization (NWV, Lee & Nirjon, MobiSys 2020) stores every
network as a list of *pages* of `page_size` weights. The page layout of a
network is its variables in layer order (`weight_0, bias_0, weight_1, ...`),
each flattened in C order and concatenated into one float32 vector `flat` of
`n_weights` values, then cut into `n_pages = ceil(n_weights / page_size)` rows;
the last row is padded with zeros:

    pages[p, k] = flat[p * page_size + k]   if p * page_size + k < n_weights
                  0                         otherwise

The same layout pages a network's diagonal Fisher information, so its padding
has Fisher 0 and costs nothing in page matching (see `nwv.matching`).

At run time a network reads its weights from a shared page pool `[m, page_size]`
through its page table `[n_pages]` (`tf.gather(pool, page_table)`);
`gather_weights` is the numpy reference of that step.

Everything here is pure numpy: arrays in, arrays out; float32 round trips are
bit-exact.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def _check_page_size(page_size) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) \
            or page_size < 1:
        raise ValueError(f"expected page_size to be an integer >= 1, received {page_size!r}")
    return int(page_size)


def _check_finite(array: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"expected finite values in {name}, received {bad} NaN/inf "
                         f"value(s)")


def _derive(shapes, page_size, aligned=False) -> dict:
    """All PageLayout fields from the variable shapes, the page size and alignment."""
    shapes = tuple(tuple(int(d) for d in s) for s in shapes)
    if any(d < 0 for s in shapes for d in s):
        raise ValueError(f"expected non-negative dimensions, received shapes {shapes}")
    sizes = tuple(int(np.prod(s, dtype=np.int64)) for s in shapes)
    page_size = _check_page_size(page_size)
    n_weights = int(sum(sizes))
    if aligned:  # every variable starts a page: whole variables can be shared
        spans = [-(-s // page_size) * page_size for s in sizes]
        offsets = tuple(int(o) for o in np.cumsum([0] + spans[:-1])) if sizes else ()
        n_pages = max(1, sum(spans) // page_size)
    else:
        offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1])) if sizes else ()
        n_pages = max(1, -(-n_weights // page_size))
    return dict(shapes=shapes, sizes=sizes, offsets=offsets, page_size=page_size,
                n_pages=n_pages, n_weights=n_weights, aligned=bool(aligned))


@dataclasses.dataclass(frozen=True)
class PageLayout:
    """Where each variable of a network lives in its page vector.

    Attributes:
      shapes: shape of each variable, in layer order.
      sizes: number of weights of each variable (product of its shape).
      offsets: start of each variable in the flat vector (cumulative sizes).
      page_size: weights per page, P >= 1.
      n_pages: ceil(n_weights / P) (at least 1 even for an empty network);
        aligned: sum_i ceil(sizes_i / P).
      n_weights: total number of weights, sum(sizes).
      aligned: each variable starts on a page boundary (zero padding after
        each), so a variable's pages can be shared whole between networks (a
        zipped model's shared blocks); otherwise variables are packed back to back.
    """
    _: dataclasses.KW_ONLY
    shapes: tuple
    sizes: tuple
    offsets: tuple
    page_size: int
    n_pages: int
    n_weights: int
    aligned: bool = False

    def __post_init__(self):
        derived = _derive(self.shapes, self.page_size, self.aligned)
        for key in ("sizes", "offsets", "n_pages", "n_weights"):
            value, given = derived[key], getattr(self, key)
            given = tuple(int(v) for v in given) if isinstance(value, tuple) else int(given)
            if given != value:
                raise ValueError(f"expected {key}={value} for shapes {derived['shapes']} "
                                 f"and page_size={derived['page_size']}, received {given}")
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_shapes(cls, shapes: Sequence[Sequence[int]], page_size: int,
                    aligned: bool = False) -> "PageLayout":
        """Builds the layout of variables with these shapes (sizes etc. derived)."""
        return cls(**_derive(shapes, page_size, aligned))

    def get_config(self) -> dict:
        """JSON-serialisable description (lists and ints)."""
        return dict(shapes=[list(s) for s in self.shapes], sizes=list(self.sizes),
                    offsets=list(self.offsets), page_size=self.page_size,
                    n_pages=self.n_pages, n_weights=self.n_weights, aligned=self.aligned)

    @classmethod
    def from_config(cls, config: dict) -> "PageLayout":
        """Inverse of `get_config`; only `shapes` and `page_size` are required,
        the other keys, when present, are checked against the derived values."""
        fields = _derive(config["shapes"], config["page_size"], config.get("aligned", False))
        fields.update({k: config[k] for k in fields if k in config and k != "shapes"})
        return cls(**fields)


def flatten(arrays: Sequence[np.ndarray], page_size: int = 100, aligned: bool = False):
    """Concatenates variables (layer order, C order) into one float32 vector.

    flat = concat_i(ravel(arrays[i])), float32.

    Args:
      arrays: list of arrays (e.g. `[weight_0, bias_0, weight_1, ...]`), any
        shapes; cast to float32.
      page_size: weights per page P recorded in the layout.
      aligned: start every array on a page boundary (see `PageLayout`).

    Returns:
      (flat [n_weights] float32, PageLayout); aligned: flat [n_pages * P] with
      each array at its offset and zeros between.

    Raises:
      ValueError: page_size < 1, an empty list, or NaN/inf values.
    """
    page_size = _check_page_size(page_size)
    if isinstance(arrays, np.ndarray) or len(arrays) == 0:
        raise ValueError("expected a non-empty list of arrays, received "
                         f"{type(arrays).__name__} of length {len(arrays)}")
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    for i, a in enumerate(arrays):
        _check_finite(a, f"array {i} (shape {a.shape})")
    layout = PageLayout.from_shapes([a.shape for a in arrays], page_size, aligned)
    if aligned:
        flat = np.zeros(layout.n_pages * page_size, np.float32)
        for a, o in zip(arrays, layout.offsets):
            flat[o:o + a.size] = a.ravel()
    else:
        flat = np.concatenate([a.ravel() for a in arrays]) if layout.n_weights else \
            np.zeros(0, np.float32)
    return flat.astype(np.float32, copy=False), layout


def to_pages(flat: np.ndarray, page_size: int) -> np.ndarray:
    """Cuts a flat vector into zero-padded pages.

    pages[p, k] = flat[p * P + k], 0 past the end.

    Args:
      flat: [n] vector.
      page_size: P >= 1.

    Returns:
      [ceil(n / P) (at least 1), P] float32.

    Raises:
      ValueError: flat not 1-D, page_size < 1, NaN/inf values.
    """
    page_size = _check_page_size(page_size)
    flat = np.asarray(flat, dtype=np.float32)
    if flat.ndim != 1:
        raise ValueError(f"expected a 1-D vector, received shape {flat.shape}")
    _check_finite(flat, "the flat vector")
    n_pages = max(1, -(-flat.size // page_size))
    pages = np.zeros(n_pages * page_size, np.float32)
    pages[:flat.size] = flat
    return pages.reshape(n_pages, page_size)


def paginate(arrays: Sequence[np.ndarray], page_size: int = 100, aligned: bool = False):
    """`flatten` then `to_pages`: returns (pages [n_pages, P] float32, PageLayout)."""
    flat, layout = flatten(arrays, page_size, aligned)
    return to_pages(flat, page_size), layout


def from_pages(pages: np.ndarray, layout: PageLayout) -> list:
    """Inverse of `to_pages`/`flatten`: the variables with their original shapes.

    arrays[i] = reshape(flat[offsets[i] : offsets[i] + sizes[i]], shapes[i]),
    flat = ravel(pages)[:n_weights]; padding is ignored.

    Args:
      pages: [layout.n_pages, layout.page_size].
      layout: the network's PageLayout.

    Returns:
      list of float32 arrays (fresh copies) with shapes `layout.shapes`.

    Raises:
      ValueError: pages of the wrong shape or holding NaN/inf.
    """
    pages = np.asarray(pages, dtype=np.float32)
    expected = (layout.n_pages, layout.page_size)
    if pages.shape != expected:
        raise ValueError(f"expected pages of shape {expected}, received {pages.shape}")
    _check_finite(pages, "pages")
    flat = pages.reshape(-1)
    return [flat[o:o + s].reshape(shape).copy()
            for o, s, shape in zip(layout.offsets, layout.sizes, layout.shapes)]


def gather_weights(pool: np.ndarray, page_table: np.ndarray, layout: PageLayout) -> list:
    """Numpy reference of the runtime weight lookup (`tf.gather` on the pool).

    pages[p] = pool[page_table[p]];  arrays = from_pages(pages, layout).

    Args:
      pool: [m, P] shared page pool.
      page_table: [layout.n_pages] integer pool indices in [0, m).
      layout: the network's PageLayout (P must equal pool.shape[1]).

    Returns:
      list of float32 arrays with shapes `layout.shapes`.

    Raises:
      ValueError: bad shapes, non-integer table, indices out of range, NaN/inf.
    """
    pool = np.asarray(pool)
    if pool.ndim != 2 or pool.shape[1] != layout.page_size:
        raise ValueError(f"expected a pool of shape [m, {layout.page_size}], received "
                         f"{pool.shape}")
    table = np.asarray(page_table)
    if table.shape != (layout.n_pages,):
        raise ValueError(f"expected a page table of shape ({layout.n_pages},), received "
                         f"{table.shape}")
    if table.size and not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"expected an integer page table, received dtype {table.dtype}")
    if table.size and (table.min() < 0 or table.max() >= pool.shape[0]):
        raise ValueError(f"expected page indices in [0, {pool.shape[0]}), received "
                         f"values in [{table.min()}, {table.max()}]")
    return from_pages(pool[table.astype(np.int64)], layout)
