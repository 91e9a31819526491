"""int8 pages: symmetric quantisation with one scale per page (arrays in, arrays out).

A pool [m, P] float32 is stored as codes q [m, P] int8 and scales s [m] float32:

    s_j = max_k |w_jk| / 127          (1 for an all-zero page)
    q_jk = clip(round(w_jk / s_j), −127, 127)
    ŵ_jk = q_jk · s_j                  |ŵ_jk − w_jk| ≤ s_j / 2

so storage shrinks ÷4 (plus 4 bytes a page). The runtime, the SavedModel and the
TFLite export gather codes and scales through the page table and dequantize
after the gather, inside the graph. `fake_quantize` is the same rounding with
a straight-through gradient, for quantisation-aware joint optimisation.

    >>> q, s = quantize_pages(np.array([[0.5, -1.0, 0.25]], np.float32))
    >>> q.tolist(), round(float(s[0]) * 127, 6)
    ([[64, -127, 32]], 1.0)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["LEVELS", "quantize_pages", "dequantize_pages", "fake_quantize", "page_scales"]

LEVELS = 127


def page_scales(pool) -> np.ndarray:
    """Per-page scale s_j = max |w_j| / 127 (1 for all-zero pages).

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
    return np.where(largest > 0, largest / LEVELS, 1.0).astype(np.float32)


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

    Forward: round(w / s) · s with the page's scale s = max|w| / 127; backward: the
    identity, so joint optimisation trains the float pool for its int8 copy.

    Args:
      pages: [n, P] float32 tensor (e.g. gathered pool pages).
    Returns:
      [n, P] float32 tensor.
    """
    pages = tf.convert_to_tensor(pages, tf.float32)
    largest = tf.reduce_max(tf.abs(pages), axis=1, keepdims=True)
    scale = tf.stop_gradient(tf.where(largest > 0, largest / LEVELS, tf.ones_like(largest)))
    rounded = tf.clip_by_value(tf.round(pages / scale), -LEVELS, LEVELS) * scale
    return pages + tf.stop_gradient(rounded - pages)
