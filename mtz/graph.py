"""Read a Keras functional model into a `Chain`: steps, wiring, folded BN, slot spaces.

    >>> import models
    >>> chain = parse_chain(models.build("resnet28", k=1, base=2, depth=10))
    >>> [chain.weighted[l].name for l in chain.tied(0)]
    ['g1b1_conv2']

The model must have one input and one output; every layer is called once, is
in `mtz.structure.SUPPORTED`, and Dense/Conv2D layers read one tensor each.
Branches are allowed where an Add joins them (residual blocks, TMC Sec. 3:
"the addition copies the sharing pattern of the block's last conv"): the Add
ties its operands' spaces (see `mtz.structure`), e.g. in a Wide-ResNet block
`conv2` is tied to the block input's layer, or to the 1x1 projection conv
when the shortcut has one. A BatchNormalization is folded exactly into the
Dense/Conv2D layer that feeds it when nothing else reads that layer's output.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from mtz.bn_fold import fold_batch_norm
from mtz.structure import (FOLDED, MERGE, SUPPORTED, WEIGHTED, Chain, StatelessStep,
                           WeightedStep)

# Weight-free layers that keep zero input channels (and, first three, pixels) at zero,
# so a task's input may be zero-padded in front of them (`mtz.domains`).
_POINTWISE = {"ReLU", "LeakyReLU", "Dropout", "Identity"}
_POOLING = {"MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D"}
_ZERO_ACTIVATIONS = {"relu", "linear", "leaky_relu", "tanh", "elu", "selu", "gelu",
                     "silu", "swish", "relu6"}


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """What parsing tracks about a tensor: its slot space (weighted-layer index,
    -1: the model input), spatial positions flattened into its last axis, its
    padding view (`WeightedStep.input_view`) and its rank."""

    space: int
    flat: int
    view: str | None
    rank: int


def _find(parent: dict, l: int) -> int:
    while parent.get(l, l) != l:
        l = parent[l]
    return l


def _inbound(layer):
    nodes = list(layer._inbound_nodes)
    if len(nodes) != 1:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is called "
                         f"{len(nodes)} times; MTZ expects every layer called once")
    return nodes[0]


def _producers(layer, index) -> list[int]:
    found = []
    for tensor in _inbound(layer).input_tensors:
        op = tensor._keras_history[0]
        found.append(-1 if isinstance(op, keras.layers.InputLayer) else index[id(op)])
    return found


def _stateless(layer, cls, t: _Tensor) -> _Tensor:
    """The tensor a weight-free single-input layer makes of t."""
    view = t.view
    if cls == "Flatten":
        flat = t.flat * (int(np.prod(layer.input.shape[1:-1])) if t.rank > 2 else 1)
        return _Tensor(t.space, flat, "flat" if view == "raw" else view, 2)
    if cls in _POINTWISE:
        return t
    if cls == "Activation":
        zero = layer.get_config().get("activation") in _ZERO_ACTIVATIONS
        return dataclasses.replace(t, view=view if zero else None)
    if cls in _POOLING:
        return _Tensor(t.space, 1, "channels" if view in ("raw", "channels") else None,
                       2 if cls.startswith("Global") else 4)
    raise AssertionError(cls)


def _weighted(layer, t: _Tensor):
    """(WeightedStep, kernel [taps, cin, cout], bias [cout]) of a Dense/Conv2D layer."""
    config = layer.get_config()
    kernel = layer.kernel.numpy().astype(np.float64)
    bias = (layer.bias.numpy().astype(np.float64) if layer.use_bias
            else np.zeros(kernel.shape[-1]))
    view = t.view if t.space < 0 else None
    if isinstance(layer, keras.layers.Conv2D):
        if (config.get("data_format", "channels_last") != "channels_last"
                or tuple(config.get("dilation_rate", (1, 1))) != (1, 1)
                or config.get("groups", 1) != 1):
            raise ValueError(f"conv layer {layer.name!r}: expected channels_last, "
                             f"dilation 1 and groups 1, received {config.get('data_format')}, "
                             f"{config.get('dilation_rate')}, {config.get('groups')}")
        kh, kw, cin, cout = kernel.shape
        return (WeightedStep(layer.name, "conv", config, taps=kh * kw, in_channels=cin,
                             out_channels=cout, input_view=view),
                kernel.reshape(kh * kw, cin, cout), bias)
    if t.rank != 2:
        raise ValueError(f"dense layer {layer.name!r}: expected a flat input (after Flatten "
                         f"or global pooling), received a rank-{t.rank} tensor")
    fan_in, cout = kernel.shape
    if fan_in % t.flat:
        raise ValueError(f"dense layer {layer.name!r}: fan-in {fan_in} is not a "
                         f"multiple of the flattened spatial size {t.flat}")
    step = WeightedStep(layer.name, "dense", config, taps=t.flat,
                        in_channels=fan_in // t.flat, out_channels=cout, input_view=view)
    return step, kernel.reshape(t.flat, fan_in // t.flat, cout), bias


def _fold(layer, step_index, steps, weights, layer_index, consumers, folded):
    """Folds batch norm `layer` into the weighted step `step_index` (in place)."""
    step = steps[step_index] if step_index >= 0 else None
    if (not isinstance(step, WeightedStep) or step_index in folded
            or consumers[step.name] != 1):
        raise ValueError(f"batch norm {layer.name!r} must directly follow a Dense or "
                         f"Conv2D layer whose output nothing else reads, to be folded")
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    if axis not in (-1, len(layer.input.shape) - 1, (-1,), (len(layer.input.shape) - 1,)):
        raise ValueError(f"batch norm {layer.name!r}: expected axis -1 (channels last), "
                         f"received {layer.axis}")
    l = layer_index[step_index]
    kernel, bias = weights[l]
    gamma = layer.gamma.numpy() if layer.scale else None
    beta = layer.beta.numpy() if layer.center else None
    k, b = fold_batch_norm(kernel, bias, gamma=gamma, beta=beta,
                           moving_mean=layer.moving_mean.numpy(),
                           moving_variance=layer.moving_variance.numpy(), epsilon=layer.epsilon)
    weights[l] = (np.asarray(k, np.float64), np.asarray(b, np.float64))
    folded.add(step_index)


def parse_chain(model: keras.Model) -> Chain:
    """Reads `model` into a `Chain`, folding batch norms and tying residual additions.

    Returns:
      A `Chain` (steps in topological order; weights float64 [taps, cin, cout]).
    Raises:
      ValueError: naming the first unsupported layer, a layer called twice, a
        branch not joined by Add, an Add of the raw model input, a batch norm
        that cannot be folded, or a classifier tied by an Add.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r}: expected one input and one output, received "
                         f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    consumers = {}
    for layer in model.layers:
        cls = type(layer).__name__
        if cls not in SUPPORTED:
            raise ValueError(f"layer {layer.name!r} of type {cls} is not supported by MTZ; "
                             f"supported: {sorted(SUPPORTED)}")
        if cls != "InputLayer":
            for tensor in _inbound(layer).input_tensors:
                name = tensor._keras_history[0].name
                consumers[name] = consumers.get(name, 0) + 1
    index, layer_index, parent, folded = {}, {}, {}, set()
    steps, wiring, weights, sources = [], [], [], []
    tensors = {-1: _Tensor(-1, 1, "raw", len(model.inputs[0].shape))}
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            index[id(layer)] = -1
            continue
        producers = _producers(layer, index)
        role = SUPPORTED[cls]
        if role == FOLDED:
            _fold(layer, producers[0], steps, weights, layer_index, consumers, folded)
            index[id(layer)] = producers[0]
            continue
        ins = [tensors[p] for p in producers]
        if role == WEIGHTED:
            step, kernel, bias = _weighted(layer, ins[0])
            layer_index[len(steps)] = len(weights)
            out = _Tensor(len(weights), 1, None, ins[0].rank)
            sources.append(ins[0].space)
            weights.append((kernel, bias))
        elif role == MERGE:
            if any(t.space < 0 for t in ins) or len({t.flat for t in ins}) != 1:
                raise ValueError(f"layer {layer.name!r} (Add): expected operands that are "
                                 f"outputs of Dense/Conv2D layers (through weight-free layers), "
                                 f"received the model input; MTZ ties an addition's operands "
                                 f"to one weighted layer's neurons")
            reps = sorted({_find(parent, t.space) for t in ins})
            for r in reps[1:]:
                parent[r] = reps[0]
            step = StatelessStep(layer.name, cls, layer.get_config())
            out = _Tensor(reps[0], ins[0].flat, None, ins[0].rank)
        else:
            step = StatelessStep(layer.name, cls, layer.get_config())
            out = _stateless(layer, cls, ins[0])
        index[id(layer)] = len(steps)
        tensors[len(steps)] = out
        steps.append(step)
        wiring.append(tuple(producers))
    if not weights:
        raise ValueError(f"model {model.name!r} has no Dense or Conv2D layer to zip")
    ties = tuple(_find(parent, l) for l in range(len(weights)))
    output = index[id(model.outputs[0]._keras_history[0])]
    head = tensors[output].space
    if head < 0 or ties.count(ties[head]) > 1:
        raise ValueError(f"model {model.name!r}: expected the output to come from one "
                         f"classifier layer (Dense/Conv2D, not tied by an Add), received "
                         f"{'the input' if head < 0 else repr(steps[output].name)}")
    return Chain(input_shape=tuple(model.input_shape[1:]), steps=tuple(steps),
                 weights=tuple(weights), wiring=tuple(wiring), output=output,
                 sources=tuple(-1 if s < 0 else _find(parent, s) for s in sources),
                 ties=ties, output_layer=head)
