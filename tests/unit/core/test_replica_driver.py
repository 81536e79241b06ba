"""ReplicaDriver (backend/core/replica/driver.py): the order of the Ready cycle it enforces, a
leader's entries leaving before its own write, and background snapshots with retries."""

from __future__ import annotations

import pytest

from backend.core.raft import Ready
from backend.core.replica.core import Send
from backend.core.replica.driver import ReplicaDriver
from tests.unit.core.replica_harness import Group


class Recorder:
    """Storage and outbox in one: what was saved and published, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.freed: list[int] = []

    def save(self, ready: Ready) -> None:
        self.events.append("save")

    def snapshot_written(self, index: int) -> None:
        self.freed.append(index)

    def publish(self, sends: list[Send]) -> None:
        self.events.extend("send" for _ in sends)


def elected_leader(group: Group) -> tuple[int, ReplicaDriver, Recorder]:
    """The group's leader, its driver now saving to and publishing into a Recorder."""
    leader = group.elect()
    recorder = Recorder()
    driver = ReplicaDriver(group.core(leader), recorder, recorder.publish)
    return leader, driver, recorder


def test_a_leaders_entries_leave_before_its_write_and_nothing_else_does() -> None:
    group = Group()
    leader, driver, recorder = elected_leader(group)
    group.core(leader).node.propose(b"x")
    cycle = driver.next_cycle(group.now)
    assert cycle is not None and cycle.sent_early
    assert recorder.events and set(recorder.events) == {"send"}
    recorder.events.clear()
    driver.persist(cycle)
    driver.persisted(cycle, group.now)
    assert recorder.events[0] == "save"


def test_the_cycle_refuses_to_run_out_of_order() -> None:
    group = Group()
    leader, driver, _ = elected_leader(group)
    group.core(leader).node.propose(b"x")
    cycle = driver.next_cycle(group.now)
    assert cycle is not None
    with pytest.raises(RuntimeError, match="before it was written"):
        driver.persisted(cycle, group.now)
    with pytest.raises(RuntimeError, match="not yet persisted"):
        driver.next_cycle(group.now)
    with pytest.raises(RuntimeError, match="between Ready cycles"):
        driver.snapshot_to_start(group.now)
    driver.persist(cycle)
    driver.persisted(cycle, group.now)
    assert not driver.in_cycle


def test_a_snapshot_frees_the_log_only_when_saved_and_a_failed_one_waits_to_retry() -> None:
    group = Group()
    leader, driver, recorder = elected_leader(group)
    core = group.core(leader)
    core.snapshot_every = 1
    job = driver.snapshot_to_start(group.now)
    assert job is not None and driver.snapshot_job is job
    assert driver.snapshot_to_start(group.now) is None  # one at a time
    assert recorder.freed == []
    driver.snapshot_failed(job, now=10.0)
    assert driver.snapshot_to_start(10.0 + driver.snapshot_retry / 2) is None
    job = driver.snapshot_to_start(10.0 + driver.snapshot_retry)
    assert job is not None
    assert driver.snapshot_written(job)
    assert recorder.freed == [job.index]
    assert core.node.log.snapshot.index == job.index
