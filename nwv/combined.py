"""Zip + virtualize: store a zipped multi-task network (MTZ) in an NWV page pool.

Every block variable of the zipped model (`mtz.ZippedLayer`: shared blocks once,
task-specific blocks per task) gets whole pages of its own in the pool (a
page-aligned layout, `pages.PageLayout(aligned=True)`); each task is a pool
network whose page table lists the pages of the blocks it uses, so the pages
of shared neurons appear in every task's table and are stored once. Each
member gets its own diagonal Fisher (on its task's data, or on given inputs),
so later networks are matched onto these pages at their true cost. The whole
multi-task model is one more network (a *group*) whose outputs are all tasks:
`run_all` on one shared input computes the shared layers once. The pool
directory format is the one of `nwv.state`; the zipped architecture is an
asset of it. Networks added later with `nwv.add_network` are matched onto the
same pool (virtualized), and `nwv.export_savedmodel` exports any such pool.

    zipped = mtz.zip_models([net_a, net_b], [x_a, x_b], names=["a", "b"])
    runtime = nwv.save_zipped("runs/pool", zipped, fisher_inputs={"a": x_a, "b": x_b})
    runtime.switch("b"); logits = runtime(x_b)

(`tests/test_combined.py` runs this.)
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import keras
import numpy as np

from nwv import fisher as fisher_lib
from nwv import locking, matching, pages, skeletons, state
from nwv.api import network_fisher
from nwv.runtime import VirtualizedNetworks

__all__ = ["GROUP", "zipped_pool_state", "save_zipped", "stored_weights", "virtualize_pools"]

GROUP = "zipped_all"


def virtualize_pools(pools, *, method="optimal", pool_pages: int | None = None
                     ) -> state.PoolDirState:
    """Several pools (e.g. zipped groups) virtualized into one by Fisher page matching.

    The pools are added largest first: the first is copied, each next pool's pages
    are matched onto the combined pool as one network's would be (cost
    Σ (F₁+F₂)(w₁−w₂)², F a page's summed Fisher; `nwv.matching.match_network`)
    and every table of its networks is mapped through that match. Shared pages take
    the Fisher-weighted mean, exactly as when networks are added one by one.

    Args:
      pools: `PoolDirState`s of one page size with distinct network and asset names.
      method: "optimal" (default) or "greedy" matching.
      pool_pages: start from this many empty pages, which the pools fill before
        they share (less sharing); unused pages are dropped. None: the largest pool.
    Returns:
      A new `PoolDirState` (undo records dropped: they describe the separate pools).
    Raises:
      ValueError: no pools, page sizes that differ, names that clash.
    """
    pools = list(pools)
    if not pools:
        raise ValueError("expected at least one pool to virtualize, received none")
    page_size = pools[0].page_size
    if any(p.page_size != page_size for p in pools):
        raise ValueError(f"expected pools of one page size, received "
                         f"{[p.page_size for p in pools]}")
    order = matching.order_for_pooling([p.pool.shape[0] for p in pools])
    combined = matching.PoolState.empty(page_size)
    if pool_pages:
        empty = np.zeros((int(pool_pages), page_size), np.float32)
        combined = matching.PoolState(empty, empty, np.zeros(int(pool_pages), np.int64))
    networks, assets = {}, {}
    for index in order:
        source = pools[index]
        clash = sorted((set(source.networks) & set(networks)) | {
            a for a in set(source.assets) & set(assets) if source.assets[a] != assets[a]})
        if clash:
            raise ValueError(f"pools to virtualize share the names {clash}")
        table, combined, _ = matching.match_network(
            combined, source.pool, source.pool_state().fisher, method)
        for name, record in source.networks.items():
            networks[name] = dataclasses.replace(
                record, page_table=table[record.page_table].astype(np.int32), undo=None)
        assets.update(source.assets)
    pooled = state.PoolDirState(page_size, combined.weights, networks, assets)
    if pool_pages:
        pooled.compact()
    return pooled


def _skeleton(zipped) -> keras.Model:
    """The zipped model with one input when all tasks share an input shape."""
    shapes = {tuple(x.shape[1:]) for x in zipped.model.inputs}
    if len(shapes) == 1 and len(zipped.model.inputs) > 1 and zipped.state is not None:
        return zipped.shared_input_model()
    return zipped.model


def _member_fisher(member, name, task, fisher_inputs, data_dir, samples, definition, seed):
    if samples == 0:
        return [np.zeros(v.shape, np.float32) for v in member.trainable_variables], "none"
    if fisher_inputs is not None and name in fisher_inputs:
        values = fisher_lib.diagonal_fisher(member, fisher_inputs[name], num_samples=samples,
                                            definition=definition)
        return values, f"computed:{fisher_lib.FisherDefinition.parse(definition).value}:" \
                       f"{samples}:given inputs"
    return network_fisher(member, task, data_dir=data_dir, source="computed",
                          num_samples=samples, definition=definition, seed=seed)


def zipped_pool_state(zipped, *, page_size: int = 100, tasks=None, data_dir: str | None = None,
                      fisher_inputs: Mapping | None = None, fisher_samples: int = 256,
                      fisher_definition="expected", seed: int = 0,
                      teachers: Mapping[str, keras.Model] | None = None,
                      group: str = GROUP) -> state.PoolDirState:
    """A `PoolDirState` holding a zipped model: the pool, one network per member and
    the group network, all page-aligned.

    Args:
      zipped: an `mtz.ZippedModel`.
      page_size: weights per page.
      tasks: registered task of each member (default: `zipped.extra["member_tasks"]`,
        else the member names).
      data_dir: data of the members' Fisher (None: TFDS), unless `fisher_inputs`.
      fisher_inputs: {member: examples [n, *input_shape]} to compute the Fisher on
        instead of the task's train split.
      fisher_samples, fisher_definition, seed: of the Fisher (`nwv.fisher`);
        fisher_samples=0 gives zero Fisher (no data read; later matching then
        treats the members' pages as unimportant).
      teachers: {member: the separate network it was zipped from}: its teacher
        for distillation (default: the member as zipped).
      group: the name of the group network (all members in one pass).
    Returns:
      PoolDirState with pool [sum of pages of all block variables, P].
    Raises:
      ValueError: member names unusable as file names, a Fisher that cannot be
        computed (no task data), teachers that are not Keras models.
    """
    group_model = _skeleton(zipped)
    names = list(zipped.tasks)
    tasks = list(tasks or zipped.extra.get("member_tasks") or names)
    teachers = dict(teachers or {})
    for name in names + [group]:
        state.check_name(name)
    if group in names:
        raise ValueError(f"the group name {group!r} is also a member's name")
    blocks, start, n_pages = [], {}, 0
    for v in group_model.trainable_variables:  # every block once, on whole pages
        block, _ = pages.paginate([v.numpy()], page_size, aligned=True)
        start[v.path] = n_pages
        n_pages += block.shape[0]
        blocks.append(block)
    pool = np.concatenate(blocks).astype(np.float32)
    assets = {}

    def record(name, task, model, outputs=None):
        asset = f"{name}.json"
        assets[asset] = model.to_json().encode()
        variables = model.trainable_variables
        rec = state.NetworkRecord(
            name=name, task=task, model=f"zipped {zipped.model.name}", asset=asset,
            outputs=tuple(outputs) if outputs else None,
            variable_names=tuple(v.path for v in variables),
            variable_shapes=tuple(tuple(v.shape) for v in variables),
            fisher_source="none (group: its members' Fisher)", aligned=True)
        rec.page_table = np.concatenate([
            np.arange(start[v.path], start[v.path] + -(-int(np.prod(v.shape)) // page_size))
            for v in variables]).astype(np.int32)
        rec.fisher = np.zeros((rec.layout(page_size).n_pages, page_size), np.float32)
        return rec

    networks = {}
    for i, (name, task) in enumerate(zip(names, tasks)):
        member = zipped.member_model(i)
        rec = networks[name] = record(name, task, member)
        values, rec.fisher_source = _member_fisher(
            member, name, task, fisher_inputs, data_dir, fisher_samples, fisher_definition,
            seed)
        rec.fisher = pages.paginate(values, page_size, aligned=True)[0]
        teacher = teachers.get(name, member)
        if not isinstance(teacher, keras.Model):
            raise ValueError(f"teacher of {name!r}: expected a Keras model, received "
                             f"{type(teacher).__name__}")
        rec.teacher = skeletons.flat_weights(teacher)
        if teacher is not member:
            rec.teacher_asset = f"{name}.teacher.json"
            assets[rec.teacher_asset] = teacher.to_json().encode()
    networks[group] = record(group, tasks[0], group_model, names)
    return state.PoolDirState(page_size, pool, networks, assets)


def save_zipped(pool_dir: str, zipped, *, wait: bool = False,
                **options) -> VirtualizedNetworks:
    """Writes a zipped model as a new pool directory and returns its runtime.

    Args:
      pool_dir: a directory without a pool.
      zipped: an `mtz.ZippedModel`.
      wait: if another process is writing `pool_dir`, wait for it instead of
        raising `PoolBusyError` (as `nwv.add_network`).
      **options: keyword arguments of `zipped_pool_state` (page_size, tasks,
        data_dir, fisher_inputs, fisher_samples, fisher_definition, seed, teachers).
    Returns:
      The `VirtualizedNetworks` loaded from `pool_dir`.
    Raises:
      ValueError: if `pool_dir` already holds a pool (zip into an empty pool; add
        virtualized networks afterwards with `nwv.add_network`), or as
        `zipped_pool_state`.
    """
    def refuse_existing():
        if state.exists(pool_dir):
            raise ValueError(f"{pool_dir!r} already holds a pool; store a zipped model in a "
                             f"new pool directory, then add other networks to it")

    refuse_existing()
    pool_state = zipped_pool_state(zipped, **options)
    with locking.writer(pool_dir, wait=wait):
        refuse_existing()
        state.save_state(pool_dir, pool_state)
    return VirtualizedNetworks.load(pool_dir)


def stored_weights(pool_state: state.PoolDirState) -> dict:
    """Weights stored in the pool vs the sum over the (non-group) networks' weights.

    Args:
      pool_state: a `PoolDirState`.
    Returns:
      {"pool_weights", "networks_weights", "ratio"}.
    """
    total = sum(int(np.sum([np.prod(s) for s in r.variable_shapes]))
                for r in pool_state.networks.values() if not r.outputs)
    stored = int(pool_state.pool.size)
    return {"pool_weights": stored, "networks_weights": total,
            "ratio": total / stored if stored else None}
