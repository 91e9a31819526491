"""In-memory execution of virtualized networks: one page pool, one page table each.

All networks' weights live in ONE `tf.Variable`, `page_pool` [m, P]. Network n
reads its weights through its page table t_n [n_pages] (Lee & Nirjon 2020, §4):

    flat_n = reshape(gather(page_pool, t_n), [-1])
    W_n,i  = reshape(flat_n[o_i : o_i + s_i], shape_i)       (pages.PageLayout)

and runs its Keras model functionally on those values,
`model.stateless_call(W_n, [], x, training=False)`, inside `tf.function`.
Switching network is a page-table change: the active name (hence table) changes,
no weight is copied; every pool update is seen by every network at once.

The Keras models are architecture skeletons built fresh (never the caller's
objects); their own variables are never read.

Example:
    >>> rt = VirtualizedNetworks.load("runs/pool")     # see nwv.state
    >>> rt.switch("mnist"); logits = rt(x)              # x: [batch, 28, 28, 1]
    >>> both = rt.run_all({"mnist": x, "cifar10": x2})  # one tf.function call
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from nwv import pages, skeletons, state

__all__ = ["VirtualizedNetworks", "check_supported", "check_model"]


def check_supported(model: keras.Model) -> None:
    """Raises ValueError when a layer holds non-trainable state NWV does not page.

    Pages hold trainable variables only, so BatchNormalization statistics, RNG
    seeds (Dropout) or other non-trainable variables would be lost; such a
    model fails here, naming the layer.
    """
    for layer in model.layers:
        if layer.non_trainable_variables:
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) of model {model.name!r} holds "
                f"non-trainable variables {[v.path for v in layer.non_trainable_variables]};"
                f" NWV pages trainable variables only (expected layers such as Conv2D, "
                f"Dense, pooling, activations)")
    if not model.trainable_variables:
        raise ValueError(f"model {model.name!r} has no trainable variables to page")


def check_model(record: state.NetworkRecord, model: keras.Model,
                where: str = state.MANIFEST) -> None:
    """Raises ValueError when the model's trainable variables disagree with the record."""
    shapes = tuple(tuple(int(d) for d in v.shape) for v in model.trainable_variables)
    if shapes != tuple(record.variable_shapes):
        raise ValueError(f"{where}: network {record.name!r} expects variable shapes "
                         f"{list(record.variable_shapes)}, model {model.name!r} built from "
                         f"{record.model!r} has {list(shapes)}")


@dataclasses.dataclass(frozen=True)
class _Network:
    model: keras.Model
    table: tf.Tensor           # [n_pages] int32
    layout: pages.PageLayout
    task: str | None
    outputs: tuple | None = None   # a multi-output group: the names of its outputs


