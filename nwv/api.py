"""One-call verbs of neural weight virtualization (Lee & Nirjon, MobiSys 2020).

In memory (the Fisher is computed on each task's train split when not given):

    rt = nwv.virtualize({"mnist": mnist_model, "cifar10": cifar_model},
                        tasks={"mnist": "mnist", "cifar10": "cifar10"},
                        data_dir="../shared/datasets", page_size=100)
    rt.run("mnist", x)                 # runs from the shared pool
    rt.save("runs/pool")               # the same pool on disk

On disk (a pool directory, see `nwv.state`), one network at a time, from a
Keras model or a saved artifact:

    nwv.add_network("runs/pool", "runs/lenet_a", name="digits", task="mnist",
                    data_dir="../shared/datasets")
    nwv.inspect("runs/pool")["networks"]["digits"]["shared_pages"]

(`tests/test_nwv_runtime.py` and `tests/test_nwv_scripts.py` run both.) Adding a
network pages its weights and Fisher (`nwv.pages`), matches the pages onto the
pool at cost Σ_k (F₁+F₂)(w₁−w₂)² (`nwv.matching`; a shared page takes the
Fisher-weighted mean of its weights), keeps its original weights as its
teacher, and saves the pool directory atomically. The joint optimisation that
follows is `nwv.optimize`.
"""
from __future__ import annotations

import os
from typing import Mapping

import keras
import numpy as np

import data
import models
from models import artifacts, training
from models.choices import Choice
from nwv import compaction
from nwv import fisher as fisher_lib
from nwv import locking
from nwv import matching as nwv_matching
from nwv import pages, runtime, skeletons, state

__all__ = ["FisherSource", "virtualize", "add_network", "remove_network", "list_networks",
           "inspect", "network_fisher"]


class FisherSource(Choice):
    """Where a network's Fisher comes from (a string is accepted).

    AUTO: the reference Fisher stored beside `.npz` weights (fisher_* arrays) when
    there is one, else computed; REFERENCE: required from the npz; COMPUTED:
    always measured on the task's train split.
    """
    AUTO = "auto"
    REFERENCE = "reference"
    COMPUTED = "computed"

    @classmethod
    def _label(cls) -> str:
        return "Fisher source"


def network_fisher(model: keras.Model, task: str | None, *, weights_path: str | None = None,
                   data_dir: str | None = None, source="auto", num_samples: int = 256,
                   definition="expected", seed: int = 0):
    """A network's diagonal Fisher, from its reference `.npz` or computed on its task.

    A computed Fisher uses the first `num_samples` examples of the task's train
    split shuffled with `seed` (no augmentation), `nwv.fisher.diagonal_fisher`.

    Args:
      model: the trained Keras model.
      task: its registered task (needed for a computed Fisher).
      weights_path: the file the weights came from (a reference `.npz` may hold a Fisher).
      data_dir: local data (None: TFDS).
      source: `FisherSource`.
      num_samples, definition, seed: of a computed Fisher.
    Returns:
      (list of float32 arrays like `model.trainable_variables`, description).
    Raises:
      ValueError: an unknown source, a reference Fisher that is missing or of the
        wrong shapes, a computed Fisher without a task.
    """
    source = FisherSource.parse(source)
    has_reference = bool(weights_path) and str(weights_path).endswith(".npz") and \
        _npz_has_fisher(weights_path)
    if source is FisherSource.REFERENCE or (source is FisherSource.AUTO and has_reference):
        if not has_reference:
            raise ValueError(f"{weights_path}: expected fisher_weight_i/fisher_bias_i arrays "
                             f"for --fisher_source=reference")
        values = models.load_reference_fisher(weights_path)
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        if [v.shape for v in values] != shapes:
            raise ValueError(f"{weights_path}: Fisher shapes {[v.shape for v in values]} "
                             f"disagree with the model's variables {shapes}")
        return values, "reference"
    if task is None:
        raise ValueError(f"model {model.name!r}: a computed Fisher needs the network's task")
    definition = fisher_lib.FisherDefinition.parse(definition)
    spec = data.get(task)
    ds = data.load(task, "train", data_dir, batch_size=64, seed=seed, shuffle=True)
    values = fisher_lib.diagonal_fisher(model, ds, num_samples=num_samples,
                                        definition=definition, multilabel=spec.multilabel)
    return values, f"computed:{definition.value}:{num_samples}"


