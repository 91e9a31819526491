"""Keras models from a `ZipState`: the multi-task model and plain per-task models.

`multitask_model(state)` has one input and one output per task; each weighted
layer is a `ZippedLayer` whose blocks hold the shared weights once, and the
network's graph (branches, one Add per task and residual block) is rebuilt
step by step from `Chain.wiring`. `task_model(state, t)` is an ordinary Keras
model of task t's original architecture (original neuron order and input
shape, batch norms folded, so without BatchNormalization layers) whose
outputs equal the multi-task model's output for task t. `read_back` copies
trained block variables into the state.

Channel order: task t's tensors carry the channels of the owner groups it
belongs to, in group order (`ZipState.groups`). Tied layers share one slot
space, so both operands of an Add have the same order and add channel by
channel as in the original network. A task whose input is smaller than the
joint input (`mtz.domains`) is zero-padded by an `InputPad` layer in the
multi-task model; its plain model instead drops the padded kernel rows, which
only ever multiply zeros.
"""
from __future__ import annotations

import keras
import numpy as np

from mtz.domains import crop_kernel
from mtz.layers import InputPad, ZippedLayer
from mtz.state import ZipState, positions
from mtz.structure import WeightedStep


def _groups(state: ZipState, l: int):
    return [(o, ids) for o, ids in state.groups(l)]


def _task_order(groups, t):
    """Slot ids task t sees, in the multi-task model's channel order."""
    return np.concatenate([ids for o, ids in groups if t in o]) if groups else np.zeros(0)


def _fully_shared(in_groups, out_groups, n_tasks) -> bool:
    everyone = frozenset(range(n_tasks))
    return ([o for o, _ in in_groups] == [everyone]
            and [o for o, _ in out_groups] == [everyone])


def _pad(state: ZipState, t: int, x):
    joint = tuple(state.chains[t].input_shape)
    if tuple(state.domains[t]) == joint:
        return x
    return InputPad(joint, name=f"pad_{state.tasks[t]}")(x)


def _call(layer, args):
    return layer(args[0] if len(args) == 1 else list(args))


def multitask_model(state: ZipState, name: str = "zipped",
                    shared_input: bool = False) -> keras.Model:
    """The zipped network as one Keras model: outputs named by task.

    Args:
      shared_input: one input for all tasks (same input shape required); the
        leading layers whose neurons are all shared by all tasks are then
        computed once for every task. Otherwise one input per task, each of
        the task's own shape (zero-padded inside to the joint input).
    """
    n = len(state.tasks)
    chain = state.chains[0]
    if shared_input:
        shapes = {tuple(s) for s in state.domains}
        if len(shapes) != 1:
            raise ValueError(f"shared_input needs one input shape, tasks have {sorted(shapes)}")
        inputs = [keras.Input(state.domains[0], name="input")]
        xs = inputs * n
    else:
        inputs = [keras.Input(state.domains[t], name=f"input_{state.tasks[t]}")
                  for t in range(n)]
        xs = [_pad(state, t, x) for t, x in enumerate(inputs)]
    values = {-1: xs}
    layer_index = chain.layer_index
    for i, step in enumerate(chain.steps):
        args = [values[p] for p in chain.wiring[i]]
        common = all(a[t] is a[0] for a in args for t in range(n))
        if not isinstance(step, WeightedStep):
            layer = step.build()
            values[i] = ([_call(layer, [a[0] for a in args])] * n if common else
                         [_call(layer, [a[t] for a in args]) for t in range(n)])
            continue
        l = layer_index[i]
        in_groups, out_groups = _groups(state, state.sources[l]), _groups(state, l)
        layer = ZippedLayer(
            step.kind, state.kernels[0][l].shape[0], [(o, len(ids)) for o, ids in in_groups],
            [(o, len(ids)) for o, ids in out_groups], num_tasks=n,
            kernel_size=step.config.get("kernel_size"), strides=step.config.get("strides", (1, 1)),
            padding=step.config.get("padding", "valid"),
            activation=step.config.get("activation"), name=step.name)
        if common and _fully_shared(in_groups, out_groups, n):
            values[i] = [layer(args[0][0], task=0)] * n
        else:
            values[i] = [layer(x, task=t) for t, x in enumerate(args[0])]
        _write_blocks(state, l, layer, in_groups, out_groups)
    outputs = [keras.layers.Identity(name=state.tasks[t])(x)
               for t, x in enumerate(values[chain.output])]
    return keras.Model(inputs, outputs, name=name)


