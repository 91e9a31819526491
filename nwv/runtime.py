"""In-memory execution of virtualized networks: one page pool, one page table each.

All networks' weights live in ONE `tf.Variable`, `page_pool` [m, P]. Network n
reads its weights through its page table t_n [n_pages] (Lee & Nirjon 2020, §4):

    flat_n = reshape(gather(page_pool, t_n), [-1])
    W_n,i  = reshape(flat_n[o_i : o_i + s_i], shape_i)       (pages.PageLayout)

and runs its Keras model functionally on those values,
`model.stateless_call(W_n, [], x, training=False)`, inside `tf.function`.
Switching network is a page-table change: the active name (hence table) changes,
no weight is copied; every pool update is seen by every network at once.

The Keras models are architecture skeletons (never the caller's objects); their
own variables are never read. In memory and on disk are one thing: a runtime
built in memory (`nwv.virtualize`) is saved as a pool directory with `save`,
and `load` reads one back (see `nwv.state`).

Storage: `storage="float32"` keeps the pool as it is trained; `storage="int8"`
keeps int8 codes [m, P] and one scale per page instead (`nwv.quantize`, ÷4 in
memory) and dequantizes each network's pages after the gather. Each page's
scale is, by default (`int8_scales="fisher"`), the grid point of least
rounding error weighted by the summed Fisher of the networks reading it
(`nwv.quantize.page_scales`; `load` reads the Fisher for it, and pages no
network's Fisher covers get the max |w| scale); `int8_scales="max"` always
takes the max |w| one. With
`float_pages=k` the k pages whose int8 rounding costs most (Fisher-weighted,
`nwv.quantize.choose_float_pages`) stay float32 beside the int8 ones
(`page_slots`, `float_rows`), read exactly.
`fake_quant=True` runs float pools through the int8 rounding (with a
straight-through gradient), for quantisation-aware joint optimisation.

RAM budget (`load(..., resident_bytes=B)`, `nwv.resident`): only the pages that
fit B stay in memory (shared and Fisher-dense pages first) together with a swap
buffer; switching to a network reads its other pages from the pool file into
the buffer, with no model rebuild. Its logits are those of the all-in-memory
runtime. Such a runtime executes and switches; it is not trained or exported.
Zipped groups (which read every member's pages) are left out of it: their
members run one at a time, so the budget's floor is the largest member.

    rt = VirtualizedNetworks.load("runs/pool")
    rt.switch("mnist"); logits = rt(x)                  # x: [batch, 28, 28, 1]
    both = rt.run_all({"mnist": x, "cifar10": x2})      # one tf.function call
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from models import layer_support
from nwv import locking, pages, quantize, resident, skeletons, state

__all__ = ["NetworkSpec", "VirtualizedNetworks", "check_supported", "check_model"]


def check_supported(model: keras.Model) -> None:
    """Raises ValueError when a layer holds state NWV does not page (`models.layer_support`).

    Pages hold trainable variables only, so BatchNormalization statistics, RNG
    seeds (Dropout) or other non-trainable variables would be lost; such a
    model fails here, naming the layer and what to do.

    Args:
      model: a Keras model.
    Raises:
      ValueError: naming the first unsupported layer, or a model without weights.
    """
    for layer in model.layers:
        role, hint = layer_support.nwv_role(layer)
        if role is None:
            held = [v.path for v in layer.non_trainable_variables]
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) of model {model.name!r} "
                f"holds non-trainable variables {held}; NWV pages trainable variables "
                f"only: {hint}")
    if not model.trainable_variables:
        raise ValueError(f"model {model.name!r} has no trainable variables to page")


def check_model(record: state.NetworkRecord, model: keras.Model,
                where: str = state.MANIFEST) -> None:
    """Raises ValueError when the model's trainable variables disagree with the record.

    Args:
      record: the network's record; model: its skeleton; where: what to name.
    """
    shapes = tuple(tuple(int(d) for d in v.shape) for v in model.trainable_variables)
    if shapes != tuple(record.variable_shapes):
        raise ValueError(f"{where}: network {record.name!r} expects variable shapes "
                         f"{list(record.variable_shapes)}, model {model.name!r} built from "
                         f"{record.model!r} has {list(shapes)}")


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkSpec:
    """One network of a `VirtualizedNetworks`.

    Attributes:
      model: the skeleton Keras model (its variables give the shapes; their
        values are never used).
      page_table: [n_pages] ints, the pool page of each of its pages.
      task: the registered task it serves (None: unknown; a group: its first
        output's task).
      aligned: the table uses a page-aligned layout (zipped members).
      outputs: for a multi-output group (a whole zipped model), the network names
        of its outputs, so `run_all` computes them in one pass.
      fisher: [n_pages, P] diagonal Fisher in page layout, or None.
      fisher_source: how the Fisher was obtained.
      teacher: the network before matching (a Keras model with its original
        weights) for distillation, or None.
      registered: (model name, builder overrides) when the skeleton is a
        registered model; otherwise its architecture is saved as Keras JSON.
    """

    model: keras.Model
    page_table: np.ndarray
    _: dataclasses.KW_ONLY
    task: str | None = None
    aligned: bool = False
    outputs: tuple | None = None
    fisher: np.ndarray | None = None
    fisher_source: str = "unknown"
    teacher: keras.Model | None = None
    registered: tuple | None = None


@dataclasses.dataclass(frozen=True)
class _Network:
    spec: NetworkSpec
    table: tf.Tensor           # [n_pages] int32
    layout: pages.PageLayout


STORAGES = ("float32", "int8")
INT8_SCALES = ("fisher", "max")


class VirtualizedNetworks:
    """Several networks executed from one shared page pool.

    Args:
      pool: [m, P] float32 initial pool values.
      networks: {name: NetworkSpec}, in order (the first is active).
      pool_dir: the pool directory it came from or was saved to, if any.
      storage: "float32" (`page_pool`, trainable) or "int8" (`page_codes` and
        `page_scales`, dequantized after the gather; not trainable).
      fake_quant: run a float32 pool through int8 rounding (straight-through).
      float_pages: int8 storage: keep this many pages float32, those with the
        largest Fisher-weighted rounding error (needs the specs' Fisher).
      int8_scales: "fisher" (least Fisher-weighted rounding error, the specs'
        Fisher summed per page; max |w| where none) or "max" (max |w| / 127): the
        int8 storage's and fake quantisation's page scales (`nwv.quantize`).
      paging: (ResidentPlan, PageReader, int8 scales of every pool page or None)
        of a RAM budget: `pool` then holds the resident pages and the swap
        buffer, and the specs' tables are slots (built by
        `load(..., resident_bytes=B)`).

    Raises:
      ValueError: a table that does not fit the model's weights or the pool, an
        unsupported layer, an empty set of networks, a non-finite pool, an
        unknown storage or int8_scales, float pages without int8 storage or
        without Fisher.
    """

    def __init__(self, pool, networks: Mapping[str, NetworkSpec], *,
                 pool_dir: str | None = None, storage: str = "float32",
                 fake_quant: bool = False, float_pages: int = 0,
                 int8_scales: str = "fisher", paging=None):
        pool = np.asarray(pool, np.float32)
        if pool.ndim != 2 or not np.all(np.isfinite(pool)):
            raise ValueError(f"expected a finite pool of shape [m, P], received {pool.shape}")
        if not networks:
            raise ValueError("expected at least one network, received none")
        if storage not in STORAGES:
            raise ValueError(f"expected storage in {list(STORAGES)}, received {storage!r}")
        if int8_scales not in INT8_SCALES:
            raise ValueError(f"expected int8_scales in {list(INT8_SCALES)}, received "
                             f"{int8_scales!r}")
        float_pages = int(float_pages)
        if float_pages and (storage != "int8" or paging is not None):
            raise ValueError(f"float_pages={float_pages} needs storage='int8' and no RAM "
                             f"budget (resident_bytes), received storage={storage!r}")
        self.page_size = int(pool.shape[1])
        self.pool_dir = pool_dir
        self.storage, self.fake_quant = storage, bool(fake_quant)
        self.int8_scales = int8_scales
        self._fisher_tensor = None  # [m, P] page Fisher for fake quantisation (lazy)
        self.page_slots = self.float_rows = None
        self._nets = {}
        for name, spec in networks.items():
            if not isinstance(spec, NetworkSpec):
                raise ValueError(f"network {name!r}: expected a NetworkSpec(model, "
                                 f"page_table, ...), received {type(spec).__name__}")
            state.check_name(name)
            check_supported(spec.model)
            layout = pages.PageLayout.from_shapes(
                [v.shape for v in spec.model.trainable_variables], self.page_size,
                spec.aligned)
            table = np.asarray(spec.page_table)
            state.check_table(table, layout.n_pages, pool.shape[0], f"network {name!r}")
            if spec.fisher is not None and np.shape(spec.fisher) != (layout.n_pages,
                                                                      self.page_size):
                raise ValueError(f"network {name!r}: expected Fisher pages of shape "
                                 f"{(layout.n_pages, self.page_size)}, received "
                                 f"{np.shape(spec.fisher)}")
            self._nets[name] = _Network(
                spec, tf.constant(table, tf.int32, name=f"page_table_{name}"), layout)
        self._plan, self._reader, self._swap_scales = paging if paging else (None, None, None)
        with tf.distribute.get_strategy().scope():
            if storage == "int8":
                if paging:     # resident pages: the all-in-memory scales; the swap buffer 1
                    scales = np.ones(pool.shape[0], np.float32)
                    scales[:len(self._plan.resident)] = self._swap_scales[self._plan.resident]
                    codes, slots, rows = quantize.encode(pool, scales), None, None
                else:
                    codes, scales, slots, rows = self.quantize_pool(pool, float_pages)
                self.page_pool = None
                self.page_codes = tf.Variable(codes, name="page_codes", trainable=False)
                self.page_scales = tf.Variable(scales, name="page_scales", trainable=False)
                if float_pages:
                    self.page_slots = tf.Variable(slots, name="page_slots", trainable=False)
                    self.float_rows = tf.Variable(rows, name="float_rows", trainable=False)
            else:
                self.page_pool = tf.Variable(pool, name="page_pool")
        self._active = next(iter(self._nets))
        self._run_fns = {}
        self._run_all_fns = {}
        self._origins = {}          # records read from disk: parts left unloaded there
        self._groups_left_out = []  # zipped groups dropped under a RAM budget
        self._buffer_owner = None

    # --- construction from and to disk ------------------------------------------
    @classmethod
    def from_state(cls, pool_state: state.PoolDirState, *, pool_dir: str | None = None,
                   storage: str = "float32", float_pages: int = 0,
                   int8_scales: str = "fisher",
                   resident_bytes: int | None = None) -> "VirtualizedNetworks":
        """Builds every network of a `PoolDirState` (registry models or JSON assets).

        Args:
          pool_state: the pool and its records (Fisher and teachers when loaded).
          pool_dir: the directory it was read from, if any.
          storage: "float32" or "int8" (see the class).
          float_pages: int8 storage: pages kept float32 (see the class).
          int8_scales: "fisher" or "max" (see the class; "fisher" uses the records'
            Fisher, so a state read without it gets max |w| scales).
          resident_bytes: a RAM budget for the pool (needs `pool_dir`; see the module).
        Returns:
          The runtime.
        Raises:
          ValueError: an architecture that does not match its record.
        """
        nets, cache = {}, {}
        for name, record in pool_state.networks.items():
            model = skeletons.build_skeleton(record, pool_state.assets, cache)
            check_model(record, model, pool_dir or state.MANIFEST)
            nets[name] = NetworkSpec(
                model, record.page_table, task=record.task, aligned=record.aligned,
                outputs=record.outputs, fisher=record.fisher,
                fisher_source=record.fisher_source,
                teacher=skeletons.build_teacher(record, pool_state.assets, model),
                registered=(None if record.asset else
                            (record.model, dict(record.model_overrides))))
        pool, paging, groups = pool_state.pool, None, []
        if resident_bytes is not None and resident_bytes < _pool_bytes(pool, storage):
            # a zipped group reads every member's pages: under a budget its members
            # run one at a time (run_all too), so the budget is the largest member's
            groups = [n for n, spec in nets.items() if spec.outputs]
            nets = {n: spec for n, spec in nets.items() if not spec.outputs}
            pool, nets, paging = _paged(pool_state, nets, pool_dir, storage, resident_bytes,
                                        int8_scales)
        runtime = cls(pool, nets, pool_dir=pool_dir, storage=storage,
                      float_pages=float_pages, int8_scales=int8_scales, paging=paging)
        runtime._groups_left_out = groups
        runtime._origins = {n: r for n, r in pool_state.networks.items() if r.source_dir}
        return runtime

    @classmethod
    def load(cls, pool_dir: str, names=None, *, for_training: bool = False,
             storage: str = "float32", float_pages: int = 0, int8_scales: str = "fisher",
             resident_bytes: int | None = None) -> "VirtualizedNetworks":
        """Loads (and checks) a pool directory.

        Args:
          pool_dir: the pool directory (`nwv.state`).
          names: networks to build (default: all).
          for_training: also read the Fisher and the teachers (joint optimisation).
          storage: "float32" or "int8" (quantized on load, `nwv.quantize`).
          float_pages: int8 storage: keep this many pages float32, chosen by the
            Fisher-weighted rounding error for the networks loaded (`nwv.quantize`).
          int8_scales: int8 storage: "fisher" (the default; the Fisher is read for
            it) or "max" page scales (see the class).
          resident_bytes: keep at most this many bytes of pages in memory (two-level
            pages, `nwv.resident`); None or at least the pool: all of it.
        Returns:
          The runtime, remembering `pool_dir`.
        Raises:
          FileNotFoundError / ValueError / KeyError: see `nwv.state.load_state`.
        """
        loaded = state.load_state(pool_dir, names,
                                  with_fisher=(for_training or bool(float_pages)
                                               or resident_bytes is not None
                                               or (storage == "int8"
                                                   and int8_scales == "fisher")),
                                  with_teachers=for_training)
        return cls.from_state(loaded, pool_dir=pool_dir, storage=storage,
                              float_pages=float_pages, int8_scales=int8_scales,
                              resident_bytes=resident_bytes)

    def to_state(self) -> state.PoolDirState:
        """The runtime as a `PoolDirState` (current pool values, tables, Fisher, teachers).

        A skeleton that is not a registered model is stored as Keras JSON; a teacher
        whose architecture differs from its network's gets its own JSON asset.
        """
        self._refuse_paged("saved")
        assets, networks = {}, {}
        for name, net in self._nets.items():
            spec = net.spec
            record = state.NetworkRecord(
                name=name, task=spec.task, model=spec.model.name,
                variable_names=tuple(v.path for v in spec.model.trainable_variables),
                variable_shapes=net.layout.shapes, page_table=np.asarray(spec.page_table),
                fisher=spec.fisher, fisher_source=spec.fisher_source, aligned=spec.aligned,
                outputs=spec.outputs)
            if spec.registered:
                record.model, record.model_overrides = spec.registered[0], dict(
                    spec.registered[1])
            else:
                record.asset = f"{name}.json"
                assets[record.asset] = spec.model.to_json().encode()
            if spec.teacher is not None:
                record.teacher = skeletons.flat_weights(spec.teacher)
                if not _same_architecture(spec.teacher, spec.model):
                    record.teacher_asset = f"{name}.teacher.json"
                    assets[record.teacher_asset] = spec.teacher.to_json().encode()
            origin = self._origins.get(name)
            if origin is not None:       # what was not loaded is read from disk on save
                record.source_dir = origin.source_dir
                record.unloaded = frozenset(
                    {"undo"} | ({"fisher"} if spec.fisher is None and "fisher" in
                                origin.unloaded else set())
                    | ({"teacher"} if spec.teacher is None and "teacher" in origin.unloaded
                       else set()))
            networks[name] = record
        return state.PoolDirState(self.page_size, self.pool_array(), networks, assets)

    def save(self, pool_dir: str, *, wait=False) -> dict:
        """Writes the runtime as a pool directory (atomically, `nwv.state.save_state`).

        Args:
          pool_dir: destination (created; an existing pool there is replaced).
          wait: if another process writes there: False fails at once, True waits.
        Returns:
          The manifest written.
        Raises:
          ValueError: a network name unusable as a file name, non-finite values.
          PoolBusyError: another process writes the pool.
        """
        with locking.writer(pool_dir, wait=wait):
            manifest = state.save_state(pool_dir, self.to_state())
        self.pool_dir = pool_dir
        return manifest

    # --- introspection -------------------------------------------------------
    @property
    def names(self) -> list:
        """Every network, groups included, in order."""
        return list(self._nets)

    @property
    def task_names(self) -> list:
        """Networks with one output (every network but zipped groups): the ones that
        are trained, evaluated and switched to."""
        return [n for n, net in self._nets.items() if not net.spec.outputs]

    @property
    def active(self) -> str:
        """The network `__call__` runs."""
        return self._active

    def spec(self, name: str) -> NetworkSpec:
        """The network's `NetworkSpec` (skeleton, table, task, Fisher, teacher)."""
        return self._network(name).spec

    def task(self, name: str) -> str | None:
        """The task the network serves."""
        return self._network(name).spec.task

    def layout(self, name: str) -> pages.PageLayout:
        """The network's `PageLayout`."""
        return self._network(name).layout

    def page_table(self, name: str) -> np.ndarray:
        """The network's page table [n_pages] int32."""
        return self._network(name).table.numpy()

    def model(self, name: str) -> keras.Model:
        """The network's skeleton model (its own variables are not its weights)."""
        return self._network(name).spec.model

    def _network(self, name: str) -> _Network:
        if name not in self._nets:
            if name in self._groups_left_out:
                raise KeyError(f"zipped group {name!r} is not available under a RAM budget "
                               f"(resident_bytes); run its members, or load without one")
            raise KeyError(f"no network {name!r}; expected one of {self.names}")
        return self._nets[name]

    # --- execution -------------------------------------------------------------
    def read_pages(self, table, pool=None):
        """Pool pages [n, P] float32 for a table [n]: gathered (then dequantized for
        int8 storage, or fake-quantized), differentiable w.r.t. a float pool."""
        if pool is None and self.storage == "int8":
            codes = tf.gather(self.page_codes, table)
            rows = tf.cast(codes, tf.float32) * tf.gather(self.page_scales, table)[:, None]
            if self.float_rows is None:
                return rows
            slots = tf.cast(tf.gather(self.page_slots, table), tf.int32)
            return rows + tf.gather(self.float_rows, slots)
        gathered = tf.gather(self.page_pool if pool is None else pool, table)
        if not self.fake_quant:
            return gathered
        fisher = self._fisher_for_fake_quant()
        return quantize.fake_quantize(
            gathered, None if fisher is None else tf.gather(fisher, table))

    def weight_tensors(self, name: str, pool=None) -> list:
        """The network's variables read from `pool` (default: the runtime's storage)
        through its table: tensors with the variable shapes (differentiable w.r.t. pool)."""
        net = self._network(name)
        flat = tf.reshape(self.read_pages(net.table, pool), [-1])
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
        if len(net.spec.model.inputs) > 1:
            x = [x] * len(net.spec.model.inputs)
        logits, _ = net.spec.model.stateless_call(values, [], x, training=training)
        return logits

    def check_input(self, name: str, x) -> None:
        """Raises ValueError unless x is a batch of the network's input shape.

        Args:
          name: the network; x: the batch (array or tensor).
        """
        expected = tuple(self._network(name).spec.model.inputs[0].shape[1:])
        shape = tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))
        if len(shape) != len(expected) + 1 or shape[1:] != expected:
            raise ValueError(f"network {name!r} expects inputs of shape [batch, "
                             f"{', '.join(str(d) for d in expected)}], received "
                             f"{list(shape)}")

    def switch(self, name: str) -> None:
        """Makes `name` the active network: a page-table change, no weight copy
        (under a RAM budget: its non-resident pages are read into the swap buffer)."""
        self._network(name)
        self._swap_in(name)
        self._active = name

    @property
    def resident_plan(self):
        """The `nwv.resident.ResidentPlan` of a RAM budget, or None."""
        return self._plan

    def _swap_in(self, name: str) -> None:
        if self._plan is None or self._buffer_owner == name:
            return
        pages_ = self._plan.swapped.get(name)
        if pages_ is not None and pages_.size:
            values = self._reader.read(pages_)
            start = len(self._plan.resident)
            if self.storage == "int8":
                scales = self._swap_scales[pages_]
                codes = quantize.encode(values, scales)
                self.page_codes[start:start + len(pages_)].assign(codes)
                self.page_scales[start:start + len(pages_)].assign(scales)
            else:
                self.page_pool[start:start + len(pages_)].assign(values)
        self._buffer_owner = name

    def _refuse_paged(self, what: str) -> None:
        if self._plan is not None:
            raise ValueError(f"a runtime under a RAM budget (resident_bytes) cannot be "
                             f"{what}; load the pool without resident_bytes")

    def set_fake_quant(self, enabled: bool) -> None:
        """Runs a float32 pool through int8 rounding (straight-through) or not; the
        compiled `run`/`run_all` functions are dropped so the next call uses it.

        Raises:
          ValueError: enabling it on an int8 runtime (already int8).
        """
        if enabled and self.storage != "float32":
            raise ValueError("fake quantisation rounds a float32 pool; this runtime already "
                             f"stores {self.storage} pages")
        self.fake_quant = bool(enabled)
        self._run_fns.clear()
        self._run_all_fns.clear()

    def run(self, name: str, x):
        """Logits of network `name` (compiled `tf.function`, one trace per network).

        Raises:
          KeyError: an unknown network; ValueError: x of the wrong shape.
        """
        self.check_input(name, x)
        self._swap_in(name)
        if name not in self._run_fns:
            self._run_fns[name] = tf.function(functools.partial(self.forward, name),
                                              reduce_retracing=True, autograph=False)
        return self._run_fns[name](x)

    def __call__(self, x):
        """Logits of the active network (see `switch`)."""
        return self.run(self._active, x)

    def groups(self) -> dict:
        """{group network: its output names} for multi-output (zipped) networks."""
        return {n: net.spec.outputs for n, net in self._nets.items() if net.spec.outputs}

    def _execution_plan(self, inputs: Mapping) -> dict:
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

        Raises:
          KeyError: an unknown network; ValueError: an input of the wrong shape.
        """
        for name, x in inputs.items():
            self.check_input(name, x)
        if self._plan is not None:          # one swap buffer: one network at a time
            return {name: self.run(name, x) for name, x in inputs.items()}
        plan = self._execution_plan(inputs)
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
        self._swap_in(name)
        pool = self.pool_array()
        if self.fake_quant:
            pool = quantize.dequantize_pages(*quantize.quantize_pages(pool,
                                                                      self._scale_fisher()))
        return pages.gather_weights(pool, net.table.numpy(), net.layout)

    def to_keras(self, name: str) -> keras.Model:
        """A fresh plain Keras model holding the network's current weights."""
        model = keras.models.clone_model(self._network(name).spec.model)
        for variable, value in zip(model.trainable_variables, self.weights(name)):
            variable.assign(value)
        return model

    def pool_array(self) -> np.ndarray:
        """A copy of the pool [m, P] float32 (int8 storage: its dequantized values,
        float pages exact)."""
        if self.storage == "int8":
            if self.float_rows is not None:
                return quantize.dequantize_mixed(
                    self.page_codes.numpy(), self.page_scales.numpy(),
                    self.page_slots.numpy(), self.float_rows.numpy())
            return quantize.dequantize_pages(self.page_codes.numpy(), self.page_scales.numpy())
        return self.page_pool.numpy().copy()

    def stored_bytes(self) -> int:
        """Bytes of the pool in memory: 4 per weight (float32), or 1 per weight and 4 per
        page (int8; float pages add a slot byte a page and 4 per weight of their
        rows, the zero row included); under a RAM budget, the resident pages and the
        swap buffer."""
        if self.storage == "int8":
            extra = 0 if self.float_rows is None else (
                self.page_slots.shape[0] + 4 * self.float_rows.shape.num_elements())
            return int(self.page_codes.shape.num_elements() + 4 * self.page_scales.shape[0]
                       + extra)
        return int(4 * self.page_pool.shape.num_elements())

    @property
    def float_pages(self) -> np.ndarray:
        """Indices of the pages kept float32 beside int8 ones (empty if none)."""
        if self.float_rows is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.page_slots.numpy())

    def choose_float_pages(self, pool, count: int) -> np.ndarray:
        """The `count` pages of `pool` [m, P] to keep float32 beside int8 ones: the
        largest Fisher-weighted rounding error for these networks, with the
        runtime's int8 scales (`nwv.quantize.choose_float_pages`, `page_fisher`).

        Raises:
          ValueError: count > 0 and no network has a Fisher.
        """
        if not count:
            return np.zeros(0, np.int64)
        fisher = self.page_fisher(np.shape(pool)[0])
        if fisher is None:
            raise ValueError("float_pages are chosen by the networks' Fisher, and no network "
                             "has one (load the pool with float_pages or for_training=True, "
                             "which read it, or pass NetworkSpec.fisher)")
        scales = None if self.int8_scales == "fisher" else quantize.page_scales(pool)
        return quantize.choose_float_pages(pool, fisher, count, scales)

    def quantize_pool(self, pool, float_pages: int = 0):
        """int8 pages of a float pool [m, P] as this runtime stores them: the
        `float_pages` pages of largest Fisher-weighted rounding error kept float32, the
        others with the runtime's `int8_scales` (`nwv.quantize.quantize_mixed`).

        Returns:
          (codes [m, P] int8, scales [m] float32, slots [m] int8, rows [k + 1, P]).
        """
        pool = np.asarray(pool, np.float32)
        chosen = self.choose_float_pages(pool, float_pages)
        return quantize.quantize_mixed(pool, chosen, self._scale_fisher(pool.shape[0]))

    def _scale_fisher(self, pool_pages: int | None = None) -> np.ndarray | None:
        """The page Fisher that int8 scales are chosen with (None: max |w| scales): the
        networks' own, else (a runtime loaded without it) that of its pool directory's
        Fisher files, so a float runtime quantizes as `load(..., storage="int8")` does."""
        if self.int8_scales != "fisher":
            return None
        fisher = self.page_fisher(pool_pages)
        if fisher is None and self.pool_dir is not None:
            fisher = self._stored_page_fisher(pool_pages)
        return fisher

    def _stored_page_fisher(self, pool_pages: int | None = None) -> np.ndarray | None:
        """`page_fisher` from the pool directory's Fisher files (None: none there, or
        tables that differ from this runtime's)."""
        try:
            loaded = state.load_state(self.pool_dir, self.names, with_fisher=True)
        except (OSError, ValueError, KeyError):
            return None
        if any(not np.array_equal(r.page_table, self.page_table(n))
               for n, r in loaded.networks.items() if r.fisher is not None and not r.outputs):
            return None
        m = self.page_count if pool_pages is None else int(pool_pages)
        fisher = _summed_fisher(((r.page_table, r.fisher, r.outputs)
                                 for r in loaded.networks.values()), (m, self.page_size))
        return None if fisher is None else fisher.astype(np.float32)

    def _fisher_for_fake_quant(self):
        """[m, P] constant page Fisher for fake quantisation's scales, or None."""
        if self._fisher_tensor is None and self.int8_scales == "fisher":
            fisher = self._scale_fisher()
            with tf.init_scope():          # eager, also when first asked inside a trace
                self._fisher_tensor = False if fisher is None else tf.constant(fisher)
        return self._fisher_tensor if self._fisher_tensor is not False else None

    def page_fisher(self, pool_pages: int | None = None) -> np.ndarray | None:
        """[m, P] float32 summed diagonal Fisher of the networks reading each page
        (zipped groups left out: their members count), None if no network has one."""
        m = self.page_count if pool_pages is None else int(pool_pages)
        fisher = _summed_fisher(((n.spec.page_table, n.spec.fisher, n.spec.outputs)
                                 for n in self._nets.values()), (m, self.page_size))
        return None if fisher is None else fisher.astype(np.float32)

    @property
    def page_count(self) -> int:
        """Pages m of the pool held in memory."""
        held = self.page_pool if self.page_pool is not None else self.page_codes
        return int(held.shape[0])

    def table_bytes(self) -> int:
        """Bytes of the int32 page tables of every network, zipped groups included
        (what a device stores beside the pool)."""
        return int(4 * sum(net.table.shape.num_elements() for net in self._nets.values()))


