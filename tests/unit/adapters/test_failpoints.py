"""Failpoints in a process: the watched file, the skewed clock, and the disk faults
(backend/adapters/failpoints.py, clock.py, disk/durable_io.py)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.adapters import failpoints
from backend.adapters.clock import RatedClock
from backend.adapters.disk import DurableRaftStorage, SyncFailed, durable_io, is_disk_full
from backend.adapters.failpoints import FailpointFile
from backend.core.failpoints import NO_FAILPOINTS, Failpoints
from backend.core.raft import Entry, HardState, Ready


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the watched file ---------------------------------------------------------------------


def test_a_missing_file_means_no_failpoints(tmp_path: Path) -> None:
    assert FailpointFile(tmp_path / "absent").current() == NO_FAILPOINTS


def test_the_file_is_looked_at_only_every_interval_and_reread_when_it_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replica-g1-1"
    path.write_text("")
    clock = FakeClock()
    watched = FailpointFile(path, interval=0.1, clock=clock)
    assert watched.current() == NO_FAILPOINTS
    path.write_text("wal.fsync=error\n")
    clock.now += 0.05
    assert watched.current() == NO_FAILPOINTS  # cached: not looked at yet
    clock.now += 0.06
    assert watched.current() == Failpoints(fsync_error=True)
    path.write_text("")
    clock.now += 0.1
    assert watched.current() == NO_FAILPOINTS
    path.write_text("clock.rate=2\n")
    path.unlink()
    clock.now += 0.1
    assert watched.current() == NO_FAILPOINTS


def test_a_malformed_line_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fp"
    clock = FakeClock()
    watched = FailpointFile(path, clock=clock)
    with caplog.at_level(logging.ERROR, logger="backend.adapters.failpoints"):
        for text in ("wal.fsync=oops\n", "wal.fsync=oops\nwal.write=enospc\n"):
            path.write_text(text)
            clock.now += 1
            watched.current()
    complaints = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(complaints) == 1 and "wal.fsync=oops" in complaints[0]
    assert watched.current() == Failpoints(write_enospc=True)


def test_without_the_variable_no_file_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_file", None)
    assert not failpoints.enabled() and failpoints.current() == NO_FAILPOINTS


# ---- the clock --------------------------------------------------------------------------


def test_the_clock_runs_at_the_rate_set_without_jumping() -> None:
    real = FakeClock()
    rate = [1.0]
    clock = RatedClock(lambda: rate[0], real)
    assert clock() == 100.0
    real.now = 110.0
    assert clock() == 110.0
    rate[0] = 1.5
    assert clock() == 110.0  # no jump when the rate changes
    real.now = 112.0
    assert clock() == pytest.approx(113.0)
    rate[0] = 0.5
    assert clock() == pytest.approx(113.0)
    real.now = 116.0
    assert clock() == pytest.approx(115.0)
    rate[0] = 1.0  # cleared: runs at the real rate again, still without a jump
    assert clock() == pytest.approx(115.0)
    real.now = 117.0
    assert clock() == pytest.approx(116.0)
    assert clock.rate() == 1.0


# ---- the disk faults -----------------------------------------------------------------------


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A failpoint file in force for this process, re-read at every look."""
    path = tmp_path / "failpoints"
    path.write_text("")
    monkeypatch.setattr(failpoints, "_file", FailpointFile(path, interval=0.0))
    yield path


def ready_with(index: int, term: int = 1) -> Ready:
    return Ready(
        soft_state=None,
        hard_state=HardState(term, 1, 0),
        entries=(Entry(index, term, b"v%d" % index),),
        snapshot=None,
        committed_entries=(),
        messages=(),
        read_states=(),
        must_sync=True,
    )


def test_a_full_disk_refuses_the_write_and_leaves_the_log_as_it_was(
    tmp_path: Path, faults: Path
) -> None:
    storage = DurableRaftStorage(tmp_path / "replica")
    storage.bootstrap([1])
    storage.save(ready_with(2))
    faults.write_text("wal.write=enospc\n")
    with pytest.raises(OSError) as refused:
        storage.save(ready_with(3))
    assert is_disk_full(refused.value) and refused.value.errno == errno.ENOSPC
    faults.write_text("")
    storage.save(ready_with(3))  # the same Ready again, once there is space
    storage.close()
    entries = DurableRaftStorage(tmp_path / "replica").state.entries
    assert [e.index for e in entries] == [1, 2, 3]


def test_a_partial_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    durable_io.write_all(fd, b"before")
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        durable_io.write_all(fd, b"123456")
    monkeypatch.setattr(os, "write", real_write)
    durable_io.write_all(fd, b"after")
    durable_io.close(fd)
    assert path.read_bytes() == b"beforeafter"


def test_a_failed_fsync_raises_sync_failed(tmp_path: Path, faults: Path) -> None:
    storage = DurableRaftStorage(tmp_path / "replica")
    storage.bootstrap([1])
    faults.write_text("wal.fsync=error\n")
    with pytest.raises(SyncFailed) as failed:
        storage.save(ready_with(2))
    assert failed.value.errno == errno.EIO and not is_disk_full(failed.value)
    storage.close()


def test_unsynced_data_reaches_the_file_only_at_fsync(tmp_path: Path, faults: Path) -> None:
    faults.write_text("wal.unsynced=lose\n")
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    durable_io.write_all(fd, b"synced")
    durable_io.fsync(fd)
    durable_io.write_all(fd, b"-held")
    assert path.read_bytes() == b"synced"  # a kill -9 now would lose "-held"
    faults.write_text("")
    durable_io.write_all(fd, b"-after")  # behind what is held: order is kept
    assert path.read_bytes() == b"synced"
    durable_io.datasync(fd)
    assert path.read_bytes() == b"synced-held-after"
    durable_io.close(fd)


def test_a_failed_fsync_drops_what_was_held_back(tmp_path: Path, faults: Path) -> None:
    faults.write_text("wal.unsynced=lose\nwal.fsync=error\n")
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    durable_io.write_all(fd, b"lost")
    with pytest.raises(SyncFailed):
        durable_io.fsync(fd)
    faults.write_text("")
    durable_io.fsync(fd)
    durable_io.close(fd)
    assert path.read_bytes() == b""


def test_unsynced_log_records_are_lost_with_the_process(tmp_path: Path, faults: Path) -> None:
    storage = DurableRaftStorage(tmp_path / "replica")
    storage.bootstrap([1])
    faults.write_text("wal.unsynced=lose\n")
    storage.save(ready_with(2))  # synced
    storage.write(ready_with(3))  # written, not synced
    storage.close()  # as good as killed: nothing synced it
    entries = DurableRaftStorage(tmp_path / "replica").state.entries
    assert [e.index for e in entries] == [1, 2]