def _block_positions(state, t, l, in_groups, out_groups, g, h):
    rows = positions(state.in_ids(t, l), in_groups[g][1])
    cols = positions(state.out_ids[t][l], out_groups[h][1])
    return rows, cols


def _write_blocks(state, l, layer, in_groups, out_groups):
    for (g, h), var in layer.blocks.items():
        t = sorted(set(in_groups[g][0]) & set(out_groups[h][0]))[0]
        rows, cols = _block_positions(state, t, l, in_groups, out_groups, g, h)
        var.assign(state.kernels[t][l][:, rows][:, :, cols].astype(np.float32))
    for h, var in layer.block_biases.items():
        t = sorted(out_groups[h][0])[0]
        cols = positions(state.out_ids[t][l], out_groups[h][1])
        var.assign(state.biases[t][l][cols].astype(np.float32))


def read_back(state: ZipState, model: keras.Model) -> None:
    """Copies the multi-task model's block variables into every owner's kernels."""
    for l, step in enumerate(state.chains[0].weighted):
        layer = model.get_layer(step.name)
        in_groups, out_groups = _groups(state, state.sources[l]), _groups(state, l)
        for (g, h), var in layer.blocks.items():
            value = var.numpy().astype(np.float64)
            for t in set(in_groups[g][0]) & set(out_groups[h][0]):
                rows, cols = _block_positions(state, t, l, in_groups, out_groups, g, h)
                state.kernels[t][l][np.ix_(range(value.shape[0]), rows, cols)] = value
        for h, var in layer.block_biases.items():
            for t in out_groups[h][0]:
                cols = positions(state.out_ids[t][l], out_groups[h][1])
                state.biases[t][l][cols] = var.numpy()


def task_model(state: ZipState, t: int, joint: bool = False) -> keras.Model:
    """Task t as a plain Keras model (its original layer types, graph, neuron order,
    widths and input shape; batch norms folded) carrying its zipped weights.

    Args:
      joint: zero-pad the input to the joint input inside (an `InputPad` layer)
        and keep the padded kernel rows: the network as the zipper sees it.
    """
    chain = state.chains[t]
    inputs = keras.Input(state.domains[t], name="input")
    values = {-1: _pad(state, t, inputs) if joint else inputs}
    layer_index = chain.layer_index
    for i, step in enumerate(chain.steps):
        args = [values[p] for p in chain.wiring[i]]
        if not isinstance(step, WeightedStep):
            values[i] = _call(step.build(), args)
            continue
        l = layer_index[i]
        kernel, bias = state.kernels[t][l], state.biases[t][l]
        if state.sources[l] < 0 and not joint:
            kernel = crop_kernel(kernel, step, state.domains[t], chain.input_shape)
        values[i] = _plain_layer(step, kernel, bias)(args[0])
    return keras.Model(inputs, values[chain.output], name=f"{state.tasks[t]}_zipped")


def _plain_layer(step: WeightedStep, kernel, bias):
    cout = kernel.shape[-1]
    common = dict(activation=step.config.get("activation"), name=step.name)
    if step.kind == "conv":
        layer = keras.layers.Conv2D(cout, step.config["kernel_size"], step.config["strides"],
                                    step.config["padding"], **common)
        shape = (*step.config["kernel_size"], kernel.shape[1], cout)
    else:
        layer = keras.layers.Dense(cout, **common)
        shape = (kernel.shape[0] * kernel.shape[1], cout)
    layer.build((None, None, None, shape[-2]) if step.kind == "conv" else (None, shape[0]))
    layer.set_weights([kernel.reshape(shape).astype(np.float32), bias.astype(np.float32)])
    return layer


def member_model(model: keras.Model, t: int) -> keras.Model:
    """Task t of a multi-task model as a model holding only task t's blocks.

    The path from task t's input to its output is cloned with `ZippedLayer`s
    restricted to task t (`tasks=[t]`), so its trainable variables are exactly
    the blocks task t uses, named as in `model` (`<layer>/kernel_<g>_<h>`), with
    `model`'s values. Outputs equal `model`'s output t.
    """
    inputs = model.inputs[t] if len(model.inputs) > 1 else model.inputs[0]
    path = keras.Model(inputs, model.outputs[t])

    def restrict(layer):
        if isinstance(layer, ZippedLayer):
            return ZippedLayer.from_config({**layer.get_config(), "tasks": [t]})
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(path, clone_function=restrict)
    values = {v.path: v for v in model.weights}
    for v in clone.weights:
        v.assign(values[v.path])
    return clone
