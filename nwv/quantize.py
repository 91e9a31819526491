"""int8 pages: symmetric quantisation with one scale per page (arrays in, arrays out).

A pool [m, P] float32 is stored as codes q [m, P] int8 and scales s [m] float32,
each scale a point of the grid 2^(n/16) (n an integer). Without Fisher
information it is the smallest grid point that covers the page (max |w|):

    n_j = ceil(16 · log2(max_k |w_jk| / 127)),   s_j = 2^(n_j / 16)   (1 for an all-zero page)
    q_jk = clip(round(w_jk / s_j), −127, 127)
    ŵ_jk = q_jk · s_j                  |ŵ_jk − w_jk| ≤ s_j / 2

With the summed diagonal Fisher F of the networks reading each page, the scale
is the grid point, from that one down two octaves (n_j − 32 … n_j), with the
smallest Fisher-weighted rounding error

    e_j(s) = Σ_k F_jk (w_jk − clip(round(w_jk / s), −127, 127) · s)²

(ties: the larger scale, so an all-zero Fisher gives the max |w| scale): a finer
step for every weight at the price of clipping a few that the networks are
insensitive to, the NWV matching cost with the int8 copy as the partner page.
On the 8× ten-network pools it cut the Fisher-weighted error by 17–21 % and the
test predictions that int8 changes (against the float pool's) by 27 % (NWV
alone, 560 → 408) and 38 % (MTZ + NWV, 408 → 254); on the three-network demo
pool it changed more (88 → 111, mostly CIFAR-10), so it is a better default on
average, not on every pool (`scripts/bench_int8.py` measures both rules side by
side). Nearly all of the gain comes from the grid points just below max |w| / 127
(clipping a page's one or two largest weights). Clipped weights are the only
ones further than s_j / 2 from their page.

The grid costs at most 2^(1/16) − 1 = 4.4 % of step size against s_j = max/127,
and would let a device store one int8 exponent a page instead of a float32
scale (k_j = n_j − n_top + 127 within 16 octaves of the largest page's n_top).
The project's TFLM export keeps float32 scales: computing them from exponents
in its graph cost as many bytes of operators as it saved on the measured pools
(`nwv.tflite`). Storage shrinks ÷4 (plus a scale a page). The runtime, the
SavedModel and the TFLite export gather codes and scales through the page table and dequantize
after the gather, inside the graph. `fake_quantize` is the same rounding with
a straight-through gradient, for quantisation-aware joint optimisation.

    >>> q, s = quantize_pages(np.array([[0.5, -1.0, 0.25]], np.float32))
    >>> q.tolist(), float(16 * np.log2(s[0]))          # s = 2^(-111/16) >= 1/127
    ([[61, -123, 31]], -111.0)

Float pages (`choose_float_pages`, `quantize_mixed`): a few pages stay float32
beside the int8 ones, those whose rounding costs the networks most, by the
quantisation error weighted with the summed diagonal Fisher of the networks that
read the page (the NWV matching cost with the int8 copy as the partner page):

    e_j = Σ_k F_jk (w_jk − ŵ_jk)²

A page that packs large kernel weights with small biases is the typical one: its
scale (set by the kernel) rounds the biases by a large fraction of their value.
Storage: a slot s_j per page (int8: 0 for an int8 page, 1..k for the k float
pages) and float rows R [k + 1, P] (row 0 zeros); a float page has codes 0, so
every page reads

    w_j = q_j · s_j + R[slot_j]          (exact for float pages and int8 pages)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["LEVELS", "SCALE_STEPS", "SEARCH_OCTAVES", "MAX_FLOAT_PAGES", "quantize_pages",
           "encode", "dequantize_pages", "fake_quantize", "page_scales", "quantization_error",
           "choose_float_pages", "quantize_mixed", "dequantize_mixed"]

LEVELS = 127
SCALE_STEPS = 16     # scale grid points per octave: s = 2^(n / SCALE_STEPS)
SEARCH_OCTAVES = 2   # Fisher-weighted scales: searched from max |w| / 127 down this far
MAX_FLOAT_PAGES = 127  # float pages of a mixed pool: its slots are int8


def _grid_steps(largest) -> np.ndarray:
    """[m] float64 grid exponents n of the smallest grid scales 2^(n/16) >= largest / 127
    (0, i.e. scale 1, where largest is 0)."""
    largest = np.asarray(largest, np.float32)
    positive = largest > 0
    need = np.where(positive, largest, 1.0).astype(np.float64) / LEVELS
    steps = np.ceil(SCALE_STEPS * np.log2(need) - 1e-9)
    short = _grid_scale(steps) * np.float32(LEVELS) < largest   # float32 rounding: next point
    steps[short] += 1
    return np.where(positive, steps, 0.0)


def _grid_scale(steps) -> np.ndarray:
    """float32 grid scales 2^(n/16) of exponents n."""
    return np.exp2(np.asarray(steps, np.float64) / SCALE_STEPS).astype(np.float32)


def _codes(pool, scales) -> np.ndarray:
    """clip(round(w / s), −127, 127) of checked pages [m, P] and scales [m] (float32)."""
    return np.clip(np.rint(pool / scales[:, None]), -LEVELS, LEVELS)


def _round(pool, scales) -> np.ndarray:
    """Dequantized pages clip(round(w / s), −127, 127) · s ([m, P] float32)."""
    return _codes(pool, scales).astype(np.float32) * scales[:, None]


def _check_pool(pool) -> np.ndarray:
    pool = np.asarray(pool, np.float32)
    if pool.ndim != 2 or not np.all(np.isfinite(pool)):
        raise ValueError(f"expected finite pages [m, P], received shape {pool.shape}")
    return pool


def _check_fisher(fisher, shape) -> np.ndarray:
    fisher = np.asarray(fisher, np.float64)
    if fisher.shape != shape:
        raise ValueError(f"expected Fisher of the pool's shape {shape}, received "
                         f"{fisher.shape}")
    if not np.all(np.isfinite(fisher)) or (fisher.size and fisher.min() < 0):
        raise ValueError("expected finite non-negative Fisher values")
    return fisher


def page_scales(pool, fisher=None) -> np.ndarray:
    """Per-page scale s_j on the grid 2^(n/16) (see the module).

    Args:
      pool: [m, P] float pages.
      fisher: None, or [m, P] non-negative summed diagonal Fisher of the networks
        reading each page (`VirtualizedNetworks.page_fisher`).
    Returns:
      [m] float32 scales: without Fisher the smallest grid point >= max |w_j| / 127;
      with it the point from there down SEARCH_OCTAVES octaves of least
      Fisher-weighted rounding error (ties: the larger). 1 for all-zero pages.
    Raises:
      ValueError: not [m, P] or not finite; Fisher of another shape, negative or not
        finite.
    """
    pool = _check_pool(pool)
    largest = np.max(np.abs(pool), axis=1) if pool.size else np.zeros(pool.shape[0])
    steps = _grid_steps(largest)
    scales = _grid_scale(steps)
    if fisher is None:
        return scales
    fisher = _check_fisher(fisher, pool.shape)
    wide = pool.astype(np.float64)
    best = np.sum(fisher * (wide - _round(pool, scales)) ** 2, axis=1)
    chosen = scales.copy()
    for k in range(1, SCALE_STEPS * SEARCH_OCTAVES + 1):
        finer = _grid_scale(steps - k)
        error = np.sum(fisher * (wide - _round(pool, finer)) ** 2, axis=1)
        better = (error < best) & (largest > 0)
        best[better], chosen[better] = error[better], finer[better]
    return chosen


def quantize_pages(pool, fisher=None):
    """Symmetric int8 codes and per-page scales of a pool.

    Args:
      pool: [m, P] float pages.
      fisher: None (max |w| scales) or [m, P] summed Fisher (`page_scales`).
    Returns:
      (codes [m, P] int8, scales [m] float32); without Fisher |codes · scales − pool|
      <= scales / 2, with it that holds for every weight the chosen scale does not clip.
    Raises:
      ValueError: see `page_scales`.
    """
    scales = page_scales(pool, fisher)
    return encode(pool, scales), scales


def encode(pool, scales) -> np.ndarray:
    """int8 codes clip(round(w / s), −127, 127) of pages [m, P] with given scales [m].

    Raises:
      ValueError: not finite [m, P] pages, or scales that are not [m] positive.
    """
    pool = _check_pool(pool)
    scales = np.asarray(scales, np.float32)
    if scales.shape != (pool.shape[0],) or not np.all(scales > 0):
        raise ValueError(f"expected [{pool.shape[0]}] positive scales, received shape "
                         f"{scales.shape}")
    return _codes(pool, scales).astype(np.int8)


def dequantize_pages(codes, scales) -> np.ndarray:
    """Pages ŵ = codes · scales.

    Args:
      codes: [m, P] int8; scales: [m] float.
    Returns:
      [m, P] float32.
    Raises:
      ValueError: shapes that disagree.
    """
    codes, scales = np.asarray(codes), np.asarray(scales, np.float32)
    if codes.ndim != 2 or scales.shape != (codes.shape[0],):
        raise ValueError(f"expected codes [m, P] and scales [m], received {codes.shape} and "
                         f"{scales.shape}")
    return codes.astype(np.float32) * scales[:, None]


def quantization_error(pool, fisher, scales=None) -> np.ndarray:
    """Fisher-weighted int8 rounding error per page, e_j = Σ_k F_jk (w_jk − ŵ_jk)².

    Args:
      pool: [m, P] float pages; fisher: [m, P] non-negative summed diagonal Fisher
        of the networks reading each page (`VirtualizedNetworks.page_fisher`).
      scales: [m] the pages' scales; None: those Fisher chooses (`page_scales`).
    Returns:
      [m] float64 errors.
    Raises:
      ValueError: shapes that disagree, non-finite values or negative Fisher.
    """
    pool = _check_pool(pool)
    fisher = _check_fisher(fisher, pool.shape)
    if scales is None:
        scales = page_scales(pool, fisher)
    rounded = dequantize_pages(encode(pool, scales), scales)
    return np.sum(fisher * (pool.astype(np.float64) - rounded) ** 2, axis=1)


def choose_float_pages(pool, fisher, count: int, scales=None) -> np.ndarray:
    """The `count` pages with the largest Fisher-weighted rounding error
    (`quantization_error`; ties: the lower index), in increasing order.

    Args:
      pool: [m, P] float pages; fisher: [m, P] summed Fisher; count: 0..min(m, 127);
      scales: [m] the int8 pages' scales (None: those Fisher chooses).
    Returns:
      [count] int64 page indices.
    Raises:
      ValueError: a count outside that range (see also `quantization_error`).
    """
    pool = np.asarray(pool, np.float32)
    count = int(count)
    if not 0 <= count <= min(pool.shape[0], MAX_FLOAT_PAGES):
        raise ValueError(f"expected 0 <= float pages <= {min(pool.shape[0], MAX_FLOAT_PAGES)}"
                         f" (pool pages, and at most {MAX_FLOAT_PAGES}), received {count}")
    error = quantization_error(pool, fisher, scales)
    order = np.argsort(-error, kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def quantize_mixed(pool, float_pages, fisher=None):
    """int8 pages with the given pages kept float32 (see the module).

    Args:
      pool: [m, P] float pages; float_pages: distinct page indices (at most 127);
      fisher: None or [m, P] summed Fisher, for the int8 pages' scales (`page_scales`).
    Returns:
      (codes [m, P] int8, scales [m] float32, slots [m] int8, rows [k + 1, P]
      float32): float pages have codes 0, scale 1 and slot 1..k (their order in
      `float_pages` sorted); int8 pages slot 0, and rows[0] is zeros.
    Raises:
      ValueError: repeated or out-of-range pages, too many, a bad pool.
    """
    pool = np.asarray(pool, np.float32)
    codes, scales = quantize_pages(pool, fisher)
    chosen = np.asarray(float_pages, np.int64).reshape(-1)
    if (chosen.size > MAX_FLOAT_PAGES or len(set(chosen.tolist())) != chosen.size
            or (chosen.size and (chosen.min() < 0 or chosen.max() >= pool.shape[0]))):
        raise ValueError(f"expected at most {MAX_FLOAT_PAGES} distinct pages in [0, "
                         f"{pool.shape[0]}), received {chosen.tolist()}")
    chosen = np.sort(chosen)
    slots = np.zeros(pool.shape[0], np.int8)
    slots[chosen] = np.arange(1, chosen.size + 1)
    codes[chosen] = 0
    scales[chosen] = 1.0
    rows = np.zeros((chosen.size + 1, pool.shape[1]), np.float32)
    rows[1:] = pool[chosen]
    return codes, scales, slots, rows


def dequantize_mixed(codes, scales, slots, rows) -> np.ndarray:
    """Pages w_j = codes_j · s_j + rows[slot_j] ([m, P] float32; see `quantize_mixed`).

    Raises:
      ValueError: shapes that disagree, slots outside the rows.
    """
    slots = np.asarray(slots)
    rows = np.asarray(rows, np.float32)
    dense = dequantize_pages(codes, scales)
    if (slots.shape != (dense.shape[0],) or rows.ndim != 2 or rows.shape[1] != dense.shape[1]
            or (slots.size and (slots.min() < 0 or slots.max() >= rows.shape[0]))):
        raise ValueError(f"expected slots [{dense.shape[0]}] indexing rows [k + 1, "
                         f"{dense.shape[1]}], received {slots.shape} and {rows.shape}")
    return dense + rows[slots.astype(np.int64)]


def fake_quantize(pages, fisher=None):
    """int8 rounding of pages [n, P] (a tensor) with a straight-through gradient.

    Forward: clip(round(w / s), −127, 127) · s with the page's grid scale s
    (`page_scales`: max |w| without Fisher, the least Fisher-weighted error of the
    searched grid points with it; up to float rounding at a grid point); backward:
    the identity, so joint optimisation trains the float pool for its int8 copy.

    Args:
      pages: [n, P] float32 tensor (e.g. gathered pool pages).
      fisher: None, or [n, P] non-negative summed Fisher of those pages (a tensor).
    Returns:
      [n, P] float32 tensor.
    """
    pages = tf.convert_to_tensor(pages, tf.float32)
    largest = tf.reduce_max(tf.abs(pages), axis=1, keepdims=True)
    need = tf.cast(tf.where(largest > 0, largest, tf.ones_like(largest)), tf.float64) / LEVELS
    steps = tf.math.ceil(SCALE_STEPS * tf.math.log(need) / np.log(2.0) - 1e-9)

    def grid(n):
        return tf.cast(tf.pow(tf.constant(2.0, tf.float64), n / SCALE_STEPS), tf.float32)

    steps = tf.where(grid(steps) * LEVELS < largest, steps + 1, steps)
    scale = tf.where(largest > 0, grid(steps), tf.ones_like(largest))
    if fisher is not None:                         # [K, n, 1] candidates, coarsest first
        finer = tf.range(SCALE_STEPS * SEARCH_OCTAVES + 1, dtype=tf.float64)[:, None, None]
        candidates = tf.where(largest > 0, grid(steps - finer), tf.ones_like(largest))
        rounded = tf.clip_by_value(tf.round(pages / candidates), -LEVELS, LEVELS) * candidates
        error = tf.reduce_sum(tf.convert_to_tensor(fisher, tf.float32)
                              * tf.square(pages - rounded), axis=2)           # [K, n]
        count = tf.shape(error)[0]
        index = tf.range(count)[:, None] * tf.ones_like(error, tf.int32)
        first = tf.reduce_min(tf.where(error <= tf.reduce_min(error, axis=0), index, count),
                              axis=0)                     # ties: the coarsest scale
        scale = tf.gather(tf.transpose(candidates[:, :, 0]), first[:, None], batch_dims=1)
    scale = tf.stop_gradient(scale)
    rounded = tf.clip_by_value(tf.round(pages / scale), -LEVELS, LEVELS) * scale
    return pages + tf.stop_gradient(rounded - pages)
