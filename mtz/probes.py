"""Layer-input moments for the layer-wise Hessians, in TensorFlow, reduced over replicas.

MTZ's Hessian of a layer (TMC Eq. 2.6) needs only the moments of the layer's
inputs X (restricted to the channels being zipped): Σ XᵀX, Σ X and n. They are
computed here in float64 inside `tf.function`s: a probe model runs the network
up to the layer, the channels are selected (zero where the task lacks one),
convolution inputs become patches (`tf.image.extract_patches`, the (kh, kw, cin)
order of `mtz.hessian.conv_patches`) or, per tap, pixels; under any
`tf.distribute.Strategy` in scope each replica takes its share of every batch
and the sums are reduced (SUM) across replicas, so every worker gets the same
moments. `mtz.hessian.HessianAccumulator.add_moments` turns them into H.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from models import distribute

__all__ = ["LayerGeometry", "layer_moments"]


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    """What the moments are taken over.

    Attributes:
      kind: "dense" or "conv".
      taps: kernel positions per input channel (dense: flattened spatial size).
      select: [r] positions of the wanted input channels in the layer's input
        channels, -1 for a channel the task lacks (a zero column).
      kernel_size, strides, padding: convolution geometry (conv only).
      per_tap: moments of pixels [cin] instead of patches (per-tap Hessian).
    """
    kind: str
    taps: int
    select: np.ndarray
    _: dataclasses.KW_ONLY
    kernel_size: tuple = (1, 1)
    strides: tuple = (1, 1)
    padding: str = "valid"
    per_tap: bool = False

    @property
    def dim(self) -> int:
        """Columns of X: the Hessian's size without the bias."""
        rows = len(self.select)
        if self.kind == "conv" and not self.per_tap:
            return int(np.prod(self.kernel_size)) * rows
        return rows if self.per_tap else self.taps * rows


def _columns(x, geometry: LayerGeometry):
    """Layer inputs [batch, ...] -> rows of X [k, dim] float64."""
    select = tf.constant(np.where(geometry.select < 0, 0, geometry.select), tf.int32)
    keep = tf.constant(geometry.select >= 0)
    if geometry.kind == "conv":
        chosen = tf.gather(x, select, axis=-1) * tf.cast(keep, x.dtype)
        if geometry.per_tap:
            return tf.reshape(tf.cast(chosen, tf.float64), [-1, len(geometry.select)])
        (kh, kw), (sh, sw) = geometry.kernel_size, geometry.strides
        patches = tf.image.extract_patches(chosen, [1, kh, kw, 1], [1, sh, sw, 1],
                                           [1, 1, 1, 1], geometry.padding.upper())
        return tf.reshape(tf.cast(patches, tf.float64), [-1, geometry.dim])
    # the static feature count, not -1: a replica may receive an empty batch
    features = int(np.prod(x.shape[1:])) // geometry.taps
    grid = tf.reshape(x, [tf.shape(x)[0], geometry.taps, features])
    chosen = tf.gather(grid, select, axis=-1) * tf.cast(keep, x.dtype)
    return tf.reshape(tf.cast(chosen, tf.float64), [-1, geometry.dim])


def layer_moments(model: keras.Model, layer_name: str, x, geometry: LayerGeometry, *,
                  batch_size: int = 256):
    """(Σ XᵀX [d, d], Σ X [d], n) float64 of a layer's restricted inputs on examples x.

    Args:
      model: the network (one input); its layer `layer_name` is probed.
      layer_name: the weighted layer whose inputs are taken.
      x: [N, *input_shape] examples.
      geometry: `LayerGeometry` (kind, taps, selected channels, conv geometry).
      batch_size: examples per step over all replicas.
    Returns:
      (xtx, colsum, count) as numpy, summed over examples and replicas.
    """
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, model.get_layer(layer_name).input)
    strategy = tf.distribute.get_strategy()
    replicas = distribute.num_replicas(strategy)
    batch = max(replicas, batch_size - batch_size % replicas)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(x, np.float32)).batch(batch)
    if replicas > 1:
        ds = strategy.experimental_distribute_dataset(ds)
    dim = geometry.dim

    def replica_sums(xb):
        cols = _columns(probe(xb, training=False), geometry)
        return (tf.matmul(cols, cols, transpose_a=True), tf.reduce_sum(cols, axis=0),
                tf.cast(tf.shape(cols)[0], tf.float64))

    @tf.function
    def step(xb):
        sums = strategy.run(replica_sums, args=(xb,))
        return [strategy.reduce("SUM", s, axis=None) for s in sums]

    xtx, colsum, count = np.zeros((dim, dim)), np.zeros(dim), 0.0
    # one trace per probed layer is by design (each layer has its own probe), so
    # TensorFlow's "excessive retracing" warning across layers is silenced here
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        for xb in ds:
            a, b, c = step(xb)
            xtx += a.numpy()
            colsum += b.numpy()
            count += float(c.numpy())
    finally:
        logger.setLevel(level)
    return xtx, colsum, int(round(count))