def _pool_bytes(pool, storage) -> int:
    m, page = pool.shape
    return int(m * (page + 4) if storage == "int8" else 4 * m * page)


def _summed_fisher(entries, shape) -> np.ndarray | None:
    """[m, P] float64 sum of the Fisher pages [n, P] of every (table [n], fisher,
    outputs) entry onto the pool pages its table names; zipped groups (outputs) and
    entries without Fisher left out. None if none has one."""
    fisher, found = np.zeros(shape, np.float64), False
    for table, pages_fisher, outputs in entries:
        if pages_fisher is not None and not outputs:
            np.add.at(fisher, np.asarray(table), pages_fisher)
            found = True
    return fisher if found else None


def _paged(pool_state, nets, pool_dir, storage, budget, int8_scales):
    """(in-memory pool, specs with slot tables, (plan, reader, int8 scales of every
    pool page or None)) under a RAM budget."""
    if pool_dir is None:
        raise ValueError("resident_bytes needs a pool directory to read pages from")
    pool = pool_state.pool
    fisher = _summed_fisher(((r.page_table, r.fisher, r.outputs)
                             for r in pool_state.networks.values()), pool.shape)
    density = np.zeros(pool.shape[0]) if fisher is None else fisher.sum(axis=1)
    scales = None
    if storage == "int8":      # the scales of the all-in-memory runtime (`page_fisher`)
        scales = quantize.page_scales(pool, fisher.astype(np.float32)
                                      if fisher is not None and int8_scales == "fisher"
                                      else None)
    page_bytes = _pool_bytes(pool[:1], storage)
    plan = resident.plan_resident({n: s.page_table for n, s in nets.items()}, density,
                                  page_bytes=page_bytes, budget=int(budget))
    memory = np.zeros((len(plan.resident) + plan.buffer_slots, pool.shape[1]), np.float32)
    memory[:len(plan.resident)] = pool[plan.resident]
    specs = {n: dataclasses.replace(s, page_table=plan.tables[n]) for n, s in nets.items()}
    reader = resident.PageReader(os.path.join(pool_dir, state.POOL_FILE))
    return memory, specs, (plan, reader, scales)


def _same_architecture(a: keras.Model, b: keras.Model) -> bool:
    shapes = [tuple(v.shape) for v in a.trainable_variables]
    return (shapes == [tuple(v.shape) for v in b.trainable_variables]
            and [type(l).__name__ for l in a.layers] == [type(l).__name__ for l in b.layers])
