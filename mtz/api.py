"""One-call MTZ: `zip_models(models, inputs, ...)` -> `ZippedModel`, and its storage.

    zipped = mtz.zip_models([net_a, net_b], [x_a, x_b], share="1.0",
                            retrain=mtz.Retrainer([ds_a, ds_b], steps=100))
    logits_a, logits_b = zipped.model([x_a, x_b])
    plain_b = zipped.task_model(1)          # an ordinary Keras model for task B

(`tests/test_mtz_zip.py` runs this on small networks.) The caller's models are
read, never modified. A zipped model is saved as a folder: `model.keras` (the
multi-task model; shared blocks stored once) and `zip.json` (tasks, per-layer
sharing records, parameter counts). `fold_batch_norms(model)` is the same
network with every batch norm folded into its convolution: a plain model that
NWV can page.
"""
from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np

from models import artifacts
from mtz import keras_build
from mtz.domains import joint_shape, pad_chain
from mtz.graph import parse_chain
from mtz.layers import InputPad, ZippedLayer  # noqa: F401  (registered for loading)
from mtz.structure import same_architecture
from mtz.zipper import ZipConfig, new_state, zip_state

ZIP_FILE = "zip.json"


class ZippedModel:
    """A multi-task network from MTZ.

    Attributes:
      model: Keras model, one input and one output per task (in `tasks` order).
      tasks: task names.
      records: per (task, layer) sharing records (shared neurons, ΔE, retraining).
      state: the `ZipState` (None for a model loaded from disk).
    """

    def __init__(self, model: keras.Model, tasks, *, records=None, state=None, extra=None):
        self.model, self.tasks = model, list(tasks)
        self.records, self.state, self.extra = list(records or []), state, dict(extra or {})

    def index(self, task) -> int:
        """The member index of `task` (an index or a member name); ValueError if unknown."""
        if isinstance(task, (int, np.integer)):
            if not 0 <= task < len(self.tasks):
                raise ValueError(f"expected a member index in [0, {len(self.tasks)}), "
                                 f"received {task}")
            return int(task)
        if task not in self.tasks:
            raise ValueError(f"unknown member {task!r}; members: {self.tasks}")
        return self.tasks.index(task)

    def member(self, task) -> keras.Model:
        """Task's path through the multi-task model (shares its variables)."""
        i = self.index(task)
        inputs = self.model.inputs[i] if len(self.model.inputs) > 1 else self.model.inputs[0]
        return keras.Model(inputs, self.model.outputs[i], name=f"{self.tasks[i]}_member")

    def member_model(self, task) -> keras.Model:
        """Task's path as a model holding ONLY the blocks that task uses.

        Its variables are copies (same values, named as in `model`:
        `<layer>/kernel_<g>_<h>`), so a pool can page each member on its own
        while shared blocks keep one name; outputs equal `member(task)`'s.
        """
        return keras_build.member_model(self.model, self.index(task))

    def block_owners(self) -> dict:
        """{variable path of `model`: tuple of the member names using it}.

        A block with several owners holds shared neurons' weights, stored once.
        """
        owners = {}
        for layer in self.model.layers:
            if isinstance(layer, ZippedLayer):
                for path, tasks in layer.owners().items():
                    owners[path] = tuple(self.tasks[t] for t in sorted(tasks))
        return owners

    def shared_input_model(self) -> keras.Model:
        """The same zipped network with ONE input for all tasks (same input shape):
        leading layers shared by every task are computed once; outputs equal
        `model`'s. Shares no variables with `model` (a fresh copy of the weights)."""
        if self.state is None:
            raise ValueError("shared_input_model needs the zip state (a freshly zipped model)")
        keras_build.read_back(self.state, self.model)
        return keras_build.multitask_model(self.state, shared_input=True)

    def task_model(self, task) -> keras.Model:
        """A standalone plain Keras model for the task (original architecture and
        neuron order) with outputs equal to the multi-task model's for that task."""
        i = self.index(task)
        if self.state is None:
            return self.member(i)
        keras_build.read_back(self.state, self.model)
        return keras_build.task_model(self.state, i)

    def parameter_counts(self) -> dict:
        """Stored weights of the zipped model vs the sum of the separate networks."""
        zipped = int(sum(np.prod(v.shape) for v in self.model.weights))
        separate = self.extra.get("separate_parameters")
        return {"zipped": zipped, "separate": separate,
                "ratio": (separate / zipped) if separate else None}

    def save(self, folder: str) -> None:
        """Writes `model.keras` and `zip.json` into `folder`, each atomically."""
        os.makedirs(folder, exist_ok=True)
        artifacts.save_model(self.model, os.path.join(folder, artifacts.MODEL_FILE))
        artifacts.write_json(os.path.join(folder, ZIP_FILE), {
            "format": 1, "tasks": self.tasks, "records": self.records,
            "parameters": self.parameter_counts(), **self.extra})

    @classmethod
    def load(cls, folder: str) -> "ZippedModel":
        """Reads a folder written by `save` (clear errors for missing/corrupt files)."""
        meta_path = os.path.join(folder, ZIP_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{folder!r} is not a zipped model: no {ZIP_FILE}")
        try:
            with open(meta_path) as handle:
                meta = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
        model = artifacts.load_model(folder)
        if [o.name.split("/")[0] for o in model.outputs] and len(model.outputs) != len(meta["tasks"]):
            raise ValueError(f"{folder}: model has {len(model.outputs)} outputs but "
                             f"{ZIP_FILE} lists {len(meta['tasks'])} tasks")
        extra = {k: v for k, v in meta.items() if k not in ("format", "tasks", "records",
                                                            "parameters")}
        return cls(model, meta["tasks"], records=meta.get("records"), extra=extra)


def zip_models(models, inputs, *, names=None, config: ZipConfig | None = None, retrain=None,
               progress=None, **options) -> ZippedModel:
    """Zips networks of one architecture into one multi-task network (MTZ).

    Networks are added one at a time (the second into the first, the third into
    their zipped network, ...), layer by layer, sharing the neuron pairs of
    least Hessian-weighted error (TMC Eq. 2.14-2.16) with merged weights
    (Eq. 2.12-2.13); the output layer is never shared.

    Args:
      models: Keras models of Dense/Conv2D layers, possibly with residual Add
        blocks (`mtz.graph`); batch norms are folded exactly, so the zipped
        model has none; see `models.layer_support`. Not modified. Inputs may
        differ in channels, or in size for Flatten + Dense networks: zipped on
        a joint input at the larger size (`mtz.domains`).
      inputs: per model, examples [n, *input_shape] for the layer-wise Hessians.
      names: task names (default: "task0", "task1", ...).
      config: a `ZipConfig` (share schedule, pairing method, α, damping, ...).
      retrain: optional `mtz.Retrainer` (joint retraining after each layer).
      progress: optional callable(message) told about every zipped layer.
      **options: `ZipConfig` fields instead of `config`, e.g. `share="0.5"`.
    Returns:
      A `ZippedModel`.
    Raises:
      ValueError: fewer than two models, differing architectures, share counts
        larger than a layer, unsupported layers (named), conv networks with
        inputs of different spatial sizes, an unknown option, or both `config`
        and options.
    """
    config = _config(config, options)
    if len(models) < 2:
        raise ValueError(f"expected at least two models to zip, received {len(models)}")
    names = list(names or [f"task{i}" for i in range(len(models))])
    if len(names) != len(models) or len(inputs) != len(models):
        raise ValueError(f"expected one name and one input array per model ({len(models)}), "
                         f"received {len(names)} names and {len(inputs)} inputs")
    chains = [parse_chain(m) for m in models]
    for chain, x, name in zip(chains, inputs, names):
        if tuple(np.shape(x)[1:]) != tuple(chain.input_shape):
            raise ValueError(f"inputs for {name!r}: expected examples of shape "
                             f"{chain.input_shape}, received {tuple(np.shape(x)[1:])}")
    joint = joint_shape(chains, names)
    padded = [pad_chain(chain, joint) for chain in chains]
    same_architecture(padded, names)
    state = new_state(padded, names, [c.input_shape for c in chains])
    records = zip_state(state, dict(enumerate(inputs)), config=config, retrain=retrain,
                        progress=progress)
    model = keras_build.multitask_model(state)
    separate = int(sum(m.count_params() for m in models))
    return ZippedModel(model, names, records=records, state=state,
                       extra={"separate_parameters": separate})


def _config(config, options) -> ZipConfig:
    if config is not None and options:
        raise ValueError(f"expected either config or ZipConfig fields, received both "
                         f"(fields {sorted(options)})")
    if config is not None:
        return config
    fields = {f.name for f in dataclasses.fields(ZipConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown zip option(s) {unknown}; ZipConfig fields: {sorted(fields)}")
    return ZipConfig(**options)


def fold_batch_norms(model: keras.Model, *, name: str | None = None) -> keras.Model:
    """The same network with every BatchNormalization folded into the layer before it.

    K' = K·γ/σ, b' = γ(b − μ)/σ + β per output channel (`mtz.bn_fold`), exact at
    inference. The result is a plain functional model of the original layer types
    without batch norms, so NWV can page it (`models.layer_support`).

    Args:
      model: a Keras model MTZ can parse (`mtz.graph.parse_chain`); not modified.
      name: name of the new model (default: "<model.name>_folded").
    Returns:
      A new `keras.Model` with the same inputs, outputs (to float round-off) and
      layer names, minus the batch norms.
    Raises:
      ValueError: a layer MTZ cannot parse, or a batch norm that does not directly
        follow a Dense/Conv2D layer.
    """
    chain = parse_chain(model)
    folded = keras_build.task_model(new_state([chain], [model.name]), 0)
    return keras.Model(folded.inputs, folded.outputs, name=name or f"{model.name}_folded")
