"""Different input domains: a joint input at the larger size, zero weights for the smaller.

Tasks may differ in input channels (gray 28x28x1 vs RGB 28x28x3) or, for
networks that start with Flatten + Dense (LeNet-300-100), in spatial size
(28x28 vs 32x32). MTZ zips them over one joint input of the largest size
(TMC Sec. 3, "joint input layer at the larger size"): every task's input is
zero-padded to it (pixels centred, the extra pixel after; channels appended;
`mtz.layers.InputPad`), and the layers reading the input get zero kernel rows
for the padding, so each network computes the same function on its padded
input. Zipping then runs as usual; merged neurons of the smaller task get
weights on its padding, which only ever multiply zeros, so `crop_kernel`
drops them again for the task's plain model (`keras_build.task_model`).

Convolutional networks with different spatial sizes are refused: padding the
image changes a conv net's feature maps (and its flatten size), so no zero
rows make the padded network compute the original function.

    joint = joint_shape([chain_gray, chain_rgb], ["gray", "rgb"])   # (28, 28, 3)
    padded = pad_chain(chain_gray, joint)  # first conv: kernel [9, 3, cout], rows 1-2 zero

(`tests/test_mtz_extensions.py` zips gray with RGB and 28x28 with 32x32 networks.)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mtz.structure import Chain, WeightedStep


def offsets(size: int, target: int) -> tuple[int, int]:
    """(before, after) zero padding that centres `size` in `target` (extra one after)."""
    if size > target:
        raise ValueError(f"expected a size <= {target}, received {size}")
    before = (target - size) // 2
    return before, target - size - before


def _reads_input(chain: Chain):
    return [(l, s) for l, s in enumerate(chain.weighted) if chain.sources[l] < 0]


def joint_shape(chains: list[Chain], names: list[str]) -> tuple:
    """The joint input shape: the largest size per axis over the tasks' input shapes.

    Args:
      chains: parsed networks (`mtz.graph.parse_chain`); names: their task names.
    Returns:
      Shape tuple without the batch axis, e.g. (32, 32, 3).
    Raises:
      ValueError: ranks differ; spatial sizes differ and a layer reading the
        input is not a Dense after Flatten; channels differ and a layer reading
        the input sees it through a layer that would not keep zero channels zero.
    """
    shapes = [tuple(int(d) for d in c.input_shape) for c in chains]
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"expected inputs of one rank, received shapes "
                         f"{dict(zip(names, shapes))}")
    joint = tuple(int(max(d)) for d in zip(*shapes))
    for chain, name, shape in zip(chains, names, shapes):
        for _, step in _reads_input(chain):
            if shape[:-1] != joint[:-1] and step.input_view != "flat":
                raise ValueError(
                    f"network {name!r}: expected an input of spatial size {joint[:-1]} like "
                    f"the other tasks, received {shape[:-1]}; only networks that start with "
                    f"Flatten + Dense get a joint input at the larger size, and its layer "
                    f"{step.name!r} is a {step.kind} layer whose flatten size would differ")
            if shape[-1] != joint[-1] and step.input_view is None:
                raise ValueError(
                    f"network {name!r}: expected {joint[-1]} input channels like the other "
                    f"tasks, received {shape[-1]}; padding with zero channels needs layers "
                    f"that keep zeros at zero before {step.name!r}")
    return joint


def pad_chain(chain: Chain, joint: tuple) -> Chain:
    """`chain` on the joint input: zero kernel rows for the padded pixels and channels.

    A layer reading the input as "flat" (Flatten + Dense) has kernel
    [h*w, c, cout] viewed as [h, w, c, cout] and padded to [H, W, C, cout]
    (centred like the input); other layers reading the input get zero rows
    for channels c..C-1: [taps, c, cout] -> [taps, C, cout].
    """
    joint = tuple(joint)
    if tuple(chain.input_shape) == joint:
        return chain
    steps, weights = list(chain.steps), list(chain.weights)
    index = {k: i for i, k in chain.layer_index.items()}
    for l, step in _reads_input(chain):
        kernel, bias = weights[l]
        cin, cout = kernel.shape[1:]
        if step.input_view == "flat":
            grid = kernel.reshape(*chain.input_shape[:-1], cin, cout)
            pads = [offsets(s, t) for s, t in zip(chain.input_shape[:-1], joint[:-1])]
            taps = int(np.prod(joint[:-1]))
        else:
            grid, pads, taps = kernel, [(0, 0)], kernel.shape[0]
        grid = np.pad(grid, pads + [(0, joint[-1] - cin), (0, 0)])
        weights[l] = (grid.reshape(taps, joint[-1], cout), bias)
        steps[index[l]] = dataclasses.replace(step, taps=taps, in_channels=joint[-1])
    return dataclasses.replace(chain, input_shape=joint, steps=tuple(steps),
                               weights=tuple(weights))


def crop_kernel(kernel: np.ndarray, step: WeightedStep, shape: tuple, joint: tuple):
    """Inverse of `pad_chain` for one layer reading the input: the rows of the
    task's own inputs of a joint kernel [taps_joint, C, cout] -> [taps, c, cout]."""
    shape, joint = tuple(shape), tuple(joint)
    if shape == joint:
        return kernel
    if step.input_view != "flat":
        return kernel[:, :shape[-1]]
    grid = kernel.reshape(*joint[:-1], joint[-1], kernel.shape[-1])
    window = tuple(slice(offsets(s, t)[0], offsets(s, t)[0] + s)
                   for s, t in zip(shape[:-1], joint[:-1]))
    grid = grid[window + (slice(0, shape[-1]),)]
    return grid.reshape(int(np.prod(shape[:-1])), shape[-1], kernel.shape[-1])
