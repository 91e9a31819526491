"""int8 pages: symmetric quantisation with one scale per page (arrays in, arrays out).

A pool [m, P] float32 is stored as codes q [m, P] int8 and scales s [m] float32,
each scale the smallest point of the grid 2^(n/16) (n an integer) that covers
its page:

    n_j = ceil(16 · log2(max_k |w_jk| / 127)),   s_j = 2^(n_j / 16)   (1 for an all-zero page)
    q_jk = clip(round(w_jk / s_j), −127, 127)
    ŵ_jk = q_jk · s_j                  |ŵ_jk − w_jk| ≤ s_j / 2

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
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["LEVELS", "SCALE_STEPS", "quantize_pages", "dequantize_pages", "fake_quantize",
           "page_scales"]

LEVELS = 127
SCALE_STEPS = 16     # scale grid points per octave: s = 2^(n / SCALE_STEPS)


def _grid_scales(largest) -> np.ndarray:
    """[m] float32 grid scales 2^(n/16) >= largest / 127 (1 where largest is 0)."""
    largest = np.asarray(largest, np.float32)
    positive = largest > 0
    need = np.where(positive, largest, 1.0).astype(np.float64) / LEVELS
    steps = np.ceil(SCALE_STEPS * np.log2(need) - 1e-9)
    scales = np.exp2(steps / SCALE_STEPS).astype(np.float32)
    short = scales * np.float32(LEVELS) < largest        # float32 rounding: next point
    scales[short] = np.exp2((steps[short] + 1) / SCALE_STEPS).astype(np.float32)
    return np.where(positive, scales, np.float32(1.0)).astype(np.float32)


def page_scales(pool) -> np.ndarray:
    """Per-page scale s_j: the smallest grid point 2^(n/16) >= max |w_j| / 127 (1 for
    all-zero pages).

    Args:
      pool: [m, P] float pages.
    Returns:
      [m] float32 scales.
    Raises:
      ValueError: not [m, P] or not finite.
    """
    pool = np.asarray(pool, np.float32)
    if pool.ndim != 2 or not np.all(np.isfinite(pool)):
        raise ValueError(f"expected finite pages [m, P], received shape {pool.shape}")
    largest = np.max(np.abs(pool), axis=1) if pool.size else np.zeros(pool.shape[0])
    return _grid_scales(largest)


def quantize_pages(pool):
    """Symmetric int8 codes and per-page scales of a pool.

    Args:
      pool: [m, P] float pages.
    Returns:
      (codes [m, P] int8, scales [m] float32) with |codes · scales − pool| <= scales / 2.
    Raises:
      ValueError: not [m, P] or not finite.
    """
    pool = np.asarray(pool, np.float32)
    scales = page_scales(pool)
    codes = np.clip(np.rint(pool / scales[:, None]), -LEVELS, LEVELS).astype(np.int8)
    return codes, scales


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


def fake_quantize(pages):
    """int8 rounding of pages [n, P] (a tensor) with a straight-through gradient.

    Forward: round(w / s) · s with the page's grid scale s (`page_scales`, up to
    float rounding at a grid point); backward: the identity, so joint optimisation
    trains the float pool for its int8 copy.

    Args:
      pages: [n, P] float32 tensor (e.g. gathered pool pages).
    Returns:
      [n, P] float32 tensor.
    """
    pages = tf.convert_to_tensor(pages, tf.float32)
    largest = tf.reduce_max(tf.abs(pages), axis=1, keepdims=True)
    need = tf.cast(tf.where(largest > 0, largest, tf.ones_like(largest)), tf.float64) / LEVELS
    steps = tf.math.ceil(SCALE_STEPS * tf.math.log(need) / np.log(2.0) - 1e-9)
    grid = tf.cast(tf.pow(tf.constant(2.0, tf.float64), steps / SCALE_STEPS), tf.float32)
    grid = tf.where(grid * LEVELS < largest, tf.cast(tf.pow(
        tf.constant(2.0, tf.float64), (steps + 1) / SCALE_STEPS), tf.float32), grid)
    scale = tf.stop_gradient(tf.where(largest > 0, grid, tf.ones_like(largest)))
    rounded = tf.clip_by_value(tf.round(pages / scale), -LEVELS, LEVELS) * scale
    return pages + tf.stop_gradient(rounded - pages)
