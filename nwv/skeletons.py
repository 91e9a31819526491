"""Architectures of pool networks: registry models or Keras JSON assets, and teachers.

A pool network is executed by a *skeleton*, a Keras model whose variables give
the shapes (their values are never used: weights come from the page pool). A
network either names a registered model (`models.build(model, **overrides)`) or
keeps its architecture as Keras JSON (no weights) among the pool's assets,
named by its record's `asset`: any Keras model can be pooled that way, and a
zipped model's members and group are stored so (a member holds only the
blocks it uses, `mtz.ZippedModel.member_model`).

A network's *teacher* (its original weights before matching, for distillation)
is a model of the network's own architecture, or of the architecture in its
record's `teacher_asset` (a zipped member's separate network), carrying the
record's flat `teacher` weights.
"""
from __future__ import annotations

import keras
import numpy as np

import models
import mtz  # noqa: F401  (registers ZippedLayer and InputPad for deserialisation)


def model_from_json(blob: bytes, where: str) -> keras.Model:
    """A Keras model rebuilt from its JSON architecture.

    Args:
      blob: `model.to_json()` bytes.
      where: what to name in an error message.
    Returns:
      The model (fresh weights).
    Raises:
      ValueError: malformed JSON or config, naming `where`.
    """
    try:
        return keras.models.model_from_json(blob.decode())
    except Exception as err:  # malformed JSON or config surfaces as many types
        raise ValueError(f"{where}: cannot rebuild the architecture: {err}") from err


def _asset(record, assets, asset, cache, what):
    if asset not in assets:
        raise ValueError(f"network {record.name!r} needs asset {asset!r} ({what}), which the "
                         f"pool directory does not hold (it has {sorted(assets)})")
    if cache is None:
        return model_from_json(assets[asset], f"asset {asset} of {record.name!r}")
    if asset not in cache:
        cache[asset] = model_from_json(assets[asset], f"asset {asset} of {record.name!r}")
    return cache[asset]


def build_skeleton(record, assets: dict, cache: dict | None = None) -> keras.Model:
    """The skeleton model of a `state.NetworkRecord`.

    Args:
      record: the network's record.
      assets: {file: bytes} of the pool directory (`PoolDirState.assets`).
      cache: optional dict reused across calls so an asset is rebuilt once.
    Returns:
      A Keras model of the network's architecture.
    Raises:
      ValueError: an unknown model or a missing or malformed asset, naming the network.
    """
    if record.asset is None:
        return models.build(record.model, **record.model_overrides)
    return _asset(record, assets, record.asset, cache, "architecture")


def build_teacher(record, assets: dict, skeleton: keras.Model) -> keras.Model | None:
    """The network's teacher with its stored original weights, or None without one.

    Args:
      record: the network's record (`record.teacher` loaded).
      assets: the pool's assets.
      skeleton: the network's skeleton (cloned when the teacher shares its architecture).
    Returns:
      A Keras model carrying the teacher weights, or None.
    Raises:
      ValueError: teacher weights that do not fit the teacher architecture.
    """
    if record.teacher is None:
        return None
    if record.teacher_asset is None:
        model = keras.models.clone_model(skeleton)
    else:
        model = _asset(record, assets, record.teacher_asset, None, "teacher architecture")
    assign_flat(model, record.teacher, f"teacher of {record.name!r}")
    return model


def flat_weights(model: keras.Model) -> np.ndarray:
    """A model's trainable variables flattened in order into one float32 vector [n].

    Args:
      model: a Keras model.
    Returns:
      [sum of variable sizes] float32.
    """
    values = [np.asarray(v.numpy(), np.float32).ravel() for v in model.trainable_variables]
    return np.concatenate(values) if values else np.zeros(0, np.float32)


def assign_flat(model: keras.Model, flat: np.ndarray, where: str) -> None:
    """Assigns a flat vector (`flat_weights` order) to a model's trainable variables.

    Args:
      model: the Keras model (modified in place).
      flat: [n] values.
      where: what to name in an error message.
    Raises:
      ValueError: the vector's length differs from the model's weight count.
    """
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    flat = np.asarray(flat, np.float32)
    if flat.shape != (sum(sizes),):
        raise ValueError(f"{where}: expected {sum(sizes)} weights for model {model.name!r}, "
                         f"received {flat.shape}")
    offset = 0
    for variable, size in zip(model.trainable_variables, sizes):
        variable.assign(flat[offset:offset + size].reshape(variable.shape))
        offset += size
