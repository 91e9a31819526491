"""Architectures of pool networks: registry models, or members of a zipped model.

A pool network is executed by a *skeleton*, a Keras model whose variables give
the shapes (their values are never used: weights come from the page pool).
Most networks name a registered model (`models.build(model, **overrides)`).
A zipped multi-task network (`mtz`) is stored once as an asset of the pool
directory (its `.keras` file); each of its tasks is a network whose record has
model `ZIPPED` and overrides {"asset": file, "member": index}, and the whole
multi-task model (all outputs, shared layers computed once) is a network with
{"asset": file, "member": None, "outputs": [task names]}.
"""
from __future__ import annotations

import os
import tempfile

import keras

import models

ZIPPED = "mtz_zipped"


def _load_keras(blob: bytes) -> keras.Model:
    import mtz  # noqa: F401  (registers ZippedLayer for deserialisation)

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "skeleton.keras")
        with open(path, "wb") as handle:
            handle.write(blob)
        return keras.saving.load_model(path, compile=False)


def build_skeleton(record, assets: dict, cache: dict | None = None) -> keras.Model:
    """The skeleton model of a `state.NetworkRecord`.

    Args:
      assets: {file: bytes} of the pool directory (`PoolDirState.assets`).
      cache: optional dict reused across calls so an asset is loaded once.
    Raises:
      ValueError: an unknown model or a missing asset, naming the network.
    """
    if record.model != ZIPPED:
        return models.build(record.model, **record.model_overrides)
    overrides = record.model_overrides
    asset = overrides.get("asset")
    if asset not in assets:
        raise ValueError(f"network {record.name!r} needs asset {asset!r}, which the pool "
                         f"directory does not hold (it has {sorted(assets)})")
    cache = {} if cache is None else cache
    if asset not in cache:
        cache[asset] = _load_keras(assets[asset])
    whole = cache[asset]
    member = overrides.get("member")
    if member is None:
        return whole
    inputs = whole.inputs[member] if len(whole.inputs) > 1 else whole.inputs[0]
    return keras.Model(inputs, whole.outputs[member], name=f"{record.name}_member")
