"""One-call verbs of neural weight virtualization (Lee & Nirjon, MobiSys 2020).

In memory:
    >>> rt = virtualize({"mnist": (mnist_model, mnist_fisher),
    ...                  "cifar10": (cifar_model, cifar_fisher)}, page_size=100)
    >>> rt.run("mnist", x)            # runs from the shared pool; rt.to_keras("mnist")

On disk (a pool directory, see `nwv.state`), one network at a time:
    >>> add_network("runs/pool", "mnist", task="mnist", model_name="nwv_mnist",
    ...             weights_path="../shared/reference/nwv/mnist.npz",
    ...             data_dir="../shared/datasets")
    >>> inspect("runs/pool")["networks"]["mnist"]["shared_pages"]

Adding a network pages its weights and Fisher (`nwv.pages`), matches the pages
onto the pool at cost Σ_k (F₁+F₂)(w₁−w₂)² (`nwv.matching`; a shared page takes
the Fisher-weighted mean of its weights) and saves the pool directory
atomically. The joint optimisation that follows is `nwv.optimize`.
"""
from __future__ import annotations

import os
from typing import Mapping

import keras
import numpy as np

import data
import models
from models import artifacts, reference, training
from nwv import fisher as fisher_lib
from nwv import matching as nwv_matching
from nwv import pages, runtime, state

__all__ = ["FISHER_SOURCES", "virtualize", "add_network", "remove_network",
           "list_networks", "inspect", "network_fisher"]

# "auto": the reference Fisher stored beside `.npz` weights (fisher_* arrays) when
# there is one, else computed; "reference": required from the npz; "computed":
# always measured on the task's train split.
FISHER_SOURCES = ("auto", "reference", "computed")


def virtualize(models_with_fisher: Mapping, page_size: int = 100,
               matching="optimal") -> runtime.VirtualizedNetworks:
    """Packs networks into one page pool, largest first, and returns the runtime.

    The caller's models are not modified or wrapped: each is cloned into a fresh
    skeleton; its weights are read once.

    Args:
      models_with_fisher: {name: (keras.Model, fisher)} with fisher a list of
        arrays shaped like the model's trainable variables (`nwv.fisher`).
      page_size: weights per page P.
      matching: "optimal" (min-cost assignment) or "greedy" (original NWV).

    Returns:
      `VirtualizedNetworks` whose pool has max_n(pages_n) pages; unshared pages
      hold each network's weights bit for bit.

    Raises:
      ValueError: unsupported layers, Fisher shapes that disagree with the model.
    """
    names = list(models_with_fisher)
    paged = []
    for name in names:
        model, fisher = models_with_fisher[name]
        state.check_name(name)
        runtime.check_supported(model)
        w_pages, f_pages = _paginate(model, fisher, page_size, name)
        paged.append((w_pages, f_pages))
    order = nwv_matching.order_for_pooling([w.shape[0] for w, _ in paged])
    pool, tables_in_order, _ = nwv_matching.virtualize_pages([paged[i] for i in order],
                                                             matching)
    tables = {names[i]: t for i, t in zip(order, tables_in_order)}
    nets = {}
    for name in names:
        nets[name] = (keras.models.clone_model(models_with_fisher[name][0]), tables[name])
    return runtime.VirtualizedNetworks(pool.weights, nets)


def _paginate(model, fisher, page_size, name):
    values = [v.numpy() for v in model.trainable_variables]
    fisher = [np.asarray(f, np.float32) for f in fisher]
    if [f.shape for f in fisher] != [v.shape for v in values]:
        raise ValueError(f"network {name!r}: expected Fisher shapes "
                         f"{[v.shape for v in values]}, received {[f.shape for f in fisher]}")
    w_pages, _ = pages.paginate(values, page_size)
    f_pages, _ = pages.paginate(fisher, page_size)
    return w_pages, f_pages


def network_fisher(model: keras.Model, task: str, weights_path: str | None,
                   data_dir: str | None, source: str = "auto", num_samples: int = 256,
                   definition="expected", seed: int = 0):
    """(Fisher list like model.trainable_variables, description) for `add_network`.

    `source`: see `FISHER_SOURCES`. A computed Fisher uses the first `num_samples`
    examples of the task's train split shuffled with `seed` (no augmentation).
    """
    if source not in FISHER_SOURCES:
        raise ValueError(f"expected a Fisher source in {FISHER_SOURCES}, received {source!r}")
    has_reference = bool(weights_path) and weights_path.endswith(".npz") and \
        _npz_has_fisher(weights_path)
    if source == "reference" or (source == "auto" and has_reference):
        if not has_reference:
            raise ValueError(f"{weights_path}: expected fisher_weight_i/fisher_bias_i arrays "
                             f"for --fisher_source=reference")
        values = reference.load_reference_fisher(weights_path)
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        if [v.shape for v in values] != shapes:
            raise ValueError(f"{weights_path}: Fisher shapes {[v.shape for v in values]} "
                             f"disagree with the model's variables {shapes}")
        return values, "reference"
    definition = fisher_lib.FisherDefinition.parse(definition)
    spec = data.get(task)
    ds = data.load(task, "train", data_dir, batch_size=64, seed=seed, shuffle=True)
    values = fisher_lib.diagonal_fisher(model, ds, num_samples, definition,
                                        multilabel=spec.multilabel)
    return values, f"computed:{definition.value}:{num_samples}"


def _npz_has_fisher(path: str) -> bool:
    try:
        with np.load(path) as archive:
            return any(k.startswith("fisher_") for k in archive.files)
    except Exception:  # unreadable: load_model reports it
        return False


