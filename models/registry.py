"""Model registry: `@register_model`, `build(name, **overrides)`, `available()`.

Every registered builder returns a Keras 3 functional model whose layers carry
stable names (`conv1`, `fc1`, `logits`, ...): the zipping (`mtz`) and paging
(`nwv`) code address layers by name. Each entry carries a frozen `ModelInfo`
with the model's input shape, classes, first and classifier layer names and,
where they exist, reference weights and the accuracy they are known to reach.

Example:
    >>> import models
    >>> net = models.build("nwv_mnist")
    >>> net.count_params()
    45706
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Callable

import keras


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, without building it.

    Attributes:
      input_shape: shape of one input example (no batch axis).
      num_classes: width of the classifier (logits) layer.
      first_layer: name of the first weighted layer.
      classifier_layer: name of the logits layer (never shared by MTZ).
      default_task: task (see `data.available()`) the model is meant for.
      reference_weights: file name under `../shared/reference/nwv/`, if any.
      reference_accuracy: accuracy the reference weights are known to reach.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    first_layer: str
    _: dataclasses.KW_ONLY
    classifier_layer: str = "logits"
    default_task: str | None = None
    reference_weights: str | None = None
    reference_accuracy: float | None = None


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[..., keras.Model]
    info: ModelInfo
    defaults: dict


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, info: ModelInfo, /, **defaults):
    """Decorator registering `builder(**kwargs) -> keras.Model` under `name`.

    Args:
      name: registry name (`build(name)`).
      info: the model's `ModelInfo`.
      **defaults: keyword arguments bound for this entry, so one parametrised
        builder can serve several variants (the five NWV CNNs share one builder).
    Returns:
      The decorator; it returns the builder unchanged.
    Raises:
      ValueError: if `name` is already registered.
    """

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, info, dict(defaults))
        return builder

    return decorator


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} Registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def info(name: str) -> ModelInfo:
    """The `ModelInfo` of a registered model.

    Args:
      name: a registered name.
    Returns:
      Its `ModelInfo`.
    Raises:
      ValueError: unknown name (with close matches).
    """
    return _entry(name).info


def build(name: str, **overrides) -> keras.Model:
    """Builds a fresh, randomly initialised registered model.

    Args:
      name: a registered name, see `available()`.
      **overrides: builder keyword arguments replacing the entry's defaults
        (e.g. `build("vgg16", input_shape=(32, 32, 3), width=0.125)`).
    Returns:
      A new Keras functional model.
    Raises:
      ValueError: unknown name or an argument the builder does not take.
    """
    entry = _entry(name)
    kwargs = {**entry.defaults, **overrides}
    try:
        model = entry.builder(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from err
    return model


def available(pattern: str | None = None) -> list[str]:
    """Sorted registered model names.

    Args:
      pattern: optional glob (`"nwv_*"`).
    Returns:
      List of names.
    Raises:
      Nothing.
    """
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
