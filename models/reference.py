"""Import the original NWV code's `.npz` weights and Fisher into registered models.

A reference file holds `weight_i`, `bias_i` (and `fisher_weight_i`,
`fisher_bias_i`) for each weighted layer i in order: conv kernels HWIO, dense
kernels [in, out], float32.
"""
from __future__ import annotations

import os
import re

import keras
import numpy as np


def _weighted_layers(model: keras.Model):
    return [l for l in model.layers if getattr(l, "kernel", None) is not None]


def read_npz(path: str, prefix: str = "") -> list[np.ndarray]:
    """Reads `[<prefix>weight_0, <prefix>bias_0, weight_1, ...]` in layer order.

    Args:
      path: the `.npz` file.
      prefix: key prefix ("fisher_" for the stored Fisher).
    Returns:
      List of float32 arrays, kernel then bias of each layer.
    Raises:
      FileNotFoundError / ValueError naming the file when it is missing, not an
      npz archive, has gaps in its layer indices or non-finite values.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference weights not found: {path}")
    try:
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as err:  # zipfile.BadZipFile, OSError, pickle refusal
        raise ValueError(f"{path} is not a readable .npz archive: {err}") from err
    pattern = re.compile(rf"^{re.escape(prefix)}weight_(\d+)$")
    indices = sorted(int(m.group(1)) for k in arrays if (m := pattern.match(k)))
    if not indices or indices != list(range(len(indices))):
        raise ValueError(f"{path}: expected keys {prefix}weight_0..N-1, received "
                         f"{sorted(arrays)}")
    out = []
    for i in indices:
        for kind in ("weight", "bias"):
            key = f"{prefix}{kind}_{i}"
            if key not in arrays:
                raise ValueError(f"{path}: missing array {key!r}")
            value = np.asarray(arrays[key], np.float32)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{path}: array {key!r} holds NaN or inf values")
            out.append(value)
    return out


def load_reference_weights(model: keras.Model, path: str) -> keras.Model:
    """Sets `model`'s kernels and biases from a reference `.npz`, in layer order.

    Args:
      model: a registered NWV model (`models.build("nwv_mnist")`), modified in place.
      path: the reference `.npz`.
    Returns:
      `model`.
    Raises:
      ValueError: naming the file and layer when the layer count or a shape
        disagrees with the model.
    """
    arrays = read_npz(path)
    weighted = _weighted_layers(model)
    if len(arrays) != 2 * len(weighted):
        raise ValueError(f"{path} holds {len(arrays) // 2} layers but model "
                         f"{model.name!r} has {len(weighted)} weighted layers")
    for i, layer in enumerate(weighted):
        kernel, bias = arrays[2 * i], arrays[2 * i + 1]
        expected = [tuple(v.shape) for v in layer.get_weights()]
        if expected != [kernel.shape, bias.shape]:
            raise ValueError(f"{path}: layer {i} ({layer.name!r}) expects shapes "
                             f"{expected}, file holds {[kernel.shape, bias.shape]}")
        layer.set_weights([kernel, bias])
    return model


def load_reference_fisher(path: str) -> list[np.ndarray]:
    """Diagonal Fisher `[F(weight_0), F(bias_0), ...]` stored beside the weights.

    Args:
      path: the reference `.npz`.
    Returns:
      List of float32 arrays shaped like the weights.
    Raises:
      FileNotFoundError / ValueError: as `read_npz`.
    """
    return read_npz(path, prefix="fisher_")
