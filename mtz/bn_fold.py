"""Exact folding of an inference-mode batch normalisation into the layer before it.

MTZ zips the incoming weights of Dense and Conv2D neurons; a BatchNormalization
that directly follows such a layer is an affine map per output channel at
inference time,

    BN(z) = gamma * (z - mu) / sigma + beta,   sigma = sqrt(var + eps),

so with z = x K + b it folds into the layer exactly:

    K' = K * gamma / sigma   (scaling the last, output-channel axis of K),
    b' = gamma * (b - mu) / sigma + beta.

This holds for Dense kernels [in, out] and Conv2D kernels HWIO
[kh, kw, cin, cout] alike (not for depthwise kernels, whose output channels are
not the last axis). Arithmetic is float64; results keep the kernel's dtype.
"""
from __future__ import annotations

import numpy as np

__all__ = ["batch_norm_affine", "fold_batch_norm"]


def _vector(name, value, channels, default=None):
    if value is None:
        if default is None:
            raise ValueError(f"expected {name} of shape [{channels}], received None")
        return np.full(channels, default, np.float64)
    vector = np.asarray(value, np.float64)
    if vector.shape != (channels,):
        raise ValueError(f"expected {name} of shape [{channels}] (the kernel's last axis), "
                         f"received {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"expected finite {name}, received NaN or inf")
    return vector


def batch_norm_affine(gamma, beta, moving_mean, moving_variance, *, epsilon: float = 1e-3):
    """Inference BN as a per-channel affine map: BN(z) = z * scale + shift.

    scale = gamma / sigma, shift = beta - mu * gamma / sigma, sigma = sqrt(var + eps).

    Args:
      gamma, beta: [c] or None (scale=False: ones; center=False: zeros).
      moving_mean, moving_variance: [c]; epsilon: the BN's epsilon.
    Returns:
      (scale, shift): [c] float64 each.
    Raises:
      ValueError: shapes disagree, non-finite inputs, variance + epsilon <= 0.
    """
    mean = np.asarray(moving_mean) if moving_mean is not None else None
    if mean is None or mean.ndim != 1:
        raise ValueError(f"expected moving_mean of shape [c], received "
                         f"{None if mean is None else mean.shape}")
    channels = mean.shape[0]
    mean = _vector("moving_mean", mean, channels)
    variance = _vector("moving_variance", moving_variance, channels) + float(epsilon)
    if not (variance > 0).all():
        raise ValueError(f"expected moving_variance + epsilon > 0, received minimum "
                         f"{variance.min():.3g}")
    scale = _vector("gamma", gamma, channels, 1.0) / np.sqrt(variance)
    return scale, _vector("beta", beta, channels, 0.0) - mean * scale


def fold_batch_norm(kernel, bias, *, gamma, beta, moving_mean, moving_variance,
                    epsilon: float = 1e-3):
    """Folds BN(x K + b) into x K' + b' exactly (inference mode).

    K' = K * gamma / sigma and b' = gamma * (b - mu) / sigma + beta with
    sigma = sqrt(moving_variance + epsilon), per output channel (last axis of K).

    Args:
      kernel: [..., cout] Dense [in, cout] or Conv2D HWIO [kh, kw, cin, cout] kernel.
      bias: [cout] bias, or None for a layer without bias (zero).
      gamma: [cout] scale, or None when the BN has scale=False (ones).
      beta: [cout] offset, or None when the BN has center=False (zeros).
      moving_mean, moving_variance: [cout] inference statistics.
      epsilon: the BN's epsilon (Keras default 1e-3).
    Returns:
      (kernel', bias'): kernel' of kernel's shape and dtype (float32 for integer
      kernels), bias' [cout] of the same dtype.
    Raises:
      ValueError: shapes disagree with cout, non-finite inputs, variance + epsilon <= 0.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"expected a kernel [..., cout] with >= 2 dimensions, "
                         f"received shape {kernel.shape}")
    if not np.isfinite(kernel).all():
        raise ValueError("expected a finite kernel, received NaN or inf")
    channels = kernel.shape[-1]
    dtype = kernel.dtype if np.issubdtype(kernel.dtype, np.floating) else np.float32
    bias = _vector("bias", bias, channels, 0.0)
    _vector("moving_mean", moving_mean, channels)  # shape check against cout
    scale, shift = batch_norm_affine(gamma, beta, moving_mean, moving_variance,
                                     epsilon=epsilon)
    folded_kernel = kernel.astype(np.float64) * scale
    folded_bias = bias * scale + shift
    return folded_kernel.astype(dtype), folded_bias.astype(dtype)