def add_network(pool_dir: str, name: str, task: str, model_name: str, weights_path: str,
                data_dir: str | None = None, page_size: int = 100, matching="optimal",
                fisher_samples: int = 256, seed: int = 0, fisher_source: str = "auto",
                fisher_definition="expected", model_overrides: dict | None = None) -> dict:
    """Adds one trained network to the pool directory (created if missing).

    Args:
      pool_dir: pool directory.
      name: network name (letters, digits, `_.-`), unique in the pool.
      task: registered task (`data.available()`) the network solves.
      model_name: registered model (`models.available()`) of its architecture.
      weights_path: train.py folder, `.keras` file or reference `.npz`.
      data_dir: data folder for a computed Fisher (None: TFDS).
      page_size: P of a new pool (must equal the existing pool's).
      matching: "optimal" or "greedy".
      fisher_samples: examples averaged by a computed Fisher.
      seed: seeds TF/NumPy and the Fisher's example order.
      fisher_source: "auto" (default: the reference npz Fisher when present,
        else computed), "reference" or "computed".
      fisher_definition: "expected" (default) or "predicted", see `nwv.fisher`.
      model_overrides: keyword arguments for `models.build(model_name, ...)`.

    Returns:
      {"name", "pages", "pool_pages", "shared_pages", "cost", "fisher_source"}.

    Raises:
      ValueError / FileNotFoundError / KeyError with the reason (duplicate name,
      page-size mismatch, incompatible model/task, unsupported layer, ...).
    """
    state.check_name(name)
    training.set_seed(seed)
    overrides = dict(model_overrides or {})
    current = state.load_state(pool_dir) if state.exists(pool_dir) else \
        state.PoolDirState.empty(page_size)
    if current.page_size != page_size:
        raise ValueError(f"{pool_dir} uses page_size {current.page_size}, received "
                         f"page_size {page_size}")
    if name in current.networks:
        raise ValueError(f"{pool_dir} already holds a network named {name!r}; remove it "
                         f"first or pick another name")
    model = artifacts.load_model(weights_path, model_name)
    training.check_compatible(model, task)
    runtime.check_supported(model)
    skeleton = models.build(model_name, **overrides)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if [tuple(v.shape) for v in skeleton.trainable_variables] != shapes:
        raise ValueError(f"{weights_path}: variable shapes {shapes} differ from "
                         f"models.build({model_name!r}, **{overrides}); pass the builder "
                         f"overrides the model was trained with")
    fisher, source = network_fisher(model, task, weights_path, data_dir, fisher_source,
                                    fisher_samples, fisher_definition, seed)
    w_pages, f_pages = _paginate(model, fisher, page_size, name)
    before = current.pool_state()
    table, pool, cost = nwv_matching.match_network(before, w_pages, f_pages, matching)
    old = table[table < before.n_pages]
    shared = int(np.sum(before.occupancy[old] > 0))
    current.networks[name] = state.NetworkRecord(
        name=name, task=task, model=model_name, model_overrides=overrides,
        variable_names=tuple(v.path for v in model.trainable_variables),
        variable_shapes=tuple(shapes), page_table=table.astype(np.int32),
        fisher=f_pages, fisher_source=source)
    current.pool = pool.weights
    state.save_state(pool_dir, current)
    return {"name": name, "pages": int(table.size), "pool_pages": int(pool.n_pages),
            "shared_pages": shared, "cost": float(cost), "fisher_source": source}


def remove_network(pool_dir: str, name: str) -> dict:
    """Removes a network; pool pages no other network uses are dropped and the
    remaining pages renumbered. Shared pages keep their current (merged/optimised)
    values: a removal does not restore the others' original weights.

    Returns:
      {"removed", "pool_pages" (after), "freed_pages"}.
    """
    current = state.load_state(pool_dir)
    if name not in current.networks:
        raise KeyError(f"no network {name!r} in {pool_dir}; it holds "
                       f"{list(current.networks) or 'no networks'}")
    del current.networks[name]
    used = np.zeros(current.pool.shape[0], bool)
    for record in current.networks.values():
        used[record.page_table] = True
    renumber = np.cumsum(used) - 1
    for record in current.networks.values():
        record.page_table = renumber[record.page_table].astype(np.int32)
    freed = int(np.sum(~used))
    current.pool = current.pool[used]
    state.save_state(pool_dir, current)
    return {"removed": name, "pool_pages": int(current.pool.shape[0]), "freed_pages": freed}


def list_networks(pool_dir: str) -> list:
    """[{name, task, model, weights, pages}] in the order the networks were added."""
    manifest = state.read_manifest(pool_dir)
    return [{"name": n, "task": e["task"], "model": e["model"], "weights": e["weights"],
             "pages": e["pages"]} for n, e in manifest["networks"].items()]


def inspect(pool_dir: str) -> dict:
    """A summary of the pool: sizes, sharing and where each network's Fisher lies.

    Returns:
      {"pool_pages", "page_size", "pool_weights", "network_weights" (sum),
       "compression" (network pages / pool pages), "networks": {name: {"task",
       "model", "weights", "pages", "exclusive_pages", "shared_pages" (with any
       other), "shared_with": {other: pages in common}, "fisher_source",
       "fisher_mass": {layer: Σ F}}}}.
    """
    current = state.load_state(pool_dir)
    occupancy = current.pool_state().occupancy
    sets = {n: set(r.page_table.tolist()) for n, r in current.networks.items()}
    out = {}
    for name, record in current.networks.items():
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
