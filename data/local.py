"""Find a task's files on local disk in the layout `<task>/<split>/<class>/<file>`.

`data_dir` may be (1) a folder holding `<task>/`, (2) the `<task>/` folder
itself, (3) a `.tar.gz` holding `<task>/...`, or (4) a folder of such tarballs
(`../shared/datasets` holds `mnist_train.tar.gz`, ...). Tarballs are extracted
once into a cache (`$ZIPVIRT_CACHE`, default `~/.cache/zipvirt`), atomically,
keyed by the tarball's path, size and modification time. Splits a source lacks
are carved from `train`: stratified per class, shuffled with the task's fixed
`carve_seed`, so the test carve never changes between runs or seeds.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import tarfile
import tempfile

import numpy as np

from data.spec import SPLITS, TaskSpec

_EXTENSIONS = {"image": (".png", ".jpg", ".jpeg"), "audio": (".wav",)}


@dataclasses.dataclass(frozen=True)
class FileList:
    """Files of one split: paths [n] and integer labels [n], in a fixed order."""

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]


def cache_dir() -> str:
    return os.environ.get("ZIPVIRT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "zipvirt"))


def extraction_dir(tarball: str) -> str:
    """The cache folder `extract` uses for `tarball` (keyed by its path, size, mtime)."""
    stat = os.stat(tarball)
    key = hashlib.sha1(f"{os.path.abspath(tarball)}:{stat.st_size}:{stat.st_mtime_ns}"
                       .encode()).hexdigest()[:16]
    name = os.path.basename(tarball).split(".")[0]
    return os.path.join(cache_dir(), "extracted", f"{name}-{key}")


def extract(tarball: str) -> str:
    """Extracts `tarball` into the cache once and returns the extraction folder."""
    target = extraction_dir(tarball)
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".partial-")
    try:
        with tarfile.open(tarball, "r:*") as archive:
            archive.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"cannot read tarball {tarball}: {err}") from err
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def task_roots(task: str, data_dir: str) -> list[str]:
    """Folders named `task` (holding split folders) found from `data_dir`.

    Raises:
      FileNotFoundError: naming `data_dir` and every place looked in.
    """
    looked = []
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} does not exist")
    candidates = []
    if os.path.isdir(data_dir):
        candidates += [os.path.join(data_dir, task)]
        if os.path.basename(os.path.normpath(data_dir)) == task:
            candidates.append(data_dir)
        tarballs = sorted(glob.glob(os.path.join(data_dir, f"{task}.tar.gz"))
                          + glob.glob(os.path.join(data_dir, f"{task}_*.tar.gz"))
                          + glob.glob(os.path.join(data_dir, f"{task}.tgz")))
    elif data_dir.endswith((".tar.gz", ".tgz", ".tar")):
        tarballs = [data_dir]
    else:
        raise ValueError(f"data_dir {data_dir!r} is neither a folder nor a .tar.gz")
    candidates += [os.path.join(extract(t), task) for t in tarballs]
    roots = []
    for c in candidates:
        looked.append(c)
        if os.path.isdir(c) and c not in roots:
            roots.append(c)
    if not roots:
        raise FileNotFoundError(
            f"no data for task {task!r} under {data_dir!r}: looked for "
            f"{', '.join(looked) or 'nothing'} and for tarballs {task}.tar.gz / "
            f"{task}_*.tar.gz; expected the layout {task}/<split>/<class>/<file>")
    return roots


_SCANNED: dict = {}     # (split folder, kind) -> (its stamp, {class: sorted paths})


def _stamp(folder):
    """Modification times (ns) of a split folder and of its class folders: adding,
    removing or renaming a file or a class changes one of them."""
    classes = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_dir())
    return os.stat(folder).st_mtime_ns, tuple(classes)


def _scan_folder(folder, kind):
    """{class: sorted paths} of one split folder, listed once per process while its
    folders are unchanged (a listing of 50,000 files takes tens of ms, and training
    loads a split every round)."""
    stamp = _stamp(folder)
    cached = _SCANNED.get((folder, kind))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = {}
    for cls in sorted(os.listdir(folder)):
        cdir = os.path.join(folder, cls)
        if not os.path.isdir(cdir) or cls.startswith((".", "_")):
            continue
        found[cls] = [os.path.join(cdir, f) for f in sorted(os.listdir(cdir))
                      if f.lower().endswith(_EXTENSIONS[kind])]
    _SCANNED[(folder, kind)] = (stamp, found)
    return found


def _scan_split(roots, split, kind):
    """{class: sorted paths} over every root holding `split`, or None."""
    found = {}
    for root in roots:
        folder = os.path.join(root, split)
        if os.path.isdir(folder):
            for cls, files in _scan_folder(folder, kind).items():
                found.setdefault(cls, []).extend(files)
    return found or None


def _labelled(by_class, class_names, where):
    unknown = sorted(set(by_class) - set(class_names))
    if unknown:
        raise ValueError(f"{where}: class folders {unknown} are not classes of the task "
                         f"(expected some of {list(class_names)})")
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        files = by_class.get(cls, [])
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{where}: no files found")
    return paths, np.asarray(labels, np.int64)


def _carve(labels, fractions, seed):
    """Stratified split of labels [n] into sorted train / validation / test indices."""
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_val, n_test = (int(round(f * len(idx))) for f in fractions)
        parts["validation"] += idx[:n_val].tolist()
        parts["test"] += idx[n_val:n_val + n_test].tolist()
        parts["train"] += idx[n_val + n_test:].tolist()
    return {s: np.sort(np.asarray(v, np.int64)) for s, v in parts.items()}


def list_files(spec: TaskSpec, split: str, data_dir: str) -> FileList:
    """The files and labels of `split` for the task `spec` under `data_dir`.

    Args:
      spec: the task's `TaskSpec`.
      split: "train", "validation" or "test" (carved from train when missing).
      data_dir: a folder, `<task>/` folder, tarball or folder of tarballs.
    Returns:
      A `FileList` (paths class by class, labels, class names).
    Raises:
      ValueError: unknown split, no files, unknown class folders; the message
        lists the splits that exist.
    """
    if split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, received {split!r}")
    roots = task_roots(spec.name, data_dir)
    class_names = spec.class_names
    where = f"task {spec.name!r} under {', '.join(roots)}"
    scanned = {s: _scan_split(roots, s, spec.kind) for s in SPLITS}
    if scanned[split] is not None and (split != "train" or all(scanned.values())):
        paths, labels = _labelled(scanned[split], class_names, f"{where}, split {split!r}")
        return FileList(tuple(paths), labels, class_names)
    if scanned["train"] is None:
        present = sorted({d for r in roots for d in os.listdir(r)
                          if os.path.isdir(os.path.join(r, d))})
        raise ValueError(f"{where}: no split {split!r} and no 'train' split to carve "
                         f"it from; splits present: {present}")
    paths, labels = _labelled(scanned["train"], class_names, f"{where}, split 'train'")
    fractions = tuple(0.0 if scanned[s] is not None else f
                      for s, f in zip(("validation", "test"), spec.carve_fractions))
    keep = _carve(labels, fractions, spec.carve_seed)[split]
    return FileList(tuple(paths[i] for i in keep), labels[keep], class_names)


def list_multilabel_files(spec: TaskSpec, split: str, data_dir: str) -> FileList:
    """Files of a multi-label task: `<task>/<split>/attributes.csv` beside the images.

    The CSV's header is `file,<attribute names in spec order>`; values are 0/1 or
    -1/1 (CelebA's convention), returned as float32 labels [n, attributes] in {0, 1}.
    """
    import csv

    for root in task_roots(spec.name, data_dir):
        table = os.path.join(root, split, "attributes.csv")
        if os.path.exists(table):
            break
    else:
        raise FileNotFoundError(f"task {spec.name!r}: no {split}/attributes.csv under "
                                f"{data_dir!r} (multi-label tasks are not carved)")
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0][1:]) != spec.class_names:
        raise ValueError(f"{table}: expected header file,{','.join(spec.class_names)}")
    try:
        labels = (np.asarray([r[1:] for r in rows[1:]], np.float32) > 0).astype(np.float32)
    except ValueError as err:
        raise ValueError(f"{table}: malformed attribute values ({err})") from err
    paths = tuple(os.path.join(os.path.dirname(table), r[0]) for r in rows[1:])
    return FileList(paths, labels, spec.class_names)