def _npz_has_fisher(path: str) -> bool:
    try:
        with np.load(path) as archive:
            return any(k.startswith("fisher_") for k in archive.files)
    except Exception:  # unreadable: load_model reports it
        return False


def _paginate(model, fisher, page_size, name):
    values = [v.numpy() for v in model.trainable_variables]
    fisher = [np.asarray(f, np.float32) for f in fisher]
    if [f.shape for f in fisher] != [v.shape for v in values]:
        raise ValueError(f"network {name!r}: expected Fisher shapes "
                         f"{[v.shape for v in values]}, received {[f.shape for f in fisher]}")
    w_pages, _ = pages.paginate(values, page_size)
    f_pages, _ = pages.paginate(fisher, page_size)
    return w_pages, f_pages


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def virtualize(networks: Mapping[str, keras.Model], *, tasks: Mapping[str, str] | None = None,
               fisher: Mapping[str, list] | None = None, data_dir: str | None = None,
               page_size: int = 100, matching="optimal", fisher_samples: int = 256,
               fisher_definition="expected", seed: int = 0, pool_pages: int | None = None,
               teachers: bool = True) -> runtime.VirtualizedNetworks:
    """Packs networks into one page pool, largest first, and returns the runtime.

    The caller's models are not modified or wrapped: each is cloned into a fresh
    skeleton, and a second clone keeps its original weights as its teacher.

    Args:
      networks: {name: trained keras.Model}.
      tasks: {name: registered task}; needed for every network without a Fisher
        (and used by joint optimisation later).
      fisher: {name: list of arrays like the model's trainable variables}; missing
        ones are computed on the task's train split (`network_fisher`).
      data_dir: local data for computed Fishers (None: TFDS).
      page_size: weights per page P.
      matching: "optimal" (min-cost assignment, default) or "greedy" (original NWV).
      fisher_samples, fisher_definition, seed: of computed Fishers.
      pool_pages: start from a pool of this many empty pages, which networks fill
        before they share (less sharing, more memory: the low-compression end of
        a compression curve); unused pages are dropped. None: the pool is the
        largest network.
      teachers: keep a copy of each network's original weights as its teacher
        (distillation, `remove_network`); False saves that memory.
    Returns:
      `VirtualizedNetworks` whose pool has max_n(pages_n) pages (or up to
      `pool_pages`); unshared pages hold each network's weights bit for bit.
    Raises:
      ValueError: no networks, a bad name, unsupported layers, Fisher shapes that
        disagree with the model, a network with neither a Fisher nor a task.
    """
    if not networks:
        raise ValueError("expected at least one network to virtualize, received none")
    tasks, fisher = dict(tasks or {}), dict(fisher or {})
    names = list(networks)
    paged, sources = [], {}
    for name in names:
        model = networks[name]
        state.check_name(name)
        runtime.check_supported(model)
        if name not in fisher:
            fisher[name], sources[name] = network_fisher(
                model, tasks.get(name), data_dir=data_dir, source="computed",
                num_samples=fisher_samples, definition=fisher_definition, seed=seed)
        paged.append(_paginate(model, fisher[name], page_size, name))
    order = nwv_matching.order_for_pooling([w.shape[0] for w, _ in paged])
    start = None
    if pool_pages:
        empty = np.zeros((int(pool_pages), page_size), np.float32)
        start = nwv_matching.PoolState(empty, empty, np.zeros(int(pool_pages), np.int64))
    pool, tables_in_order, _ = nwv_matching.virtualize_pages([paged[i] for i in order],
                                                             matching, pool=start)
    tables = {names[i]: t for i, t in zip(order, tables_in_order)}
    weights = pool.weights
    if pool_pages:                                 # drop the pages no network took
        weights, tables, _ = compaction.compact(pool.weights, tables)
    specs = {name: runtime.NetworkSpec(
        keras.models.clone_model(networks[name]), tables[name], task=tasks.get(name),
        fisher=paged[i][1], fisher_source=sources.get(name, "given"),
        teacher=_copy(networks[name]) if teachers else None)
        for i, name in enumerate(names)}
    return runtime.VirtualizedNetworks(weights, specs)