class VirtualizedNetworks:
    """Several networks executed from one shared page pool.

    Args:
      pool: [m, P] float32 initial pool values.
      networks: name -> (skeleton keras.Model, page_table [n_pages] ints), or
        name -> (model, page_table, task[, aligned[, outputs]]); the model's
        trainable variables give the shapes (their values are ignored).
        `aligned`: the table uses a page-aligned layout (zipped members);
        `outputs`: for a multi-output group network (a whole zipped model),
        the network names of its outputs, so `run_all` computes them at once.
      pool_dir: the pool directory it came from (needed by `load_from_disk`).

    Raises:
      ValueError: a table that does not fit the model's weights or the pool, an
        unsupported layer, an empty set of networks.
    """

    def __init__(self, pool, networks: Mapping, pool_dir: str | None = None):
        pool = np.asarray(pool, np.float32)
        if pool.ndim != 2 or not np.all(np.isfinite(pool)):
            raise ValueError(f"expected a finite pool of shape [m, P], received {pool.shape}")
        if not networks:
            raise ValueError("expected at least one network, received none")
        self.page_size = int(pool.shape[1])
        self.pool_dir = pool_dir
        with tf.distribute.get_strategy().scope():
            self.page_pool = tf.Variable(pool, name="page_pool")
        self._nets = {}
        for name, spec in networks.items():
            model, table, task, aligned, outputs = (tuple(spec) + (None,) * 3)[:5]
            check_supported(model)
            layout = pages.PageLayout.from_shapes(
                [v.shape for v in model.trainable_variables], self.page_size, bool(aligned))
            table = np.asarray(table)
            state._check_table(table, layout.n_pages, pool.shape[0], f"network {name!r}")
            self._nets[name] = _Network(
                model, tf.constant(table, tf.int32, name=f"page_table_{name}"), layout, task,
                tuple(outputs) if outputs else None)
        self._active = next(iter(self._nets))
        self._run_fns = {}
        self._run_all_fns = {}

    # --- construction from disk ---------------------------------------------
    @classmethod
    def from_state(cls, pool_state: state.PoolDirState, pool_dir: str | None = None):
        """Builds every network of a `PoolDirState` (registry models or zipped members,
        see `nwv.skeletons`)."""
        nets, cache = {}, {}
        for name, record in pool_state.networks.items():
            model = skeletons.build_skeleton(record, pool_state.assets, cache)
            check_model(record, model, pool_dir or state.MANIFEST)
            nets[name] = (model, record.page_table, record.task, record.aligned,
                          record.model_overrides.get("outputs"))
        return cls(pool_state.pool, nets, pool_dir)

    @classmethod
    def load(cls, pool_dir: str, names=None) -> "VirtualizedNetworks":
        """Loads (and checks) a pool directory; `names` restricts the networks built."""
        return cls.from_state(state.load_state(pool_dir, names, with_fisher=False), pool_dir)

    # --- introspection -------------------------------------------------------
    @property
    def names(self) -> list:
        return list(self._nets)

    @property
    def task_names(self) -> list:
        """Networks with one output (every network but zipped groups): the ones that
        are trained, evaluated and switched to."""
        return [n for n, net in self._nets.items() if not net.outputs]

    @property
    def active(self) -> str:
        return self._active

    def task(self, name: str) -> str | None:
        return self._network(name).task

    def layout(self, name: str) -> pages.PageLayout:
        return self._network(name).layout

    def page_table(self, name: str) -> np.ndarray:
        return self._network(name).table.numpy()

    def model(self, name: str) -> keras.Model:
        """The network's skeleton model (its own variables are not its weights)."""
        return self._network(name).model

    def _network(self, name: str) -> _Network:
        if name not in self._nets:
            raise KeyError(f"no network {name!r}; expected one of {self.names}")
        return self._nets[name]

    # --- execution -------------------------------------------------------------
    def weight_tensors(self, name: str, pool=None) -> list:
        """The network's variables read from `pool` (default `page_pool`) through its
        table: list of tensors with the variable shapes (differentiable w.r.t. pool)."""
        net = self._network(name)
        pool = self.page_pool if pool is None else pool
        flat = tf.reshape(tf.gather(pool, net.table), [-1])
        layout = net.layout
        return [tf.reshape(flat[o:o + n], s)
                for o, n, s in zip(layout.offsets, layout.sizes, layout.shapes)]

    def forward(self, name: str, x, pool=None, training: bool = False):
        """Logits [batch, C] of network `name` on x [batch, *input_shape] (not compiled).

        A group whose skeleton has one input per task gets x for every input.
        """
        net = self._network(name)
        values = self.weight_tensors(name, pool)
        x = tf.cast(x, tf.float32)
        if len(net.model.inputs) > 1:
            x = [x] * len(net.model.inputs)
        logits, _ = net.model.stateless_call(values, [], x, training=training)
        return logits

    def switch(self, name: str) -> None:
        """Makes `name` the active network: a page-table change, no weight copy."""
        self._network(name)
        self._active = name

    def run(self, name: str, x):
        """Logits of network `name` (compiled `tf.function`, one trace per network)."""
        if name not in self._run_fns:
            self._network(name)
            self._run_fns[name] = tf.function(functools.partial(self.forward, name),
                                              reduce_retracing=True, autograph=False)
        return self._run_fns[name](x)

    def __call__(self, x):
        """Logits of the active network (see `switch`)."""
        return self.run(self._active, x)

    def groups(self) -> dict:
        """{group network: its output names} for multi-output (zipped) networks."""
        return {n: net.outputs for n, net in self._nets.items() if net.outputs}

    def _plan(self, inputs: Mapping) -> dict:
        """{network to run: [(output index or None, name)]}: names whose inputs are
        the same tensor and that one group computes come from one group call."""
        plan, left = {}, [n for n in inputs]
        for group, outputs in self.groups().items():
            wanted = [n for n in left if n in outputs]
            if len(wanted) > 1 and all(inputs[n] is inputs[wanted[0]] for n in wanted):
                plan[group] = [(outputs.index(n), n) for n in wanted]
                left = [n for n in left if n not in wanted]
        for name in left:
            plan[name] = [(None, name)]
        return plan

    def _run_all_impl(self, inputs, plan):
        out = {}
        for network, picks in plan.items():
            x = inputs[picks[0][1]]
            result = self.forward(network, x)
            for index, name in picks:
                out[name] = result if index is None else result[index]
        return out

    def run_all(self, inputs: Mapping) -> dict:
        """{name: logits} for {name: x}: several networks in ONE tf.function call.

        Names served by one zipped group (see `groups`) and given the SAME input
        object run as one multi-task pass: their shared layers are computed once.
        """
        for name in inputs:
            self._network(name)
        plan = self._plan(inputs)
        key = tuple((k, tuple(v)) for k, v in plan.items())
        if key not in self._run_all_fns:
            self._run_all_fns[key] = tf.function(
                functools.partial(self._run_all_impl, plan=plan), reduce_retracing=True,
                autograph=False)
        unique = {picks[0][1]: inputs[picks[0][1]] for picks in plan.values()}
        return self._run_all_fns[key](unique)

    # --- weights and the way back to Keras --------------------------------------
    def weights(self, name: str) -> list:
        """The network's current variables as numpy arrays (numpy gather of the pool)."""
        net = self._network(name)
        return pages.gather_weights(self.page_pool.numpy(), net.table.numpy(), net.layout)

    def to_keras(self, name: str) -> keras.Model:
        """A fresh plain Keras model holding the network's current weights."""
        model = keras.models.clone_model(self._network(name).model)
        _assign(model, self.weights(name))
        return model

    def pool_array(self) -> np.ndarray:
        """A copy of the pool [m, P]."""
        return self.page_pool.numpy().copy()

    def load_from_disk(self, name: str) -> keras.Model:
        """Benchmark baseline: reads this network's files (manifest, pool, table, with
        all checks) from `pool_dir` into a freshly built Keras model, as a device
        without virtualization would on every switch."""
        if self.pool_dir is None:
            raise ValueError("load_from_disk needs a pool directory: this runtime was "
                             "built in memory (save it with nwv.api first)")
        loaded = state.load_state(self.pool_dir, [name], with_fisher=False)
        record = loaded.networks[name]
        model = skeletons.build_skeleton(record, loaded.assets)
        check_model(record, model, self.pool_dir)
        _assign(model, pages.gather_weights(loaded.pool, record.page_table,
                                            record.layout(loaded.page_size)))
        return model


def _assign(model: keras.Model, values) -> None:
    for variable, value in zip(model.trainable_variables, values):
        variable.assign(value)
