"""The pool directory: the NWV state on disk, saved atomically, loaded with full checks.

A pool directory holds (format version 2; version 1 is read too):

  * `pool.npy` — the shared page pool, float32 [m, P] (`np.save` format).
  * `<name>.vnn` — a network's page table: magic `NWVPTBL1`, count n (uint64),
    n int32 pool page indices (little-endian; exactly 16 + 4n bytes).
  * `<name>.fisher.npy` — its diagonal Fisher at its original weights, in page
    layout, float32 [n, P]: for matching later networks and the penalty.
  * `<name>.teacher.npy` (optional) — the network's original weights before
    matching, float32 [n_weights] (its variables flattened in order): the
    teacher of distillation, so a pool can be re-optimised without the files it
    was built from. `teacher_asset` names the teacher's architecture (Keras
    JSON) when it is not the network's own (a zipped member's teacher is the
    separate network it came from).
  * `<name>.undo.npy` (optional) — the values the pool pages had before this
    network was matched onto them, float32 [k, P], with their page indices and
    the sha256 of their values right after the add in the manifest: while those
    pages are unchanged, removing the network restores them bit for bit.
  * assets — other files named in the manifest, e.g. a network's architecture
    as Keras JSON (`asset`) for networks that are not registered models.
  * `manifest.json` — written last: `format` ("nwv-pool"), `version`,
    `page_size`, `pool_pages`, the pool's `{file, bytes, sha256}`, and per
    network (in the order they were added): `task`, `model` (registered name,
    or a description when `asset` holds the architecture), `model_overrides`
    (builder keyword arguments), `asset`, `outputs` (a group network: the
    networks whose outputs it computes at once), `variable_names`,
    `variable_shapes` (of `model.trainable_variables`), `weights`, `pages`,
    `fisher_source`, `aligned`, and `{file, bytes, sha256}` of its table,
    Fisher and teacher.

Concurrency (`nwv.locking`): a save takes the directory's writer lock (failing
at once if another process writes it) and its commit lock; a load takes the
commit lock shared, so it never reads files of two different saves.

Atomic save (`save_state`): every changed data file is first written in full
beside its final name as `<file>.next` (temp file + `os.replace`); then the new
manifest replaces the old one — the commit point; then each `.next` replaces
its final name, and files of removed networks are deleted. A crash before the
commit leaves the old manifest and old files untouched (the old state loads);
a crash after it leaves `.next` files that the new manifest's checksums
identify, so `load_state` reads them and the next save finishes the renames.

`load_state` checks everything and names the file at fault: missing files,
truncation (byte counts), sha256 mismatches, an unknown format version, a pool
of the wrong shape or with NaN/inf, page indices outside the pool, page counts
that disagree with the variable shapes, negative or non-finite Fisher.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import struct

import numpy as np

from models import artifacts
from nwv import compaction, locking, matching, pages

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "POOL_FILE", "NetworkRecord",
           "PoolDirState", "save_state", "load_state", "read_manifest", "exists",
           "encode_page_table", "decode_page_table", "check_name", "check_table",
           "pages_digest"]

FORMAT, FORMAT_VERSION = "nwv-pool", 2
READABLE_VERSIONS = (1, 2)
# Version 1 kept a zipped member's architecture in model_overrides under this model name.
_V1_ZIPPED = "mtz_zipped"
MANIFEST, POOL_FILE = "manifest.json", "pool.npy"
TABLE_MAGIC = b"NWVPTBL1"
_HEADER = struct.Struct("<8sQ")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NEXT = ".next"


def check_name(name: str) -> str:
    """A network name usable as a file name (letters, digits, `_.-`), else ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(_NEXT):
        raise ValueError(f"expected a network name of letters, digits, '_', '.', '-' "
                         f"(not starting with '.' or '-'), received {name!r}")
    return name


