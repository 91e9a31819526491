"""Layer-wise Hessians of MTZ (arrays in, arrays out).

MTZ (He, Zhou, Thiele, NeurIPS 2018; IEEE TMC 2021) measures the error of
changing a layer's incoming weights by the second-order term of the layer-wise
error (TMC Eq. 2.5-2.6)::

    E(w + dw) - E(w) ~ 1/2 dw^T H dw,   H = X^T X / n,

where the rows of X are the n inputs seen by the layer (the layer inputs with a
trailing ones column when the layer has a bias). H is the same for every neuron
(column) of the layer, so one [d, d] matrix per layer suffices.

Conventions: a layer's incoming weights form W [d, m] (Keras dense kernel
[in, out]) with the bias as the LAST row, so d = d_in + 1 with a bias. A conv
kernel HWIO [kh, kw, cin, cout] is kernel.reshape(-1, cout); its inputs are the
patches of `conv_patches`, flattened in the same (kh, kw, cin) order.

Damping: `result(damping)` adds lambda * I with lambda = damping * mean(diag(H))
(a *relative* damping; lambda = damping when the diagonal is all zero). The
default 1e-6 leaves well-posed Hessians unchanged to six digits but makes
rank-deficient ones (fewer samples than inputs, dead ReLUs, constant pixels)
positive definite, so later Cholesky solves never invert a singular matrix
blindly: cond(H + lambda I) <= trace(H) / lambda = d / damping.

Task weighting (TMC Eq. 2.7-2.8): the zipped error is alpha*E_A + (1-alpha)*E_B.
`alpha_scaled` returns (2*alpha*H_A, 2*(1-alpha)*H_B), i.e. the Hessians of the
objective 2*(alpha*E_A + (1-alpha)*E_B), which at alpha = 0.5 is E_A + E_B with
the Hessians unchanged, so alpha = 0.5 reproduces TMC Eq. 2.9-2.16 exactly.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["HessianAccumulator", "layer_hessian", "add_damping", "conv_patches",
           "conv_output_size", "conv_layer_hessian", "per_tap_hessian", "check_alpha",
           "alpha_scaled"]

# Rows converted to float64 at a time: about 64 MiB of float64 per chunk.
_CHUNK_ELEMENTS = 1 << 23


def _pair(value, name):
    """(a, b) from an int or a pair of positive ints."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or not all(int(v) == v and v >= 1 for v in pair):
        raise ValueError(f"expected {name} as a positive int or a pair of them, received {value!r}")
    return int(pair[0]), int(pair[1])


def add_damping(h: np.ndarray, damping: float) -> np.ndarray:
    """H + lambda * I with the relative lambda = damping * mean(diag(H)).

    Args:
      h: [d, d] Hessian (not modified).
      damping: relative damping >= 0; lambda = damping when diag(H) is all zero.
    Returns:
      [d, d] float64 damped Hessian.
    Raises:
      ValueError: negative or non-finite damping.
    """
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"expected damping >= 0, received {damping!r}")
    h = np.array(h, dtype=np.float64)
    scale = float(np.mean(np.diag(h))) if h.size else 0.0
    lam = damping * scale if scale > 0 else float(damping)
    h[np.diag_indices_from(h)] += lam
    return h


