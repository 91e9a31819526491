"""Locks on pool directories: one writer at a time; readers never see half a save.

Two `fcntl.flock` locks per pool directory, on files beside the pool:

  * `.writer.lock` — exclusive, held for a whole read-modify-write operation
    (adding or removing a network, a joint optimisation, storing a zipped
    model): a second writer fails at once with `PoolBusyError` naming the
    holder's process, or waits for it (`wait=True`, or a timeout in seconds).
  * `.commit.lock` — exclusive while `nwv.state.save_state` writes and renames
    files, shared while `load_state` reads them: readers wait for a commit in
    progress (milliseconds), never for a whole optimisation.

Locks are reentrant within a process (a writer's own saves do not wait for
themselves) and released when the process dies, so a crash never leaves a
pool locked. A read-only pool directory (no lock file can be created) is read
without a lock: nothing can write it.

    with writer("runs/pool"):
        current = state.load_state("runs/pool")
        ...                                   # change it
        state.save_state("runs/pool", current)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

__all__ = ["PoolBusyError", "WRITER_LOCK", "COMMIT_LOCK", "writer", "committing", "reading"]

WRITER_LOCK, COMMIT_LOCK = ".writer.lock", ".commit.lock"

_held: dict = {}      # (real path of the lock file) -> [file descriptor, depth]


class PoolBusyError(RuntimeError):
    """Another process holds the pool directory's writer lock."""


def _holder(path: str) -> str:
    try:
        with open(path) as handle:
            pid = handle.read().strip()
        return f"process {pid}" if pid else "another process"
    except OSError:
        return "another process"


def _open(path: str, create: bool):
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except PermissionError:
        return None
    except OSError as err:
        if err.errno in (errno.EROFS, errno.ENOENT):
            return None
        raise


@contextlib.contextmanager
def _lock(pool_dir: str, file: str, *, exclusive: bool, wait, what: str, log=None):
    path = os.path.realpath(os.path.join(pool_dir, file))
    if path in _held:                       # reentrant: this process holds it already
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    fd = _open(path, create=True)
    if fd is None:                          # read-only directory: nothing can write it
        if exclusive:
            raise PermissionError(f"cannot write pool directory {pool_dir!r}: permission "
                                  f"denied (it is read-only for this user)")
        yield
        return
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is False:
                raise PoolBusyError(
                    f"pool {pool_dir!r} is being {what} by {_holder(path)}; retry when it "
                    f"is done, or pass --wait to wait for it") from None
            if log:
                log(f"waiting for pool {pool_dir!r} ({what} by {_holder(path)}) ...")
            deadline = None if wait is True else time.monotonic() + float(wait)
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise PoolBusyError(f"pool {pool_dir!r} is still being {what} by "
                                            f"{_holder(path)} after {wait} s") from None
                    time.sleep(0.05)
        if exclusive:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        _held[path] = [fd, 1]
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def writer(pool_dir: str, *, wait=False, log=print):
    """Context manager: this process is the pool directory's only writer.

    Args:
      pool_dir: the pool directory (created if missing).
      wait: False (fail at once if another process writes), True (wait), or a
        timeout in seconds.
      log: told once when waiting (None: silent).
    Raises:
      PoolBusyError: another writer holds the pool (and `wait` is False or ran out).
      PermissionError: the directory cannot be written.
      ValueError: `pool_dir` exists and is not a directory.
    """
    if os.path.exists(pool_dir) and not os.path.isdir(pool_dir):
        raise ValueError(f"{pool_dir!r} is a file, not a pool directory")
    try:
        os.makedirs(pool_dir, exist_ok=True)
    except PermissionError:
        raise PermissionError(f"cannot create pool directory {pool_dir!r}: permission "
                              f"denied") from None
    return _lock(pool_dir, WRITER_LOCK, exclusive=True, wait=wait, what="written", log=log)


def committing(pool_dir: str):
    """Context manager held while a save writes and renames files (waits for readers)."""
    return _lock(pool_dir, COMMIT_LOCK, exclusive=True, wait=True, what="committed")


def reading(pool_dir: str):
    """Context manager held while a load reads files (waits for a commit in progress)."""
    if not os.path.isdir(pool_dir):
        return contextlib.nullcontext()
    return _lock(pool_dir, COMMIT_LOCK, exclusive=False, wait=True, what="committed")