@dataclasses.dataclass(kw_only=True)
class NetworkRecord:
    """One virtualized network: how to rebuild it and where its pages are.

    Attributes:
      name, task: network name and the task it serves (None for a group).
      model: registered model name (`models.build(model, **model_overrides)`), or
        a description when `asset` holds the architecture.
      model_overrides: keyword arguments for `models.build`.
      asset: file name of the architecture as Keras JSON among the pool's assets
        (None: build `model` from the registry).
      outputs: for a group network (a whole zipped model), the network names of
        its outputs, computed at once; None for a single-output network.
      variable_names, variable_shapes: of `model.trainable_variables`, in order.
      page_table: [n_pages] int32 pool page index of each of its pages.
      fisher: [n_pages, P] float32 diagonal Fisher in page layout (None when
        not loaded).
      fisher_source: how the Fisher was obtained ("reference" or "computed:<def>:<N>").
      aligned: page layout with every variable on a page boundary (zipped
        members, whose shared blocks are whole pages; see `pages.PageLayout`).
      teacher: [n] float32 original weights (distillation), or None.
      teacher_asset: asset holding the teacher's architecture when it is not
        the network's own (None: the network's architecture).
      undo: what removing the network restores, or None: {"pages": [k] int
        pool pages the add changed, "values": [k, P] float32 their values before,
        "after_sha256": digest of their values right after the add}.
      unloaded: parts `load_state` did not read ("fisher", "teacher", "undo");
        saving the record reads them from `source_dir` first, so a save never
        drops what a partial load left out.
      source_dir: the pool directory the record was read from.
    """
    name: str
    task: str | None
    model: str
    model_overrides: dict = dataclasses.field(default_factory=dict)
    asset: str | None = None
    outputs: tuple | None = None
    variable_names: tuple
    variable_shapes: tuple
    page_table: np.ndarray | None = None
    fisher: np.ndarray | None = None
    fisher_source: str = "computed"
    aligned: bool = False
    teacher: np.ndarray | None = None
    teacher_asset: str | None = None
    undo: dict | None = None
    unloaded: frozenset = frozenset()
    source_dir: str | None = None

    def layout(self, page_size: int) -> pages.PageLayout:
        """The network's `PageLayout` for pages of `page_size` weights."""
        return pages.PageLayout.from_shapes(self.variable_shapes, page_size, self.aligned)


