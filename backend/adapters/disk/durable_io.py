"""The write and fsync calls of the log and the snapshots, with their failpoints.

Every write to a log segment or snapshot file goes through `write_all`, every
fsync through `datasync`, `fsync` or `fsync_directory`, so the faults of
docs/operating.md, "Failpoints" strike exactly there:

- `wal.write=enospc`: `write_all` fails with ENOSPC before writing anything;
- `wal.fsync=error`: the sync calls fail with EIO (SyncFailed);
- `wal.unsynced=lose`: `write_all` holds the data back in memory and the next
  sync of that file writes it first, so a process killed meanwhile loses it,
  as a machine losing power loses what was not fsynced. A failed fsync drops
  what was held back, as Linux may drop the dirty pages of a failed writeback
  (PostgreSQL's "fsyncgate").

Without failpoints these are plain os calls. A write that fails part way is
undone (the file truncated back), so a full disk never leaves half a record
in the middle of the log.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from backend.adapters import failpoints

_held: dict[int, bytearray] = {}  # descriptor -> data written but held back until a sync
# a forked snapshot writer reuses descriptor numbers: the parent's held data is not its own
os.register_at_fork(after_in_child=_held.clear)


class SyncFailed(OSError):
    """An fsync failed. What was written since the last good one may be gone (the kernel
    may have dropped it), and a retry that succeeds proves nothing: the caller must not
    go on as if it were durable."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write refused for want of space (not an fsync failure)."""
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, SyncFailed)
        and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    )


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` at the file's position; on failure the file is as before."""
    if not failpoints.enabled():
        _write_through(fd, data)
        return
    faults = failpoints.current()
    if faults.write_enospc:
        raise OSError(errno.ENOSPC, "No space left on device (failpoint wal.write=enospc)")
    if faults.lose_unsynced or fd in _held:
        _held.setdefault(fd, bytearray()).extend(data)
        return
    _write_through(fd, data)


def datasync(fd: int) -> None:
    """fdatasync (fsync where there is none); SyncFailed if it fails."""
    _sync(fd, getattr(os, "fdatasync", os.fsync))


def fsync(fd: int) -> None:
    """fsync; SyncFailed if it fails."""
    _sync(fd, os.fsync)


def fsync_directory(directory: Path) -> None:
    """Make the names in `directory` (a rename, a new or deleted file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def close(fd: int) -> None:
    """Close `fd`; data still held back by `wal.unsynced=lose` is lost, as it was never
    synced."""
    _held.pop(fd, None)
    os.close(fd)


def _sync(fd: int, call: Callable[[int], None]) -> None:
    held = _held.pop(fd, None)
    if failpoints.enabled() and failpoints.current().fsync_error:
        raise SyncFailed(errno.EIO, "Input/output error (failpoint wal.fsync=error)")
    try:
        if held:
            _write_through(fd, bytes(held))
        call(fd)
    except OSError as exc:
        raise SyncFailed(exc.errno, f"fsync failed: {exc.strerror or exc}") from exc


def _write_through(fd: int, data: bytes) -> None:
    view = memoryview(data)
    written = 0
    try:
        while view:
            count = os.write(fd, view)
            view = view[count:]
            written += count
    except OSError:
        if written:
            _undo(fd, written)
        raise


def _undo(fd: int, written: int) -> None:
    """Cut the `written` bytes a failed write left at the end of the file."""
    try:
        os.ftruncate(fd, os.fstat(fd).st_size - written)
        os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        # half a record stays at the end: later appends would land after it
        raise SyncFailed(exc.errno, f"cannot undo a partial write: {exc}") from exc
