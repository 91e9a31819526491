"""Architectures of pool networks: registry models, or members of a zipped model.

A pool network is executed by a *skeleton*, a Keras model whose variables give
the shapes (their values are never used: weights come from the page pool).
Most networks name a registered model (`models.build(model, **overrides)`).
For a zipped multi-task network (`mtz`) each task is a network with model
`ZIPPED` whose architecture (Keras JSON, no weights) is an asset of the pool
directory, named in its overrides {"asset": "<name>.json"}: a task's model holds
only the blocks that task uses (`mtz.keras_build.member_model`). The whole
multi-task model is one more network, a group, with overrides
{"asset": ..., "outputs": [task names]} (shared layers computed once).
"""
from __future__ import annotations

import keras

import models

ZIPPED = "mtz_zipped"


def _from_json(blob: bytes, where: str) -> keras.Model:
    import mtz  # noqa: F401  (registers ZippedLayer and InputPad for deserialisation)

    try:
        return keras.models.model_from_json(blob.decode())
    except Exception as err:  # malformed JSON or config surfaces as many types
        raise ValueError(f"{where}: cannot rebuild the zipped architecture: {err}") from err


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
    asset = record.model_overrides.get("asset")
    if asset not in assets:
        raise ValueError(f"network {record.name!r} needs asset {asset!r}, which the pool "
                         f"directory does not hold (it has {sorted(assets)})")
    cache = {} if cache is None else cache
    if asset not in cache:
        cache[asset] = _from_json(assets[asset], f"asset {asset} of {record.name!r}")
    return cache[asset]