@dataclasses.dataclass
class PoolDirState:
    """Everything in a pool directory: the pool [m, P], the networks in order, and
    assets {file name: bytes} (e.g. a zipped model's architecture), checksummed
    like every other file."""
    page_size: int
    pool: np.ndarray
    networks: dict
    assets: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, page_size: int) -> "PoolDirState":
        """A pool of no pages and no networks."""
        return cls(int(page_size), np.zeros((0, int(page_size)), np.float32), {})

    def pool_state(self) -> matching.PoolState:
        """The matching view: current pool values, summed Fisher and occupancy per page.

        Group networks (whose pages are their members') are not counted.
        """
        fisher = np.zeros_like(self.pool, dtype=np.float64)
        occupancy = np.zeros(self.pool.shape[0], np.int64)
        for record in self.networks.values():
            if record.outputs:
                continue
            if record.fisher is not None:
                np.add.at(fisher, record.page_table, record.fisher)
            np.add.at(occupancy, record.page_table, 1)
        return matching.PoolState(self.pool, fisher.astype(np.float32), occupancy)

    def stored_bytes(self) -> int:
        """Bytes a device stores for the pool: float32 pages plus int32 page tables
        of every network (groups included)."""
        return int(4 * self.pool.size + 4 * sum(r.page_table.size
                                               for r in self.networks.values()))

    def shrink(self, pages: int) -> int:
        """Merges the cheapest page pairs (`compaction.cheapest_merges`, Fisher-weighted
        means) until the pool holds at most `pages` pages; in place.

        Networks may then read one pool page for several of their pages. Undo records
        are dropped (their pages changed). Returns the pages removed.
        """
        drop = self.pool.shape[0] - int(pages)
        removed = 0
        while drop > 0:
            fisher = self.pool_state().fisher
            step = min(drop, self.pool.shape[0] // 2)
            if step < 1:
                raise ValueError(f"cannot shrink a pool of {self.pool.shape[0]} pages to "
                                 f"{pages}")
            sources, targets = compaction.cheapest_merges(self.pool, fisher, step)
            tables = {n: r.page_table for n, r in self.networks.items()}
            self.pool, _, tables, dropped = compaction.merge_pages(
                self.pool, fisher, tables, sources=sources, targets=targets)
            for name, table in tables.items():
                self.networks[name].page_table = table
                self.networks[name].undo = None
            removed += dropped
            drop -= dropped
        return removed

    def compact(self) -> int:
        """Drops pool pages no network uses and renumbers the tables and undo
        records (in place; an undo entry of a dropped page is dropped).

        Returns:
          The number of pages dropped.
        """
        tables = {n: r.page_table for n, r in self.networks.items()}
        undo = {n: np.asarray(r.undo["pages"]) for n, r in self.networks.items() if r.undo}
        self.pool, renumbered, dropped = compaction.compact(self.pool, tables, others={
            f"{n}\0undo": p for n, p in undo.items()})
        for name in tables:
            self.networks[name].page_table = renumbered[name]
        for name in undo:
            pages_, record = renumbered[f"{name}\0undo"], self.networks[name]
            keep = pages_ >= 0
            record.undo = {**record.undo, "pages": pages_[keep].astype(np.int64),
                           "values": np.asarray(record.undo["values"])[keep]}
        return dropped


def encode_page_table(table) -> bytes:
    """`.vnn` bytes: magic, uint64 count, int32 little-endian indices."""
    table = np.asarray(table)
    if table.ndim != 1 or (table.size and not np.issubdtype(table.dtype, np.integer)):
        raise ValueError(f"expected a 1-D integer page table, received {table.dtype} "
                         f"{table.shape}")
    return _HEADER.pack(TABLE_MAGIC, table.size) + table.astype("<i4").tobytes()


def decode_page_table(blob: bytes, where: str = "page table") -> np.ndarray:
    """Inverse of `encode_page_table`; ValueError naming `where` on a bad file."""
    if len(blob) < _HEADER.size or blob[:8] != TABLE_MAGIC:
        raise ValueError(f"{where}: expected a page table starting with {TABLE_MAGIC!r}, "
                         f"received {blob[:8]!r}")
    _, count = _HEADER.unpack_from(blob)
    expected = _HEADER.size + 4 * count
    if len(blob) != expected:
        raise ValueError(f"{where}: truncated or padded page table: expected {expected} "
                         f"bytes for {count} entries, received {len(blob)}")
    return np.frombuffer(blob, "<i4", count, _HEADER.size).astype(np.int32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()


def _npy_array(blob: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as err:  # ValueError / EOFError / UnpicklingError
        raise ValueError(f"{where}: not a readable .npy array: {err}") from err


def pages_digest(values) -> str:
    """sha256 of pages' float32 values (the undo records' "after_sha256")."""
    return _sha256(np.ascontiguousarray(values, np.float32).tobytes())


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _entry(file: str, blob: bytes) -> dict:
    return {"file": file, "bytes": len(blob), "sha256": _sha256(blob)}


def _manifest_files(manifest: dict) -> list:
    entries = [manifest.get("pool", {})]
    for net in manifest.get("networks", {}).values():
        if isinstance(net, dict):
            entries += [net.get("page_table", {}), net.get("fisher", {}),
                        net.get("teacher") or {}, net.get("undo") or {}]
    entries += list((manifest.get("assets") or {}).values())
    return [e for e in entries if isinstance(e, dict) and "file" in e]


def _manifest_or_empty(pool_dir: str) -> dict:
    try:
        return read_manifest(pool_dir)
    except (FileNotFoundError, ValueError):
        return {}


def _finish_commit(pool_dir: str) -> None:
    """Completes the renames of a save that crashed after its manifest was committed,
    then deletes leftover `.next` files of saves that crashed before committing."""
    for entry in _manifest_files(_manifest_or_empty(pool_dir)):
        path = os.path.join(pool_dir, entry["file"])
        if os.path.exists(path + _NEXT) and not _matches(path, entry) \
                and _matches(path + _NEXT, entry):
            os.replace(path + _NEXT, path)
    for file in os.listdir(pool_dir):
        if file.endswith(_NEXT):
            os.remove(os.path.join(pool_dir, file))


def save_state(pool_dir: str, state: PoolDirState) -> dict:
    """Writes `state` into `pool_dir` atomically (see the module docstring).

    Args:
      pool_dir: the pool directory (created if missing).
      state: the `PoolDirState` to write.
    Returns:
      the manifest written.
    Raises:
      ValueError: a bad name, shapes that disagree, indices outside the pool,
        NaN/inf in the pool or the Fisher, `pool_dir` a file (nothing is written then).
      PoolBusyError: another process writes the pool (`nwv.locking`).
      PermissionError: the directory cannot be written.
    """
    _fill_unloaded(state)
    blobs, manifest = _encode(state)
    with locking.writer(pool_dir, wait=False, log=None), locking.committing(pool_dir):
        _finish_commit(pool_dir)
        old_files = {e["file"] for e in _manifest_files(_manifest_or_empty(pool_dir))}
        staged = []
        for file, blob in blobs.items():
            path = os.path.join(pool_dir, file)
            if _matches(path, _entry(file, blob)):
                continue                                  # unchanged: keep the file as is
            artifacts.atomic_write(path + _NEXT, lambda tmp, b=blob: _write_bytes(tmp, b))
            staged.append(path)
        artifacts.write_json(os.path.join(pool_dir, MANIFEST), manifest)   # commit point
        for path in staged:
            os.replace(path + _NEXT, path)
        for file in old_files - set(blobs):
            path = os.path.join(pool_dir, file)
            if os.path.exists(path):
                os.remove(path)
    return manifest


def _fill_unloaded(state: PoolDirState) -> None:
    """Reads the parts records left unloaded from their source pools (in place)."""
    for name, record in state.networks.items():
        if not record.unloaded:
            continue
        if record.source_dir is None or not exists(record.source_dir):
            raise ValueError(f"network {name!r}: its {sorted(record.unloaded)} were not "
                             f"loaded and its source pool is gone")
        source = load_state(record.source_dir, [name],
                            with_fisher="fisher" in record.unloaded,
                            with_teachers=bool({"teacher", "undo"} & record.unloaded))
        found = source.networks[name]
        if found.variable_shapes != record.variable_shapes:
            raise ValueError(f"network {name!r} changed in {record.source_dir} since it was "
                             f"loaded; reload it before saving")
        for part in record.unloaded:
            setattr(record, part, getattr(found, part))
        if "teacher" in record.unloaded:
            record.teacher_asset = found.teacher_asset
            if found.teacher_asset and found.teacher_asset not in state.assets:
                state.assets[found.teacher_asset] = source.assets[found.teacher_asset]
        record.unloaded = frozenset()


def _write_bytes(path: str, blob: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(blob)
        os.fsync(handle.fileno())


def _encode(state: PoolDirState):
    """(file -> bytes, manifest) of a state, after checking it is consistent."""
    pool = np.asarray(state.pool, np.float32)
    page_size = int(state.page_size)
    if pool.ndim != 2 or pool.shape[1] != page_size:
        raise ValueError(f"expected a pool of shape [m, {page_size}], received {pool.shape}")
    if not np.all(np.isfinite(pool)):
        raise ValueError("refusing to save a pool holding NaN/inf values")
    blobs = {POOL_FILE: _npy_bytes(pool)}
    networks = {}
    for name, record in state.networks.items():
        check_name(name)
        where = f"network {name!r}"
        layout = record.layout(page_size)
        table = np.asarray(record.page_table)
        check_table(table, layout.n_pages, pool.shape[0], where)
        fisher = np.asarray(record.fisher if record.fisher is not None else
                            np.zeros((layout.n_pages, page_size)), np.float32)
        _check_fisher(fisher, layout, where)
        table_file, fisher_file = f"{name}.vnn", f"{name}.fisher.npy"
        blobs[table_file] = encode_page_table(table)
        blobs[fisher_file] = _npy_bytes(fisher)
        for key in ("asset", "teacher_asset"):
            asset = getattr(record, key)
            if asset is not None and asset not in (state.assets or {}):
                raise ValueError(f"{where}: {key} {asset!r} is not among the assets")
        teacher = None
        if record.teacher is not None:
            flat = np.asarray(record.teacher, np.float32)
            if flat.ndim != 1 or not np.all(np.isfinite(flat)):
                raise ValueError(f"{where}: expected finite teacher weights [n], received "
                                 f"shape {flat.shape}")
            if record.teacher_asset is None and flat.size != layout.n_weights:
                raise ValueError(f"{where}: expected {layout.n_weights} teacher weights (its "
                                 f"own architecture), received {flat.size}")
            teacher_file = f"{name}.teacher.npy"
            blobs[teacher_file] = _npy_bytes(flat)
            teacher = {**_entry(teacher_file, blobs[teacher_file]),
                       "asset": record.teacher_asset}
        undo = None
        if record.undo is not None:
            values = np.asarray(record.undo["values"], np.float32)
            undo_pages = np.asarray(record.undo["pages"], np.int64)
            if values.shape != (undo_pages.size, page_size) or not np.all(np.isfinite(values)):
                raise ValueError(f"{where}: expected finite undo values of shape "
                                 f"{(undo_pages.size, page_size)}, received {values.shape}")
            undo_file = f"{name}.undo.npy"
            blobs[undo_file] = _npy_bytes(values)
            undo = {**_entry(undo_file, blobs[undo_file]), "pages": undo_pages.tolist(),
                    "after_sha256": str(record.undo["after_sha256"])}
        networks[name] = {
            "task": record.task, "model": record.model,
            "model_overrides": dict(record.model_overrides or {}),
            "asset": record.asset,
            "outputs": list(record.outputs) if record.outputs else None,
            "variable_names": list(record.variable_names),
            "variable_shapes": [list(s) for s in record.variable_shapes],
            "weights": layout.n_weights, "pages": layout.n_pages,
            "fisher_source": record.fisher_source, "aligned": bool(record.aligned),
            "page_table": _entry(table_file, blobs[table_file]),
            "fisher": _entry(fisher_file, blobs[fisher_file]),
            "teacher": teacher, "undo": undo,
        }
    assets = {}
    for file, blob in sorted((state.assets or {}).items()):
        if not _NAME.match(file) or file in blobs or file == MANIFEST:
            raise ValueError(f"expected an asset file name of letters, digits, '_.-' not "
                             f"clashing with pool files, received {file!r}")
        blobs[file] = bytes(blob)
        assets[file] = _entry(file, blobs[file])
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "page_size": page_size,
                "pool_pages": int(pool.shape[0]), "pool": _entry(POOL_FILE, blobs[POOL_FILE]),
                "networks": networks, "assets": assets}
    return blobs, manifest


def exists(pool_dir: str) -> bool:
    """True when `pool_dir` holds a manifest."""
    return os.path.exists(os.path.join(pool_dir, MANIFEST))


def read_manifest(pool_dir: str) -> dict:
    """The parsed manifest, with its format and version checked.

    Raises:
      FileNotFoundError: no manifest; ValueError: unreadable, or unknown format/version.
    """
    path = os.path.join(pool_dir, MANIFEST)
    if os.path.exists(pool_dir) and not os.path.isdir(pool_dir):
        raise ValueError(f"{pool_dir!r} is a file, not a pool directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no NWV pool at {pool_dir!r}: {path} is missing")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON manifest: {err}") from err
    found = manifest.get("format") if isinstance(manifest, dict) else manifest
    if found != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, received {found!r}")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unknown manifest version {manifest.get('version')!r} "
                         f"(this library reads versions {list(READABLE_VERSIONS)})")
    for key, kind in (("page_size", int), ("pool_pages", int), ("pool", dict),
                      ("networks", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path}: expected {key!r} of type {kind.__name__}, received "
                             f"{manifest.get(key)!r}")
    for name, net in manifest["networks"].items():
        if not isinstance(net, dict) or not {"task", "model", "variable_shapes",
                                             "variable_names"} <= set(net):
            raise ValueError(f"{path}: the entry of network {name!r} is not an object with "
                             f"task, model, variable_names and variable_shapes: "
                             f"{str(net)[:80]}")
    return manifest


def _matches(path: str, entry: dict) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) != entry.get("bytes"):
        return False
    with open(path, "rb") as handle:
        return _sha256(handle.read()) == entry.get("sha256")


def _read_checked(pool_dir: str, entry: dict, what: str) -> bytes:
    """The bytes of a manifest entry after size and sha256 checks (or its committed
    `.next` twin after a crash); errors name the file."""
    if not isinstance(entry, dict) or not {"file", "bytes", "sha256"} <= set(entry):
        raise ValueError(f"{os.path.join(pool_dir, MANIFEST)}: bad entry for {what}: "
                         f"{entry!r}")
    path = os.path.join(pool_dir, entry["file"])
    if not _matches(path, entry) and _matches(path + _NEXT, entry):
        path = path + _NEXT                           # committed, rename not yet done
    elif not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing ({what}, listed in {MANIFEST})")
    with open(path, "rb") as handle:
        blob = handle.read()
    if len(blob) != entry["bytes"]:
        raise ValueError(f"{path}: truncated or overwritten ({what}): expected "
                         f"{entry['bytes']} bytes, received {len(blob)}")
    if _sha256(blob) != entry["sha256"]:
        raise ValueError(f"{path}: checksum mismatch ({what}): expected sha256 "
                         f"{entry['sha256'][:16]}…, received {_sha256(blob)[:16]}…")
    return blob


def check_table(table: np.ndarray, n_pages: int, pool_pages: int, where: str) -> None:
    """Raises ValueError (naming `where`) unless `table` is [n_pages] indices into the pool.

    Args:
      table: the page table [n] ints.
      n_pages: pages of the network's layout.
      pool_pages: pages of the pool.
      where: what to name in the message (a network or a file).
    """
    table = np.asarray(table)
    if table.shape != (n_pages,):
        raise ValueError(f"{where}: expected a page table of {n_pages} entries, "
                         f"received {table.shape}")
    if table.size and (table.min() < 0 or table.max() >= pool_pages):
        raise ValueError(f"{where}: page index outside the pool: expected indices in "
                         f"[0, {pool_pages}), received values in [{table.min()}, "
                         f"{table.max()}]")


def _check_fisher(fisher, layout, where):
    if fisher.shape != (layout.n_pages, layout.page_size):
        raise ValueError(f"{where}: expected Fisher pages of shape "
                         f"{(layout.n_pages, layout.page_size)}, received {fisher.shape}")
    if not np.all(np.isfinite(fisher)) or (fisher.size and fisher.min() < 0):
        raise ValueError(f"{where}: expected finite non-negative Fisher values")


def _load_file(pool_dir, entry, what, decode):
    """(decode(checked bytes, path), path) of a manifest entry."""
    path = os.path.join(pool_dir, entry["file"] if isinstance(entry, dict) and "file" in entry
                        else "?")
    return decode(_read_checked(pool_dir, entry, what), path), path


def _record(name: str, net: dict, version: int) -> NetworkRecord:
    """A NetworkRecord (tables, Fisher and teacher not read yet) from a manifest entry."""
    overrides = dict(net.get("model_overrides") or {})
    asset, outputs = net.get("asset"), net.get("outputs")
    if version == 1 and net["model"] == _V1_ZIPPED:   # v1: architecture in the overrides
        asset, outputs = overrides.pop("asset", None), overrides.pop("outputs", None)
    return NetworkRecord(
        name=check_name(name), task=net["task"], model=net["model"], model_overrides=overrides,
        asset=asset, outputs=tuple(outputs) if outputs else None,
        variable_names=tuple(net["variable_names"]),
        variable_shapes=tuple(tuple(int(d) for d in s) for s in net["variable_shapes"]),
        fisher_source=net.get("fisher_source", ""), aligned=bool(net.get("aligned", False)),
        teacher_asset=(net.get("teacher") or {}).get("asset"))


def load_state(pool_dir: str, names=None, *, with_fisher: bool = True,
               with_teachers: bool = False) -> PoolDirState:
    """Reads and checks a pool directory.

    Args:
      pool_dir: the folder.
      names: networks to read (default all); the others are not opened.
      with_fisher: read the Fisher files (else `record.fisher` is None).
      with_teachers: read the teachers' weights and undo records (else
        `record.teacher` and `record.undo` are None).

    Returns:
      PoolDirState (networks in the order they were added).

    Raises:
      FileNotFoundError / ValueError naming the file: see the module docstring;
      KeyError for a name that is not in the pool.
    """
    with locking.reading(pool_dir):
        return _load_state(pool_dir, names, with_fisher, with_teachers)


def _load_state(pool_dir, names, with_fisher, with_teachers) -> PoolDirState:
    manifest = read_manifest(pool_dir)
    where = os.path.join(pool_dir, MANIFEST)
    page_size, pool_pages = manifest["page_size"], manifest["pool_pages"]
    if page_size < 1:
        raise ValueError(f"{where}: expected page_size >= 1, received {page_size}")
    pool_path = os.path.join(pool_dir, POOL_FILE)
    pool = _npy_array(_read_checked(pool_dir, manifest["pool"], "the page pool"), pool_path)
    if pool.dtype != np.float32 or pool.shape != (pool_pages, page_size):
        raise ValueError(f"{pool_path}: expected a float32 pool of shape "
                         f"{(pool_pages, page_size)}, received {pool.dtype} {pool.shape}")
    if not np.all(np.isfinite(pool)):
        raise ValueError(f"{pool_path}: the pool holds "
                         f"{int(np.sum(~np.isfinite(pool)))} NaN/inf value(s)")
    available = manifest["networks"]
    names = list(available) if names is None else list(names)
    for name in names:
        if name not in available:
            raise KeyError(f"no network {name!r} in {pool_dir}; it holds "
                           f"{sorted(available) or 'no networks'}")
    networks = {}
    for name in names:
        net = available[name]
        try:
            record = _record(name, net, manifest["version"])
            layout = record.layout(page_size)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where}: bad entry for network {name!r}: {err!r}") from err
        if (net.get("weights"), net.get("pages")) != (layout.n_weights, layout.n_pages):
            raise ValueError(f"{where}: network {name!r} lists {net.get('weights')} weights "
                             f"in {net.get('pages')} pages, but its variable shapes hold "
                             f"{layout.n_weights} weights in {layout.n_pages} pages")
        record.page_table, path = _load_file(pool_dir, net.get("page_table"),
                                             f"page table of {name!r}", decode_page_table)
        check_table(record.page_table, layout.n_pages, pool_pages, path)
        record.source_dir = pool_dir
        record.unloaded = frozenset(
            ([] if with_fisher else ["fisher"]) + ([] if with_teachers else ["teacher", "undo"]))
        if with_fisher:
            record.fisher, path = _load_file(pool_dir, net.get("fisher"),
                                             f"Fisher of {name!r}", _npy_array)
            _check_fisher(record.fisher, layout, path)
        if with_teachers and net.get("teacher"):
            record.teacher, path = _load_file(pool_dir, net["teacher"],
                                              f"teacher of {name!r}", _npy_array)
            if record.teacher.ndim != 1 or not np.all(np.isfinite(record.teacher)):
                raise ValueError(f"{path}: expected finite teacher weights [n], received "
                                 f"shape {record.teacher.shape}")
        if with_teachers and net.get("undo"):
            values, path = _load_file(pool_dir, net["undo"], f"undo pages of {name!r}",
                                      _npy_array)
            undo_pages = np.asarray(net["undo"].get("pages", []), np.int64)
            if values.shape != (undo_pages.size, page_size) or (
                    undo_pages.size and (undo_pages.min() < 0 or undo_pages.max() >= pool_pages)):
                raise ValueError(f"{path}: undo pages do not fit the pool")
            record.undo = {"pages": undo_pages, "values": values,
                           "after_sha256": net["undo"].get("after_sha256", "")}
        networks[name] = record
    assets = {file: _read_checked(pool_dir, entry, f"asset {file}")
              for file, entry in (manifest.get("assets") or {}).items()}
    return PoolDirState(page_size, pool, networks, assets)
