"""`tf.data` pipelines for registered tasks, from local files or TensorFlow Datasets.

    ds = data.load("mnist", "train", data_dir="../shared/datasets", batch_size=128)
    x, y = next(iter(ds))       # x: [128, 28, 28, 1] float32, y: [128] int64

Local sources are decoded once per process and kept in memory when they are
small enough (`ZIPVIRT_MEMORY_CACHE` bytes per source split, default 1 GiB:
MNIST, CIFAR-10 and the keyword sets are), so later epochs, rounds and evaluations skip decoding;
larger ones stream files (paths shuffled, decoded in the map). A file that
cannot be decoded is named in the error. Without `data_dir` the task's TFDS
builder is used (downloads on first use, as on Colab).

A later `load` of the same split is cheap (joint optimisation builds one per
network every round): the split's listing, its in-memory dataset and the traced
preprocessing are reused, and a task's `batch_features` (the keyword MFCC) runs
once per batch. None of this changes a value.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from data import local
from data.spec import AUDIO, SPLITS, TaskSpec, get

AUTOTUNE = tf.data.AUTOTUNE


def _source_files(spec: TaskSpec, split: str, data_dir: str):
    """(the source task's FileList, indices kept, their labels) of a task's split."""
    if spec.multilabel:
        files = local.list_multilabel_files(spec, split, data_dir)
        return files, np.arange(len(files.paths)), files.labels
    source = get(spec.source_task) if spec.source_task else spec
    files = local.list_files(source, split, data_dir)
    if spec.label_map is None:
        return files, np.arange(len(files.paths)), files.labels
    labels = np.asarray(spec.label_map, np.int64)[files.labels]
    keep = np.flatnonzero(labels >= 0)
    return files, keep, labels[keep]


def _files(spec: TaskSpec, split: str, data_dir: str) -> local.FileList:
    files, keep, labels = _source_files(spec, split, data_dir)
    return local.FileList(tuple(files.paths[i] for i in keep), labels, spec.class_names)


def num_examples(task: str, split: str, data_dir: str) -> int:
    """Number of local examples of a task's split.

    Args:
      task: registered task; split: "train", "validation" or "test".
      data_dir: local data folder or tarball(s) (TFDS is not counted).
    Returns:
      The count (after a derived task's label map drops examples).
    Raises:
      ValueError / FileNotFoundError: as `data.load`.
    """
    return len(_files(get(task), split, data_dir).paths)


def _decode(spec: TaskSpec, path):
    contents = tf.io.read_file(path)
    if spec.kind == AUDIO:
        audio, _ = tf.audio.decode_wav(contents, desired_channels=1)
        return audio[:, 0]
    image = tf.io.decode_image(contents, channels=spec.channels, expand_animations=False)
    image.set_shape([None, None, spec.channels])
    return image


_DECODED: dict = {}          # (kind, channels, paths) -> (examples, lengths) or None


def _memory_limit() -> int:
    return int(os.environ.get("ZIPVIRT_MEMORY_CACHE", 1 << 30))


def _decode_all(spec: TaskSpec, paths: tuple):
    """Every file decoded, in order; a file that fails is named."""
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda p: _decode(spec, p), num_parallel_calls=AUTOTUNE, deterministic=True)
    out = []
    try:
        for x in ds.as_numpy_iterator():
            out.append(x)
    except tf.errors.OpError as err:
        bad = paths[len(out)]
        raise ValueError(f"{bad}: cannot decode this {spec.kind} file "
                         f"({err.message.splitlines()[0][:120]}); fix or remove it") from None
    return out


def _decoded(spec: TaskSpec, files: local.FileList):
    """(examples [n, ...], lengths [n] or None) of every file, decoded once per process,
    or None when they would not fit `ZIPVIRT_MEMORY_CACHE` (then files are streamed)."""
    key = (spec.kind, spec.channels, files.paths)
    if key in _DECODED:
        return _DECODED[key]
    if spec.kind == AUDIO:    # padded to the longest clip: 16-bit PCM -> float32, x2
        per_example = 2 * max(os.path.getsize(p) for p in files.paths)
    else:
        per_example = _decode_all(spec, files.paths[:1])[0].nbytes
    if per_example * len(files.paths) > _memory_limit():
        _DECODED[key] = None
        return None
    examples = _decode_all(spec, files.paths)
    if spec.kind == AUDIO:               # ragged clips: zero-padded, with their lengths
        lengths = np.asarray([len(a) for a in examples], np.int64)
        padded = np.zeros((len(examples), int(lengths.max())), np.float32)
        for i, a in enumerate(examples):
            padded[i, :len(a)] = a
        _DECODED[key] = (padded, lengths)
    elif len({e.shape for e in examples}) == 1:
        _DECODED[key] = (np.stack(examples), None)
    else:                                # images of several sizes: stream them
        _DECODED[key] = None
    return _DECODED[key]



_IN_MEMORY: dict = {}        # (paths, kept indices, labels) -> unshuffled in-memory dataset


def _in_memory(files, decoded, keep, labels) -> tf.data.Dataset:
    """The unshuffled dataset of (example, label) of the kept decoded examples, built
    once per process and split: a new one copies the examples (100 MB for CIFAR-10)
    into a fresh tensor, and training builds every network's dataset every round."""
    key = (files.paths, keep.tobytes(), labels.tobytes())
    if key not in _IN_MEMORY:
        examples, lengths = decoded
        if lengths is None:
            ds = tf.data.Dataset.from_tensor_slices((examples[keep], labels))
        else:
            ds = tf.data.Dataset.from_tensor_slices(
                (examples[keep], lengths[keep], labels)).map(lambda a, n, y: (a[:n], y))
        _IN_MEMORY[key] = ds
    return _IN_MEMORY[key]


def _local_examples(spec: TaskSpec, split: str, data_dir: str, shuffle: bool, seed: int,
                    limit: int | None):
    """A dataset of decoded (example, label) of a local split, in memory when small."""
    files, keep, labels = _source_files(spec, split, data_dir)
    decoded = _decoded(spec, files) if not limit else None    # quick runs: no bulk decode
    if decoded is None:
        paths = [files.paths[i] for i in keep]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        elif limit:  # files are stored class by class: a fixed random subset instead
            ds = ds.shuffle(len(paths), seed=0, reshuffle_each_iteration=False)
        if limit:
            ds = ds.take(limit)
        return ds.map(lambda p, y: (_decode(spec, p), y), num_parallel_calls=AUTOTUNE,
                      deterministic=True)
    ds = _in_memory(files, decoded, keep, labels)
    if shuffle:
        ds = ds.shuffle(len(keep), seed=seed, reshuffle_each_iteration=True)
    return ds


def _tfds_examples(spec: TaskSpec, split: str):
    if spec.tfds_name is None:
        raise ValueError(f"task {spec.name!r} has no TensorFlow Datasets source: pass "
                         f"--data_dir with the layout {spec.name}/<split>/<class>/<file>")
    import tensorflow_datasets as tfds  # imported lazily: heavy and only for TFDS use

    tfds_split = spec.tfds_splits.get(split, split)
    try:
        ds = tfds.load(spec.tfds_name, split=tfds_split, shuffle_files=False)
    except ImportError as err:      # a module TFDS imports lazily is not installed
        raise RuntimeError(f"TensorFlow Datasets cannot load {spec.tfds_name!r} for task "
                           f"{spec.name!r}: {err} (install it with pip; "
                           f"`pip install -e .` installs what TFDS needs)") from err
    except OSError as err:          # requests' ConnectionError is an OSError
        raise RuntimeError(f"could not download TFDS dataset {spec.tfds_name!r} for task "
                           f"{spec.name!r}: {str(err)[:200]}; offline, pass --data_dir with "
                           f"local files in the layout {spec.name}/<split>/<class>/<file>"
                           ) from err
    except Exception as err:        # missing builder, manual download, bad split
        raise RuntimeError(f"could not load TFDS dataset {spec.tfds_name!r} split "
                           f"{tfds_split!r} for task {spec.name!r}: {err}") from err
    x_key, y_key = spec.tfds_keys

    def unpack(ex):
        x = ex[x_key]
        if spec.kind == AUDIO:
            x = tf.cast(x, tf.float32) / 32768.0
        y = ex[y_key]
        if spec.multilabel:
            y = tf.cast(tf.stack([y[k] for k in sorted(y)]), tf.float32)
        elif spec.label_map is not None:
            y = tf.gather(tf.constant(spec.label_map, tf.int64), tf.cast(y, tf.int64))
        return x, y

    ds = ds.map(unpack, num_parallel_calls=AUTOTUNE)
    if spec.label_map is not None and not spec.multilabel:
        ds = ds.filter(lambda x, y: y >= 0)
    return ds


_TRACED: dict = {}           # a task's preprocess / augment function -> its tf.function


def _traced(fn):
    """`fn` as a `tf.function`, so a map calling it traces `fn` once per process and
    input signature rather than at every `load` (tracing the MFCC took 0.13 s, paid by
    every network every round). Same ops, so the same values."""
    if fn not in _TRACED:
        _TRACED[fn] = tf.function(fn)
    return _TRACED[fn]


def load(task: str, split: str, data_dir: str | None = None, batch_size: int = 64, *,
         seed: int = 0, shuffle: bool | None = None, augment: bool = False,
         limit: int | None = None, drop_remainder: bool = False, repeat: bool = False,
         shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """A batched, prefetched dataset of (inputs, labels) for `task` and `split`.

    Args:
      task: registered task name (see `data.available()`).
      split: "train", "validation" or "test"; missing local splits are carved
        from train (see `data.local`).
      data_dir: local folder or tarball(s); None loads from TFDS.
      batch_size: examples per batch.
      seed: shuffling and augmentation seed (same seed, same order).
      shuffle: shuffle examples; defaults to True for "train".
      augment: apply the task's augmentation (train-time only).
      limit: keep `limit` examples, for quick runs: the first after shuffling, or
        without shuffling a fixed random subset (seed 0; local files are stored
        class by class, so a plain prefix would hold only the first classes).
      drop_remainder: drop a last partial batch.
      repeat: repeat the examples indefinitely before batching (reshuffled and
        re-augmented every pass, deterministically), so every batch is full.
      shard: (n, i): keep every n-th example from the i-th, after shuffling and
        augmentation and before batching, so n workers reading with the same seed
        together see exactly the examples one process would (distributed training).

    Returns:
      Dataset of (x [batch, *input_shape] float32, y [batch] int64, or
      [batch, attributes] float32 for multi-label tasks).

    Raises:
      ValueError / FileNotFoundError: unknown task or split, missing or
        malformed local data, naming what was looked for.
    """
    spec = get(task)
    if split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, received {split!r}")
    shuffle = (split == "train") if shuffle is None else shuffle
    if data_dir:
        ds = _local_examples(spec, split, data_dir, shuffle, seed, limit)
    else:
        ds = _tfds_examples(spec, split)
        if shuffle:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        if limit:
            ds = ds.take(limit)
    if repeat:
        ds = ds.repeat()
    if augment and spec.augment is not None:
        rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, rand.batch(2))).map(
            lambda xy, s: (_traced(spec.augment)(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE,
            deterministic=True)
    shape = spec.input_shape

    def prepare(x, y):
        x = _traced(spec.preprocess)(x)
        return (x if spec.batch_features else tf.ensure_shape(x, shape)), y

    def featurise(x, y):
        return tf.ensure_shape(_traced(spec.batch_features)(x), (None, *shape)), y

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    if shard is not None:
        count, index = shard
        if not 0 <= index < count:
            raise ValueError(f"expected shard (n, i) with 0 <= i < n, received {shard}")
        ds = ds.shard(count, index)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if spec.batch_features:
        ds = ds.map(featurise, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)
