"""`TaskSpec`: what a task is, declared once per task module, plus the task registry.

A task module (`data/tasks/<name>.py`) declares constants on top, one frozen
`TaskSpec` and a pure `preprocess`; registering it is one call. Derived tasks
(MNIST parity, CIFAR-10 vehicles vs animals, keyword subsets) reuse another
task's files through `source_task` and a `label_map`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Mapping

IMAGE, AUDIO = "image", "audio"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task: where its data comes from and how one example becomes a tensor.

    Attributes:
      name: registry name, also the folder name `<data_dir>/<name>/<split>/<class>/`.
      kind: `"image"` (PNG/JPEG files) or `"audio"` (16-bit PCM WAV files).
      input_shape: shape of one preprocessed example (no batch axis).
      class_names: folder names of the classes, in label order.
      preprocess: pure function, decoded example -> model input. Images arrive
        as uint8 [H, W, C] (C = `channels`), audio as float32 [samples] in [-1, 1].
        With `batch_features`, it yields that function's fixed-shape input instead.
      batch_features: optional pure function run once per batch after `preprocess`
        and batching, [batch, ...] -> [batch, *input_shape] (the keyword MFCC: one
        vectorised call instead of one per clip).
      tfds_name: TensorFlow Datasets name, or None when only local data exists.
      tfds_splits: split -> TFDS split string (slices carve missing splits).
      default_model: registered model trained for this task by default.
      channels: channels to decode images with (1 gray, 3 RGB).
      multilabel: labels are a vector of binary attributes (sigmoid head).
      source_task: for a derived task, the task whose files it reads.
      label_map: for a derived task, source label -> label (-1 drops the example).
      augment: optional pure function (example, seed pair) -> example, train only.
      carve_fractions: (validation, test) fractions carved from `train` when a
        source lacks those splits; stratified, seeded with `carve_seed`.
      sample_rate: audio sampling rate the features assume (Hz).
    """

    name: str
    _: dataclasses.KW_ONLY
    kind: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    preprocess: Callable
    tfds_name: str | None = None
    tfds_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tfds_keys: tuple[str, str] = ("image", "label")
    default_model: str | None = None
    channels: int = 3
    multilabel: bool = False
    source_task: str | None = None
    label_map: tuple[int, ...] | None = None
    augment: Callable | None = None
    batch_features: Callable | None = None
    carve_fractions: tuple[float, float] = (0.1, 0.1)
    carve_seed: int = 0
    sample_rate: int = 16000

    def __post_init__(self):
        if self.kind not in (IMAGE, AUDIO):
            raise ValueError(f"task {self.name!r}: expected kind 'image' or 'audio', "
                             f"received {self.kind!r}")
        if self.label_map is not None and max(self.label_map) + 1 != self.num_classes:
            raise ValueError(f"task {self.name!r}: label_map targets "
                             f"{max(self.label_map) + 1} classes, class_names has "
                             f"{self.num_classes}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Adds a task to the registry.

    Args:
      spec: the task's `TaskSpec`.
    Returns:
      `spec` (so a module can write `SPEC = register_task(TaskSpec(...))`).
    Raises:
      ValueError: a task of that name is already registered.
    """
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get(name: str) -> TaskSpec:
    """The registered task called `name`.

    Args:
      name: task name (`available()`).
    Returns:
      Its `TaskSpec`.
    Raises:
      ValueError: unknown name, with close matches.
    """
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} Registered tasks: "
                         f"{', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def available() -> list[str]:
    """Sorted names of the registered tasks.

    Returns:
      List of names.
    Raises:
      Nothing.
    """
    return sorted(_TASKS)
