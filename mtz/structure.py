"""What MTZ zips: a network read as weighted steps, weight-free steps and their wiring.

The table `SUPPORTED` (from `models.layer_support`, the table NWV reads too)
maps Keras layer types to their role. Weighted layers
(Dense, Conv2D) become `WeightedStep`s whose kernel is viewed as
[taps, in_channels, out_channels]: taps = kh*kw for a convolution, the number
of flattened spatial positions for a dense layer reading a Flatten, 1
otherwise. Neurons (dense units, conv kernels) are the out_channels; the
"inputs" MTZ shares are in_channels, each spanning its taps. A
BatchNormalization right after a weighted layer is folded into it exactly (see
`mtz.bn_fold`); an Add joins residual branches. `mtz.graph.parse_chain` reads
a Keras model into a `Chain`; an unsupported layer fails early, naming it.

Slot spaces. The channels of every tensor in the network are the neurons of
one weighted layer (through weight-free layers) or the model input's
channels. An Add sums channel c of its operands, so MTZ must give both
operands the same slots (TMC: "the addition copies the sharing pattern of
the block's last conv"): the Add *ties* the layers that produced them into one
space, named by its first layer in topological order, the representative.
A chain without Add has one space per weighted layer.
"""
from __future__ import annotations

import dataclasses

import keras

from models.layer_support import FOLDED, MERGE, STATELESS, WEIGHTED, mtz_roles

__all__ = ["WEIGHTED", "FOLDED", "STATELESS", "MERGE", "SUPPORTED", "WeightedStep",
           "StatelessStep", "Chain", "same_architecture"]

SUPPORTED = mtz_roles()


@dataclasses.dataclass(frozen=True)
class WeightedStep:
    """A Dense or Conv2D layer: its config and kernel geometry.

    Attributes:
      name: layer name in the source model.
      kind: "dense" or "conv".
      config: Keras config (activation, strides, padding, ...).
      taps: kernel positions per input channel (kh*kw, flattened spatial size, or 1).
      in_channels, out_channels: kernel fan-in channels and neurons.
      input_view: for a layer reading the model input (through weight-free
        layers): "raw" (element-wise, zero-preserving layers only), "flat"
        (those and one Flatten: taps are the input's pixels), "channels"
        (zero channels stay zero, e.g. through pooling) or None (zero padding
        of the input would change the layer's input). None for other layers.
    """

    name: str
    kind: str
    config: dict
    _: dataclasses.KW_ONLY
    taps: int
    in_channels: int
    out_channels: int
    input_view: str | None = None


@dataclasses.dataclass(frozen=True)
class StatelessStep:
    """A weight-free layer (activation, pooling, flatten, dropout, add): class and config."""

    name: str
    class_name: str
    config: dict

    def build(self):
        return getattr(keras.layers, self.class_name).from_config(self.config)


@dataclasses.dataclass(frozen=True)
class Chain:
    """A zippable network: input shape, steps in topological order, folded weights.

    Attributes:
      input_shape: model input shape without the batch axis.
      steps: `WeightedStep`s and `StatelessStep`s in topological order.
      weights: per weighted step k, (kernel [taps, cin, cout] float64, bias [cout]).
      wiring: per step, the indices of the steps feeding it (-1: the model input).
      output: index of the step whose output is the model output.
      sources: per weighted layer, the space its input channels belong to (the
        representative weighted-layer index, -1 for the model input channels).
      ties: per weighted layer, the representative of its output space (itself
        when no Add ties it to an earlier layer).
      output_layer: weighted-layer index of the classifier (never shared).
    """

    _: dataclasses.KW_ONLY
    input_shape: tuple
    steps: tuple
    weights: tuple
    wiring: tuple
    output: int
    sources: tuple
    ties: tuple
    output_layer: int

    @property
    def weighted(self) -> list[WeightedStep]:
        return [s for s in self.steps if isinstance(s, WeightedStep)]

    @property
    def layer_index(self) -> dict:
        """{step index: weighted-layer index} for the weighted steps."""
        found = [i for i, s in enumerate(self.steps) if isinstance(s, WeightedStep)]
        return {i: k for k, i in enumerate(found)}

    def tied(self, rep: int) -> list[int]:
        """Weighted layers tied to representative `rep`, other than `rep` itself."""
        return [l for l, r in enumerate(self.ties) if r == rep and l != rep]


def same_architecture(chains: list[Chain], names: list[str]) -> None:
    """Raises ValueError unless all chains have the same graph and kernel geometry.

    Layer widths may differ between networks; the layer types and wiring, the
    kernel kind and taps, and the input channels of the layers reading the
    model input must agree (call after padding the inputs, `mtz.domains`).
    """
    ref = chains[0]
    for chain, name in zip(chains[1:], names[1:]):
        a, b = ref.weighted, chain.weighted
        if len(a) != len(b) or len(ref.steps) != len(chain.steps):
            raise ValueError(f"networks {names[0]!r} and {name!r} have different depths "
                             f"({len(a)} vs {len(b)} weighted layers); MTZ zips networks "
                             f"of one architecture")
        for sa, sb in zip(ref.steps, chain.steps):
            kind_a = getattr(sa, "class_name", getattr(sa, "kind", None))
            kind_b = getattr(sb, "class_name", getattr(sb, "kind", None))
            if kind_a != kind_b:
                raise ValueError(f"networks {names[0]!r} and {name!r} differ at layer "
                                 f"{sa.name!r}: expected {kind_a}, received {kind_b} "
                                 f"({sb.name!r})")
        if (ref.wiring, ref.ties, ref.output) != (chain.wiring, chain.ties, chain.output):
            raise ValueError(f"networks {names[0]!r} and {name!r} are wired differently "
                             f"(branches or residual additions differ); MTZ zips networks "
                             f"of one architecture")
        for i, (sa, sb) in enumerate(zip(a, b)):
            first = ref.sources[i] < 0
            if ((sa.kind, sa.taps) != (sb.kind, sb.taps)
                    or (first and sa.in_channels != sb.in_channels)):
                raise ValueError(f"layer {i} ({sa.name!r}) differs between {names[0]!r} "
                                 f"and {name!r}: {sa.kind} with {sa.taps} taps and "
                                 f"{sa.in_channels} input channels vs {sb.kind} with "
                                 f"{sb.taps} taps and {sb.in_channels}")