class HessianAccumulator:
    """Streams input batches into H = X^T X / n (TMC Eq. 2.6), float64.

    Only the sums X0^T X0, X0^T 1 and n are kept (X0: inputs without the ones
    column), so memory is O(d_in^2) whatever the number of samples; each batch
    is converted to float64 `chunk_rows` rows at a time.

    Args:
      d_in: number of layer inputs (without the bias).
      bias: append the ones column (H gets d = d_in + 1 rows, bias last).
      chunk_rows: rows per float64 chunk; default keeps a chunk near 64 MiB.
    """

    def __init__(self, d_in: int, bias: bool = True, chunk_rows: int | None = None):
        if int(d_in) != d_in or d_in < 1:
            raise ValueError(f"expected d_in >= 1, received {d_in!r}")
        self.d_in, self.bias = int(d_in), bool(bias)
        self.chunk_rows = int(chunk_rows or max(1, _CHUNK_ELEMENTS // self.d_in))
        self._xtx = np.zeros((self.d_in, self.d_in), np.float64)
        self._sum = np.zeros(self.d_in, np.float64)
        self.count = 0

    @property
    def dim(self) -> int:
        """d: rows of H (d_in + 1 with a bias)."""
        return self.d_in + int(self.bias)

    def update(self, batch) -> "HessianAccumulator":
        """Adds a batch of inputs [n, d_in] (any float dtype, array-like); returns self."""
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.d_in:
            raise ValueError(f"expected inputs of shape [n, {self.d_in}], "
                             f"received {batch.shape}")
        for start in range(0, batch.shape[0], self.chunk_rows):
            chunk = np.asarray(batch[start:start + self.chunk_rows], np.float64)
            if not np.isfinite(chunk).all():
                raise ValueError("expected finite inputs, received NaN or inf")
            self._xtx += chunk.T @ chunk  # NumPy dispatches X^T X to BLAS syrk
            self._sum += chunk.sum(axis=0)
        self.count += batch.shape[0]
        return self

    def add_moments(self, xtx, colsum, count: int) -> "HessianAccumulator":
        """Adds precomputed moments Σ XᵀX [d_in, d_in], Σ X [d_in] of `count` samples
        (e.g. `mtz.probes.layer_moments`, reduced over replicas); returns self."""
        xtx, colsum = np.asarray(xtx, np.float64), np.asarray(colsum, np.float64)
        if xtx.shape != (self.d_in, self.d_in) or colsum.shape != (self.d_in,):
            raise ValueError(f"expected moments of shapes ({self.d_in}, {self.d_in}) and "
                             f"({self.d_in},), received {xtx.shape} and {colsum.shape}")
        if not (np.all(np.isfinite(xtx)) and np.all(np.isfinite(colsum))):
            raise ValueError("expected finite inputs, received NaN or inf")
        self._xtx += xtx
        self._sum += colsum
        self.count += int(count)
        return self

    def result(self, damping: float = 1e-6) -> np.ndarray:
        """H [d, d] float64 = X^T X / n + lambda * I (see `add_damping`).

        Raises:
          ValueError: no samples were added.
        """
        if self.count == 0:
            raise ValueError("expected at least one sample, received none")
        d = self.dim
        h = np.empty((d, d), np.float64)
        h[:self.d_in, :self.d_in] = self._xtx / self.count
        if self.bias:
            mean = self._sum / self.count
            h[:self.d_in, -1] = mean
            h[-1, :self.d_in] = mean
            h[-1, -1] = 1.0
        h = 0.5 * (h + h.T)
        return add_damping(h, damping)


def layer_hessian(inputs, *, bias: bool = True, damping: float = 1e-6,
                  chunk_rows: int | None = None) -> np.ndarray:
    """Layer-wise Hessian H = X^T X / n + lambda * I (TMC Eq. 2.6).

    Args:
      inputs: [n, d_in] layer inputs (float array-like).
      bias: append a ones column, so H is [d_in + 1, d_in + 1] with the bias last.
      damping: relative damping, lambda = damping * mean(diag(H)); 0 for none.
      chunk_rows: rows converted to float64 at a time (memory bound).
    Returns:
      [d, d] float64 symmetric Hessian.
    Raises:
      ValueError: inputs not 2-D, empty, or not finite.
    """
    inputs = np.asarray(inputs)
    if inputs.ndim != 2 or inputs.shape[1] < 1:
        raise ValueError(f"expected inputs of shape [n, d_in], received {inputs.shape}")
    acc = HessianAccumulator(inputs.shape[1], bias=bias, chunk_rows=chunk_rows)
    return acc.update(inputs).result(damping)


def conv_output_size(size: int, kernel: int, stride: int, padding: str, *,
                     dilation: int = 1) -> tuple[int, int, int]:
    """(output size, pad before, pad after) along one axis, as TF pads.

    "valid": out = floor((size - k_eff) / stride) + 1, no padding;
    "same": out = ceil(size / stride), pad_total = max((out-1)*stride + k_eff - size, 0),
    pad before = pad_total // 2 (the extra pixel goes after), k_eff = (k-1)*dilation + 1.
    """
    k_eff = (kernel - 1) * dilation + 1
    padding = str(padding).lower()
    if padding == "valid":
        if size < k_eff:
            raise ValueError(f"expected an input of size >= {k_eff} for 'valid' padding, "
                             f"received {size}")
        return (size - k_eff) // stride + 1, 0, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + k_eff - size, 0)
        return out, total // 2, total - total // 2
    raise ValueError(f"expected padding 'valid' or 'same', received {padding!r}")


def conv_patches(x, kernel_size, strides=(1, 1), padding: str = "valid", *,
                 dilation=1) -> np.ndarray:
    """Input patches of a 2-D convolution, one row per output pixel.

    conv(x, kernel) == conv_patches(x, ...) @ kernel.reshape(-1, cout) (reshaped to
    [N, H_out, W_out, cout]); columns are in (kh, kw, cin) order, like
    tf.image.extract_patches.

    Args:
      x: [N, H, W, cin] NHWC input (array-like).
      kernel_size, strides, dilation: int or (h, w) pair.
      padding: "valid" or "same" (zero padding split as TF does).
    Returns:
      [N * H_out * W_out, kh * kw * cin] array of x's dtype.
    Raises:
      ValueError: x not 4-D, bad sizes or padding.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected x of shape [N, H, W, C], received {x.shape}")
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    dh, dw = _pair(dilation, "dilation")
    ho, top, bottom = conv_output_size(x.shape[1], kh, sh, padding, dilation=dh)
    wo, left, right = conv_output_size(x.shape[2], kw, sw, padding, dilation=dw)
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, :, ::dh, ::dw][:, :ho, :wo]
    # [N, ho, wo, cin, kh, kw] -> [N, ho, wo, kh, kw, cin]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * x.shape[3])


def per_tap_hessian(channel_hessian: np.ndarray, taps: int, bias: bool = True) -> np.ndarray:
    """Per-tap approximation: block-diagonal H from one [cin, cin] input Hessian.

    H = blockdiag(C, ..., C [taps times], 1) with C = E[x x^T] over input pixels:
    cross-tap correlations are dropped and every tap shares the channel
    statistics. The bias is decoupled (its block is E[1] = 1): keeping the exact
    bias row (the channel means in every tap) can make the matrix indefinite
    when taps * mu^T C^-1 mu > 1, which ReLU features easily reach.

    Args:
      channel_hessian: [cin, cin] symmetric input Hessian (no bias row).
      taps: kh * kw.
      bias: append the decoupled bias entry.
    Returns:
      [taps * cin (+1), taps * cin (+1)] float64.
    """
    c = np.asarray(channel_hessian, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"expected channel_hessian of shape [cin, cin], received {c.shape}")
    h = np.kron(np.eye(int(taps)), c)
    if bias:
        h = np.pad(h, ((0, 1), (0, 1)))
        h[-1, -1] = 1.0
    return h


def conv_layer_hessian(x, kernel_size, strides=(1, 1), padding: str = "valid", *,
                       dilation=1, bias: bool = True, damping: float = 1e-6,
                       per_tap: bool = False, chunk_rows: int | None = None) -> np.ndarray:
    """Hessian of a 2-D conv layer's incoming weights (TMC Eq. 2.6 over patches).

    Full (default): H = P^T P / n over all n = N*H_out*W_out patches P
    (`conv_patches`), [kh*kw*cin + 1]^2 with the bias last; the patches are
    built a few images at a time, so memory stays near `chunk_rows` patch rows.
    per_tap=True: `per_tap_hessian` of the [cin, cin] Hessian of x's pixels, which
    costs N*H*W*cin^2 instead of n*(kh*kw*cin)^2 flops and ignores padding.

    Args:
      x: [N, H, W, cin] layer inputs.
      kernel_size, strides, padding, dilation: as in `conv_patches`.
      bias: the layer has a bias (last row of the flattened kernel).
      damping: relative damping (see `add_damping`).
      per_tap: use the block-diagonal per-tap approximation.
      chunk_rows: patch rows converted to float64 at a time.
    Returns:
      [kh*kw*cin (+1), kh*kw*cin (+1)] float64 Hessian.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected x of shape [N, H, W, C], received {x.shape}")
    (kh, kw), cin = _pair(kernel_size, "kernel_size"), x.shape[3]
    (sh, sw), (dh, dw) = _pair(strides, "strides"), _pair(dilation, "dilation")
    rows_per_image = (conv_output_size(x.shape[1], kh, sh, padding, dilation=dh)[0]
                      * conv_output_size(x.shape[2], kw, sw, padding, dilation=dw)[0])
    if per_tap:
        channel = layer_hessian(x.reshape(-1, cin), bias=False, damping=0.0,
                                chunk_rows=chunk_rows)
        return add_damping(per_tap_hessian(channel, kh * kw, bias), damping)
    acc = HessianAccumulator(kh * kw * cin, bias=bias, chunk_rows=chunk_rows)
    images = max(1, acc.chunk_rows // max(rows_per_image, 1))
    for start in range(0, x.shape[0], images):
        acc.update(conv_patches(x[start:start + images], (kh, kw), (sh, sw), padding,
                                dilation=(dh, dw)))
    return acc.result(damping)


def check_alpha(alpha: float) -> float:
    """alpha as a float in [0, 1], else ValueError."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"expected alpha in [0, 1], received {alpha!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], received {alpha!r}")
    return value


def alpha_scaled(h_a: np.ndarray, h_b: np.ndarray, alpha: float = 0.5):
    """(2*alpha*H_A, 2*(1-alpha)*H_B): Hessians of 2*(alpha*E_A + (1-alpha)*E_B).

    TMC Eq. 2.7-2.8 weight the two tasks' errors by alpha and 1 - alpha; the
    factor 2 makes alpha = 0.5 return the Hessians unchanged (E_A + E_B, the
    objective of TMC Eq. 2.9-2.16). Costs computed from the scaled Hessians are
    therefore 2 * (alpha*dE_A + (1-alpha)*dE_B).

    Returns:
      (h_a', h_b') float64 arrays of the inputs' shapes (copies).
    """
    alpha = check_alpha(alpha)
    return (np.asarray(h_a, np.float64) * (2.0 * alpha),
            np.asarray(h_b, np.float64) * (2.0 * (1.0 - alpha)))