def _registered(model, model_name, overrides):
    """(model name, overrides) when `models.build(model_name, **overrides)` has the
    model's variable shapes, else None (the architecture is then stored as JSON)."""
    if not model_name:
        return None
    skeleton = models.build(model_name, **overrides)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if [tuple(v.shape) for v in skeleton.trainable_variables] != shapes:
        raise ValueError(f"model {model.name!r}: variable shapes {shapes} differ from "
                         f"models.build({model_name!r}, **{overrides}); pass the builder "
                         f"overrides the model was trained with")
    return model_name, dict(overrides)


def add_network(pool_dir: str, model, *, name: str, task: str, model_name: str | None = None,
                model_overrides: dict | None = None, data_dir: str | None = None,
                fisher: list | None = None, fisher_source="auto", fisher_definition="expected",
                fisher_samples: int = 256, page_size: int = 100, matching="optimal",
                seed: int = 0, wait=False) -> dict:
    """Adds one trained network to the pool directory (created if missing).

    Args:
      pool_dir: pool directory.
      model: a Keras model, or a path: a train.py folder, a `.keras` file or a
        reference `.npz` (with `model_name`).
      name: network name (letters, digits, `_.-`), unique in the pool.
      task: registered task (`data.available()`) the network solves.
      model_name: registered model of its architecture; the pool then rebuilds it
        with `models.build(model_name, **model_overrides)`. Without it the
        architecture is stored in the pool as Keras JSON (any Keras model).
      model_overrides: keyword arguments for `models.build`.
      data_dir: data folder for a computed Fisher (None: TFDS).
      fisher: the Fisher as a list like the model's trainable variables (default:
        `fisher_source`).
      fisher_source: `FisherSource`: "auto" (the reference npz Fisher when
        present, else computed), "reference" or "computed".
      fisher_definition: "expected" (default) or "predicted", see `nwv.fisher`.
      fisher_samples: examples averaged by a computed Fisher.
      page_size: P of a new pool (must equal the existing pool's).
      matching: "optimal" (default) or "greedy".
      seed: seeds TF/NumPy and the Fisher's example order.
      wait: if another process writes the pool: False fails at once, True waits,
        a number waits that many seconds (`nwv.locking`).
    Returns:
      {"name", "pages", "pool_pages", "shared_pages", "cost", "fisher_source"}.
    Raises:
      ValueError / FileNotFoundError / KeyError with the reason (duplicate name,
      page-size mismatch, incompatible model/task, unsupported layer, weights
      whose matching cost overflows float32, ...); PoolBusyError.
    """
    state.check_name(name)
    with locking.writer(pool_dir, wait=wait):
        return _add_network(pool_dir, model, name, task, model_name, model_overrides,
                            data_dir, fisher, fisher_source, fisher_definition,
                            fisher_samples, page_size, matching, seed)


