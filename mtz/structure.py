"""Read a Keras model as a chain MTZ can zip: weighted steps and weight-free steps.

The table `SUPPORTED` maps Keras layer types to their role. Weighted layers
(Dense, Conv2D) become `WeightedStep`s whose kernel is viewed as
[taps, in_channels, out_channels]: taps = kh*kw for a convolution, the number
of spatial positions for a dense layer right after a Flatten, 1 otherwise.
Neurons (dense units, conv kernels) are the out_channels; the "inputs" MTZ
shares are in_channels, each spanning its taps. A BatchNormalization right
after a weighted layer is folded into it exactly (see `mtz.bn_fold`).
An unsupported layer or a non-chain graph fails early, naming the layer.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from mtz.bn_fold import fold_batch_norm


WEIGHTED, FOLDED, STATELESS = "weighted", "folded", "stateless"
SUPPORTED = {
    "Dense": WEIGHTED, "Conv2D": WEIGHTED, "BatchNormalization": FOLDED,
    "InputLayer": STATELESS, "ReLU": STATELESS, "LeakyReLU": STATELESS,
    "Activation": STATELESS, "MaxPooling2D": STATELESS, "AveragePooling2D": STATELESS,
    "Flatten": STATELESS, "Dropout": STATELESS, "GlobalAveragePooling2D": STATELESS,
}


@dataclasses.dataclass(frozen=True)
class WeightedStep:
    """A Dense or Conv2D layer: its config and kernel geometry.

    Attributes:
      name: layer name in the source model.
      kind: "dense" or "conv".
      config: Keras config (activation, strides, padding, ...).
      taps: kernel positions per input channel (kh*kw, flattened spatial size, or 1).
      in_channels, out_channels: kernel fan-in channels and neurons.
    """

    name: str
    kind: str
    config: dict
    taps: int
    in_channels: int
    out_channels: int


@dataclasses.dataclass(frozen=True)
class StatelessStep:
    """A weight-free layer (activation, pooling, flatten, dropout): class and config."""

    name: str
    class_name: str
    config: dict

    def build(self):
        return getattr(keras.layers, self.class_name).from_config(self.config)


@dataclasses.dataclass(frozen=True)
class Chain:
    """A zippable model: input shape, steps in order, and the folded weights.

    `weights[k]` = (kernel [taps, cin, cout] float64, bias [cout] float64) of the
    k-th weighted step.
    """

    input_shape: tuple
    steps: tuple
    weights: tuple

    @property
    def weighted(self) -> list[WeightedStep]:
        return [s for s in self.steps if isinstance(s, WeightedStep)]


def _single_inbound(layer):
    nodes = [n for n in layer._inbound_nodes]
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is not part of a "
                         f"single chain: MTZ zips sequential chains of layers")


def parse_chain(model: keras.Model) -> Chain:
    """Reads `model` into a `Chain`, folding batch norms into their weighted layers.

    Raises:
      ValueError: naming the first unsupported layer, a branch, or a batch norm
        that does not directly follow a Dense/Conv2D layer.
    """
    steps, weights = [], []
    spatial = 1
    previous = None
    for layer in model.layers:
        kind = SUPPORTED.get(type(layer).__name__)
        if kind is None:
            raise ValueError(f"layer {layer.name!r} of type {type(layer).__name__} is not "
                             f"supported by MTZ; supported: {sorted(SUPPORTED)}")
        if type(layer).__name__ == "InputLayer":
            continue
        _single_inbound(layer)
        if kind == FOLDED:
            if not isinstance(previous, WeightedStep) or weights[-1] is None:
                raise ValueError(f"batch norm {layer.name!r} must directly follow a "
                                 f"Dense or Conv2D layer to be folded")
            kernel, bias = weights[-1]
            gamma = layer.gamma.numpy() if layer.scale else None
            beta = layer.beta.numpy() if layer.center else None
            k, b = fold_batch_norm(kernel, bias, gamma, beta, layer.moving_mean.numpy(),
                                   layer.moving_variance.numpy(), layer.epsilon)
            weights[-1] = (np.asarray(k, np.float64), np.asarray(b, np.float64))
            continue
        if kind == STATELESS:
            config = layer.get_config()
            step = StatelessStep(layer.name, type(layer).__name__, config)
            if step.class_name == "Flatten":
                spatial = int(np.prod(layer.input.shape[1:-1])) if len(layer.input.shape) > 2 else 1
            steps.append(step)
            previous = step
            continue
        config = layer.get_config()
        kernel = layer.kernel.numpy().astype(np.float64)
        bias = (layer.bias.numpy().astype(np.float64) if layer.use_bias
                else np.zeros(kernel.shape[-1]))
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = kernel.shape
            step = WeightedStep(layer.name, "conv", config, kh * kw, cin, cout)
            kernel = kernel.reshape(kh * kw, cin, cout)
        else:
            fan_in, cout = kernel.shape
            taps = spatial if previous is not None and getattr(previous, "class_name", "") == "Flatten" else 1
            if fan_in % taps:
                raise ValueError(f"dense layer {layer.name!r}: fan-in {fan_in} is not a "
                                 f"multiple of the flattened spatial size {taps}")
            step = WeightedStep(layer.name, "dense", config, taps, fan_in // taps, cout)
            kernel = kernel.reshape(taps, fan_in // taps, cout)
        steps.append(step)
        weights.append((kernel, bias))
        previous = step
    if not weights:
        raise ValueError(f"model {model.name!r} has no Dense or Conv2D layer to zip")
    return Chain(tuple(model.input_shape[1:]), tuple(steps), tuple(weights))


def same_architecture(chains: list[Chain], names: list[str]) -> None:
    """Raises ValueError unless all chains have the same steps and kernel geometry.

    Layer widths may differ between networks; the kernel kind and taps, the
    number of layers and the input channels of the first layer must agree.
    """
    ref = chains[0]
    for chain, name in zip(chains[1:], names[1:]):
        a, b = ref.weighted, chain.weighted
        if len(a) != len(b) or len(ref.steps) != len(chain.steps):
            raise ValueError(f"networks {names[0]!r} and {name!r} have different depths "
                             f"({len(a)} vs {len(b)} weighted layers); MTZ zips networks "
                             f"of one architecture")
        for i, (sa, sb) in enumerate(zip(a, b)):
            if (sa.kind, sa.taps) != (sb.kind, sb.taps) or (i == 0 and sa.in_channels != sb.in_channels):
                raise ValueError(f"layer {i} ({sa.name!r}) differs between {names[0]!r} "
                                 f"and {name!r}: {sa.kind} with {sa.taps} taps and "
                                 f"{sa.in_channels} input channels vs {sb.kind} with "
                                 f"{sb.taps} taps and {sb.in_channels}")
