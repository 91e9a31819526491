"""`ZippedLayer`: one Dense or Conv2D layer of several tasks, shared blocks stored once;
`InputPad`: a task's input zero-padded to the joint input (`mtz.domains`).

The layer's input and output channels are grouped by owner set (see
`mtz.state.ZipState.groups`). The kernel block from input group g to output
group h exists when some task owns both, and is one variable
`kernel_<g>_<h>` [taps, n_g, n_h] used by every task owning both: the merged
weights of shared neurons are stored once. Each task's kernel is the
concatenation of the blocks it owns, so a call is one matmul or conv per task.
"""
from __future__ import annotations

import keras
from keras import ops

from mtz.domains import offsets


@keras.saving.register_keras_serializable(package="mtz")
class ZippedLayer(keras.layers.Layer):
    """Multi-task Dense/Conv2D with block-shared weights.

    Args:
      kind: "dense" or "conv".
      taps: kernel positions per input channel (kh*kw, flattened spatial size, 1).
      in_groups, out_groups: lists of (owner task ids, channel count).
      num_tasks: number of tasks (inputs and outputs of `call`).
      kernel_size, strides, padding: convolution geometry (conv only).
      activation: Keras activation name applied to each task's output.
      tasks: the task ids this layer object will be called for (default: all);
        only blocks some of these tasks use are created, so a single task's
        model holds exactly its own weights (`mtz.keras_build.member_model`).

    Call: `layer(x, task=t)` with x holding the channels of the input groups
    task t owns, in group order; returns task t's output in its output group
    order. Each task's path is separate, so one task's sub-model needs only
    that task's input.
    """

    def __init__(self, kind, taps, in_groups, out_groups, *, num_tasks, kernel_size=None,
                 strides=(1, 1), padding="valid", activation=None, tasks=None, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("dense", "conv"):
            raise ValueError(f"expected kind 'dense' or 'conv', received {kind!r}")
        self.kind, self.taps, self.num_tasks = kind, int(taps), int(num_tasks)
        self.in_groups = [(tuple(sorted(o)), int(n)) for o, n in in_groups]
        self.out_groups = [(tuple(sorted(o)), int(n)) for o, n in out_groups]
        self.kernel_size = tuple(kernel_size) if kernel_size else None
        self.strides, self.padding = tuple(strides), padding
        self.activation = keras.activations.get(activation)
        self.tasks = None if tasks is None else sorted(int(t) for t in tasks)
        wanted = set(range(self.num_tasks) if tasks is None else self.tasks)
        if kind == "conv" and (self.kernel_size is None
                               or self.kernel_size[0] * self.kernel_size[1] != self.taps):
            raise ValueError(f"expected kernel_size with {taps} taps, received {kernel_size}")
        self.blocks, self.block_biases = {}, {}
        for g, (og, ng) in enumerate(self.in_groups):
            for h, (oh, nh) in enumerate(self.out_groups):
                if set(og) & set(oh) & wanted:
                    self.blocks[g, h] = self.add_weight(
                        shape=(self.taps, ng, nh), name=f"kernel_{g}_{h}",
                        initializer="glorot_uniform")
        for h, (oh, nh) in enumerate(self.out_groups):
            if set(oh) & wanted:
                self.block_biases[h] = self.add_weight(shape=(nh,), name=f"bias_{h}",
                                                       initializer="zeros")

    def owners(self) -> dict:
        """{variable path: frozenset of the task ids using it}, for every block.

        Returns:
          Dict over this layer's kernel blocks and bias blocks.
        """
        found = {}
        for (g, h), var in self.blocks.items():
            found[var.path] = frozenset(self.in_groups[g][0]) & frozenset(self.out_groups[h][0])
        for h, var in self.block_biases.items():
            found[var.path] = frozenset(self.out_groups[h][0])
        return found

    def task_kernel(self, t: int):
        """Task t's full kernel [taps, cin_t, cout_t] assembled from its blocks."""
        rows = []
        for g, (og, _) in enumerate(self.in_groups):
            if t not in og:
                continue
            cols = [self.blocks[g, h] for h, (oh, _) in enumerate(self.out_groups) if t in oh]
            rows.append(ops.concatenate(cols, axis=2))
        return ops.concatenate(rows, axis=1)

    def task_bias(self, t: int):
        return ops.concatenate([self.block_biases[h] for h, (oh, _) in
                                enumerate(self.out_groups) if t in oh], axis=0)

    def call_task(self, t: int, x):
        kernel = self.task_kernel(t)
        if self.kind == "conv":
            kh, kw = self.kernel_size
            kernel = ops.reshape(kernel, (kh, kw, kernel.shape[1], kernel.shape[2]))
            y = ops.conv(x, kernel, strides=self.strides, padding=self.padding)
        else:
            kernel = ops.reshape(kernel, (-1, kernel.shape[2]))
            y = ops.matmul(x, kernel)
        return self.activation(y + self.task_bias(t))

    def call(self, x, task=0):
        return self.call_task(task, x)

    def compute_output_spec(self, x, task=0):
        cout = sum(n for o, n in self.out_groups if task in o)
        if self.kind == "conv":
            return keras.KerasTensor(self._conv_shape(x.shape, cout), x.dtype)
        return keras.KerasTensor((*x.shape[:-1], cout), x.dtype)

    def _conv_shape(self, shape, cout):
        dims = []
        for size, k, s in zip(shape[1:3], self.kernel_size, self.strides):
            if size is None:
                dims.append(None)
            elif self.padding == "same":
                dims.append(-(-size // s))
            else:
                dims.append((size - k) // s + 1)
        return (shape[0], *dims, cout)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, taps=self.taps, in_groups=self.in_groups,
                      out_groups=self.out_groups, num_tasks=self.num_tasks,
                      kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding,
                      activation=keras.activations.serialize(self.activation),
                      tasks=self.tasks)
        return config


@keras.saving.register_keras_serializable(package="mtz")
class InputPad(keras.layers.Layer):
    """Zero-pads a task's input to the joint input (TMC: "joint input layer at the
    larger size"): spatial axes centred (the extra pixel after), channels appended.

        >>> tuple(InputPad((32, 32, 3))(keras.ops.ones((1, 28, 28, 1))).shape)
        (1, 32, 32, 3)

    Args:
      target_shape: the joint shape without batch axis, e.g. (32, 32, 3).

    Call: x [N, *shape] with shape <= target_shape on every axis ->
    [N, *target_shape]; x is in the middle, channels 0..c-1, zeros elsewhere.
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        shape = tuple(target_shape or ())
        if not shape or not all(int(d) == d and d >= 1 for d in shape):
            raise ValueError(f"expected a target shape of positive sizes, received "
                             f"{target_shape!r}")
        self.target_shape = tuple(int(d) for d in shape)

    def _pads(self, shape):
        shape = tuple(shape[1:])
        if len(shape) != len(self.target_shape) or any(
                s is None or s > d for s, d in zip(shape, self.target_shape)):
            raise ValueError(f"expected inputs of shape at most {self.target_shape}, "
                             f"received {shape}")
        spatial = [offsets(s, d) for s, d in zip(shape[:-1], self.target_shape[:-1])]
        return [(0, 0)] + spatial + [(0, self.target_shape[-1] - shape[-1])]

    def call(self, x):
        pads = self._pads(x.shape)
        if any(p != (0, 0) for p in pads[:-1]):
            x = ops.pad(x, pads[:-1] + [(0, 0)])
        extra = pads[-1][1]
        if not extra:
            return x
        # Channels by concatenating zeros, not a PAD: TensorFlow 2.21's oneDNN graph
        # rewrite fuses a PAD into the CONV_2D that reads it as if it padded space only
        # ("input depth must be evenly divisible by filter depth" inside tf.function on
        # CPUs where oneDNN is on), and the concatenation is the same numbers.
        zeros = ops.repeat(ops.zeros_like(x[..., :1]), extra, axis=-1)
        return ops.concatenate([x, zeros], axis=-1)

    def compute_output_shape(self, input_shape):
        self._pads(input_shape)
        return (input_shape[0], *self.target_shape)

    def get_config(self):
        config = super().get_config()
        config.update(target_shape=self.target_shape)
        return config