def _add_network(pool_dir, model, name, task, model_name, model_overrides, data_dir, fisher,
                 fisher_source, fisher_definition, fisher_samples, page_size, matching, seed):
    training.set_seed(seed)
    overrides = dict(model_overrides or {})
    current = state.load_state(pool_dir, with_teachers=True) if state.exists(pool_dir) \
        else state.PoolDirState.empty(page_size)
    if current.page_size != page_size:
        raise ValueError(f"{pool_dir} uses page_size {current.page_size}, received "
                         f"page_size {page_size}")
    if name in current.networks:
        raise ValueError(f"{pool_dir} already holds a network named {name!r}; remove it "
                         f"first or pick another name")
    weights_path = None
    if not isinstance(model, keras.Model):
        weights_path = str(model)
        model = artifacts.load_model(weights_path, model_name)
    training.check_compatible(model, task)
    runtime.check_supported(model)
    registered = _registered(model, model_name, overrides)
    if fisher is not None:
        source = "given"
    else:
        fisher, source = network_fisher(
            model, task, weights_path=weights_path, data_dir=data_dir, source=fisher_source,
            num_samples=fisher_samples, definition=fisher_definition, seed=seed)
    w_pages, f_pages = _paginate(model, fisher, page_size, name)
    before = current.pool_state()
    table, pool, cost = nwv_matching.match_network(before, w_pages, f_pages, matching)
    old = np.unique(table[table < before.n_pages])
    shared = int(np.sum(before.occupancy[old] > 0))
    changed = old[before.occupancy[old] > 0]
    record = state.NetworkRecord(
        name=name, task=task, model=registered[0] if registered else model.name,
        model_overrides=registered[1] if registered else {},
        variable_names=tuple(v.path for v in model.trainable_variables),
        variable_shapes=tuple(tuple(v.shape) for v in model.trainable_variables),
        page_table=table.astype(np.int32), fisher=f_pages, fisher_source=source,
        teacher=skeletons.flat_weights(model),
        undo={"pages": changed, "values": before.weights[changed],
              "after_sha256": state.pages_digest(pool.weights[changed])})
    if registered is None:
        record.asset = f"{name}.json"
        current.assets[record.asset] = model.to_json().encode()
    current.networks[name] = record
    current.pool = pool.weights
    state.save_state(pool_dir, current)
    return {"name": name, "pages": int(table.size), "pool_pages": int(pool.n_pages),
            "shared_pages": shared, "cost": float(cost), "fisher_source": source}


def remove_network(pool_dir: str, name: str, *, wait=False) -> dict:
    """Removes a network and undoes what adding it did to the pages it shared.

    While the pages the network's add merged are unchanged since (no joint
    optimisation or later add touched them), they get back their values from
    before the add, bit for bit ("restored": "exact"). Otherwise every page it
    shared is rebuilt from the remaining users' original weights, Fisher-weighted
    like a match ("restored": "from teachers"; their joint optimisation on those
    pages is lost: optimise the pool again). Pages no network uses any more are
    dropped and the tables renumbered (`PoolDirState.compact`).

    Args:
      pool_dir: the pool directory; name: the network.
      wait: as `add_network`.
    Returns:
      {"removed", "pool_pages" (after), "freed_pages", "restored", "restored_pages"}.
    Raises:
      KeyError: no such network; ValueError: a member of a zipped group that is still
        in the pool; PoolBusyError; errors of `nwv.state.load_state`.
    """
    with locking.writer(pool_dir, wait=wait):
        current = state.load_state(pool_dir, with_teachers=True)
        if name not in current.networks:
            raise KeyError(f"no network {name!r} in {pool_dir}; it holds "
                           f"{list(current.networks) or 'no networks'}")
        groups = [g for g, r in current.networks.items() if r.outputs and name in r.outputs]
        if groups:
            raise ValueError(f"network {name!r} is a member of the zipped group "
                             f"{groups[0]!r}, which reads its pages: remove {groups[0]!r} "
                             f"first")
        record = current.networks.pop(name)
        how, restored = _undo_pages(current, record)
        for key in (record.asset, record.teacher_asset):
            if key and not any(key in (r.asset, r.teacher_asset)
                               for r in current.networks.values()):
                current.assets.pop(key, None)
        freed = current.compact()
        state.save_state(pool_dir, current)
    return {"removed": name, "pool_pages": int(current.pool.shape[0]), "freed_pages": freed,
            "restored": how, "restored_pages": restored}


