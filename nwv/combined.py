"""Zip + virtualize: store a zipped multi-task network (MTZ) in an NWV page pool.

Every block variable of the zipped model (`mtz.ZippedLayer`: shared blocks once,
task-specific blocks per task) gets whole pages of its own in the pool (a
page-aligned layout, `pages.PageLayout(aligned=True)`); each task is a pool
network whose page table lists the pages of the blocks it uses, so the pages
of shared neurons appear in every task's table and are stored once. The whole
multi-task model is one more network (a *group*) whose outputs are all tasks:
`run_all` on one shared input computes the shared layers once. The pool
directory format is the one of `nwv.state`; the zipped architecture is an
asset of it. Networks added later with `add_network` are matched onto the same
pool (virtualized), and `export_savedmodel` exports any such pool.

    >>> zipped = mtz.zip_models([net_a, net_b], [x_a, x_b], names=["a", "b"])
    >>> runtime = nwv.combined.save_zipped("runs/pool", zipped)
    >>> runtime.switch("b"); logits = runtime(x_b)
"""
from __future__ import annotations

import keras
import numpy as np

from mtz.keras_build import member_model
from nwv import pages, skeletons, state
from nwv.runtime import VirtualizedNetworks

GROUP = "zipped_all"


def _skeleton(zipped) -> keras.Model:
    """The zipped model with one input when all tasks share an input shape."""
    shapes = {tuple(x.shape[1:]) for x in zipped.model.inputs}
    if len(shapes) == 1 and len(zipped.model.inputs) > 1 and zipped.state is not None:
        return zipped.shared_input_model()
    return zipped.model


def zipped_pool_state(zipped, page_size: int = 100, tasks=None) -> state.PoolDirState:
    """A `PoolDirState` holding `zipped` (an `mtz.ZippedModel`): the pool, one
    network per task and the group network, all page-aligned.

    Args:
      tasks: registered task of each member (default: `zipped.extra["member_tasks"]`,
        else the member names).
    Returns:
      PoolDirState with pool [sum of pages of all block variables, P].
    """
    group = _skeleton(zipped)
    names = list(zipped.tasks)
    tasks = list(tasks or zipped.extra.get("member_tasks") or names)
    for name in names:
        state.check_name(name)
    blocks, start, n_pages = [], {}, 0
    for v in group.trainable_variables:  # every block once, on whole pages
        block, _ = pages.paginate([v.numpy()], page_size, aligned=True)
        start[v.path] = n_pages
        n_pages += block.shape[0]
        blocks.append(block)
    pool = np.concatenate(blocks).astype(np.float32)
    assets = {}

    def record(name, task, model, outputs=None):
        asset = f"{name}.json"
        assets[asset] = model.to_json().encode()
        overrides = {"asset": asset, **({"outputs": list(outputs)} if outputs else {})}
        variables = model.trainable_variables
        shapes = tuple(tuple(v.shape) for v in variables)
        rec = state.NetworkRecord(
            name, task, skeletons.ZIPPED, overrides, tuple(v.path for v in variables), shapes,
            None, None, "none (zipped member)", aligned=True)
        rec.page_table = np.concatenate([
            np.arange(start[v.path], start[v.path] + -(-int(np.prod(v.shape)) // page_size))
            for v in variables]).astype(np.int32)
        rec.fisher = np.zeros((rec.layout(page_size).n_pages, page_size), np.float32)
        return rec

    networks = {name: record(name, task, member_model(zipped.model, i))
                for i, (name, task) in enumerate(zip(names, tasks))}
    networks[GROUP] = record(GROUP, tasks[0], group, names)
    return state.PoolDirState(page_size, pool, networks, assets)


def save_zipped(pool_dir: str, zipped, page_size: int = 100, tasks=None) -> VirtualizedNetworks:
    """Writes `zipped` as a new pool directory and returns its runtime.

    Raises:
      ValueError: if `pool_dir` already holds a pool (zip into an empty pool;
        add virtualized networks afterwards with `nwv.add_network`).
    """
    if state.exists(pool_dir):
        raise ValueError(f"{pool_dir!r} already holds a pool; store a zipped model in a "
                         f"new pool directory, then add other networks to it")
    pool_state = zipped_pool_state(zipped, page_size, tasks)
    state.save_state(pool_dir, pool_state)
    return VirtualizedNetworks.load(pool_dir)


def stored_weights(pool_state: state.PoolDirState) -> dict:
    """Weights stored in the pool vs the sum over (non-group) networks' weights."""
    total = sum(int(np.sum([np.prod(s) for s in r.variable_shapes]))
                for n, r in pool_state.networks.items()
                if not r.model_overrides.get("outputs"))
    stored = int(pool_state.pool.size)
    return {"pool_weights": stored, "networks_weights": total,
            "ratio": total / stored if stored else None}
