"""The replica's background snapshots: a forked child writes the file, the parent waits
for it without blocking its event loop, and a stopped or failed writer leaves nothing
that is taken for a snapshot."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from backend.adapters.child_processes import die_with_parent
from backend.adapters.disk import DurableRaftStorage
from backend.adapters.disk.snapshot import SnapshotStore
from backend.core.raft import Config, Snapshot
from backend.core.replica.core import SnapshotJob
from backend.core.replica.state_machine import ReplicaStateMachine
from backend.processes.replica import staggered, stop_child, wait_for_exit, write_snapshot_in_child
from tests.support.waiting import wait_until

VOTERS = Config(voters=frozenset({1, 2, 3}))


def job_at(index: int, term: int = 2) -> SnapshotJob:
    machine = ReplicaStateMachine.restore(b"")
    machine.applied_index = index
    return SnapshotJob(index, term, VOTERS, machine)


def fork_writer(job: SnapshotJob, storage: DurableRaftStorage) -> int:
    arrange_death = die_with_parent()
    pid = os.fork()
    if pid == 0:
        write_snapshot_in_child(job, storage, arrange_death)
    return pid


async def wait_and_count_ticks(pid: int) -> tuple[int, int]:
    """The child's exit code, and how often the event loop ran meanwhile."""
    ticks = 0
    waiting = asyncio.create_task(wait_for_exit(pid))
    while not waiting.done():
        ticks += 1
        await asyncio.sleep(0.001)
    return waiting.result(), ticks


def test_a_forked_writer_saves_the_snapshot_while_the_loop_runs(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path)
    storage.bootstrap([1, 2, 3])
    job = job_at(7)
    code, ticks = asyncio.run(wait_and_count_ticks(fork_writer(job, storage)))
    assert code == 0 and ticks >= 1
    storage.snapshot_written(job.index)
    assert storage.load_snapshot(7) == job.encode()
    assert not list((tmp_path / "snap").glob("*.tmp"))
    assert DurableRaftStorage(tmp_path).state.snapshot == job.encode()  # what a restart loads
    storage.close()


def test_a_failing_writer_exits_nonzero_and_writes_nothing(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path)
    machine = ReplicaStateMachine.restore(b"")  # at index 0, not at the job's index
    job = SnapshotJob(5, 1, VOTERS, machine)
    code = asyncio.run(wait_for_exit(fork_writer(job, storage)))
    assert code == 1
    assert not list((tmp_path / "snap").iterdir())
    storage.close()


def test_a_killed_writer_leaves_no_snapshot_and_its_temporary_file_goes(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path)
    partial = tmp_path / "snap" / f"{9:016x}-{2:016x}.snap"
    pid = os.fork()
    if pid == 0:  # a writer stopped half way: only its temporary file exists
        partial.with_name(f"{partial.name}.{os.getpid()}.tmp").write_bytes(b"TRSNAP01 half")
        signal.pause()
        os._exit(0)
    temporary = partial.with_name(f"{partial.name}.{pid}.tmp")
    wait_until(temporary.exists, "the stopped writer's temporary file", 10, 0.01)
    with pytest.raises(FileNotFoundError):
        storage.load_snapshot(9)  # a temporary file is not taken for a snapshot
    stop_child(pid)
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive  # killed and reaped: no zombie either
    storage.discard_partial_snapshot(pid)
    assert not temporary.exists()
    storage.close()
    # a temporary file a crash left behind is neither loaded nor kept
    temporary.write_bytes(b"TRSNAP01 half")
    reopened = DurableRaftStorage(tmp_path)
    assert reopened.state.snapshot is None and not temporary.exists()
    reopened.close()


def test_a_written_snapshot_can_be_read_back_by_index(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    for index in (3, 6):
        store.write(Snapshot(index, 1, VOTERS, b"state-%d" % index))
    assert store.load(3).data == b"state-3"
    store.write(Snapshot(9, 1, VOTERS, b"state-9"))
    store.prune()
    assert sorted(p.name[:16] for p in tmp_path.glob("*.snap")) == [f"{6:016x}", f"{9:016x}"]
    with pytest.raises(FileNotFoundError, match="index 3"):
        store.load(3)


def test_the_members_of_a_group_snapshot_at_different_periods() -> None:
    periods = [staggered(10_000, member, [1, 2, 3]) for member in (1, 2, 3)]
    assert periods == [10_000, 11_666, 13_333]
    assert staggered(10_000, 1, [1]) == 10_000
    assert staggered(10_000, 4, [1, 2, 3]) == 10_000  # not (yet) a member: no offset