def _undo_pages(current: state.PoolDirState, record) -> tuple[str, int]:
    """Restores the pages `record`'s add changed (see `remove_network`); in place."""
    users = np.zeros(current.pool.shape[0], bool)
    for other in current.networks.values():
        users[other.page_table] = True
    shared = np.unique(record.page_table[users[record.page_table]])
    if shared.size == 0:
        return "nothing shared", 0
    undo = record.undo
    if undo is not None and len(undo["pages"]) and state.pages_digest(
            current.pool[undo["pages"]]) == undo["after_sha256"]:
        current.pool[undo["pages"]] = undo["values"]
        return "exact", int(len(undo["pages"]))
    weighted = np.zeros((shared.size, current.page_size))
    total, plain, count = np.zeros_like(weighted), np.zeros_like(weighted), np.zeros(shared.size)
    where = {int(p): i for i, p in enumerate(shared)}
    for other in current.networks.values():
        if other.outputs:
            continue
        hits = [(slot, where[int(p)]) for slot, p in enumerate(other.page_table)
                if int(p) in where]
        if not hits:
            continue
        original = _teacher_pages(other, current.page_size)
        for slot, i in hits:
            value = np.asarray(original[slot] if original is not None
                               else current.pool[shared[i]], np.float64)
            f = np.asarray(other.fisher[slot] if other.fisher is not None
                           else np.zeros(current.page_size), np.float64)
            weighted[i] += f * value
            total[i] += f
            plain[i] += value
            count[i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rebuilt = np.where(total > 0, weighted / np.where(total > 0, total, 1.0),
                           plain / np.maximum(count, 1)[:, None])
    current.pool[shared] = rebuilt.astype(np.float32)
    return "from teachers", int(shared.size)


def _teacher_pages(record, page_size: int):
    """The record's original weights in its own page layout, or None without them."""
    if record.teacher is None or record.teacher_asset is not None:
        return None
    layout = record.layout(page_size)
    arrays, offset = [], 0
    for shape, size in zip(layout.shapes, layout.sizes):
        arrays.append(np.asarray(record.teacher[offset:offset + size]).reshape(shape))
        offset += size
    return pages.paginate(arrays, page_size, aligned=record.aligned)[0]


def list_networks(pool_dir: str) -> list:
    """The networks of a pool directory, in the order they were added.

    Args:
      pool_dir: the pool directory.
    Returns:
      [{"name", "task", "model", "weights", "pages"}].
    Raises:
      FileNotFoundError / ValueError: no pool, or a malformed manifest.
    """
    manifest = state.read_manifest(pool_dir)
    return [{"name": n, "task": e["task"], "model": e["model"], "weights": e.get("weights"),
             "pages": e.get("pages")} for n, e in manifest["networks"].items()]


def inspect(pool_dir: str) -> dict:
    """A summary of the pool: sizes, sharing and where each network's Fisher lies.

    Args:
      pool_dir: the pool directory.
    Returns:
      {"pool_pages", "page_size", "pool_weights", "network_weights" (sum),
       "compression" (network pages / pool pages), "networks": {name: {"task",
       "model", "weights", "pages", "exclusive_pages", "shared_pages" (with any
       other), "shared_with": {other: pages in common}, "fisher_source",
       "fisher_mass": {layer: Σ F}}}}; group networks are not counted.
    Raises:
      FileNotFoundError / ValueError: see `nwv.state.load_state`.
    """
    current = state.load_state(pool_dir)
    occupancy = current.pool_state().occupancy
    records = {n: r for n, r in current.networks.items() if not r.outputs}
    sets = {n: set(r.page_table.tolist()) for n, r in records.items()}
    out = {}
    for name, record in records.items():
        arrays = pages.from_pages(record.fisher, record.layout(current.page_size))
        mass = {}
        for var_name, array in zip(record.variable_names, arrays):
            layer = var_name.rsplit("/", 1)[0]
            mass[layer] = mass.get(layer, 0.0) + float(np.sum(array, dtype=np.float64))
        out[name] = {
            "task": record.task, "model": record.model,
            "weights": int(sum(a.size for a in arrays)),
            "pages": int(record.page_table.size),
            "exclusive_pages": int(np.sum(occupancy[record.page_table] == 1)),
            "shared_pages": int(np.sum(occupancy[record.page_table] > 1)),
            "shared_with": {o: len(sets[name] & sets[o]) for o in sets if o != name},
            "fisher_source": record.fisher_source, "fisher_mass": mass,
        }
    total_pages = sum(v["pages"] for v in out.values())
    pool_pages = int(current.pool.shape[0])
    return {"pool_dir": os.path.abspath(pool_dir), "pool_pages": pool_pages,
            "page_size": current.page_size, "pool_weights": pool_pages * current.page_size,
            "network_weights": sum(v["weights"] for v in out.values()),
            "compression": total_pages / pool_pages if pool_pages else 0.0,
            "networks": out}
