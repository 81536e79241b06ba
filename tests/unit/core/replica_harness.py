"""A replica group of ReplicaCores in one process, for unit tests.

Each member has a simulated disk (the storage's own records and replay, as
backend/sim/raft_sim.py uses), so a member can crash and restart from what it
had persisted. Time is a number the test advances; messages between members
are delivered at once unless a link is cut or a member is down. Answers to
users are collected in `answers`.

Every member runs the product's ReplicaDriver (backend/core/replica/driver.py), as
the replica process does: a leader's entries leave before its own write, the
rest after. Snapshots go the driver's background way: encoded as of the moment
they are due, saved and compacted right after that Ready cycle or, with
`background_snapshots=True`, only at the next tick (the forked writer
finishing later); the bytes are read back from the disk when a follower needs
them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

from backend.core.raft import PersistentState, RaftOptions, Ready, Snapshot, bootstrap_state
from backend.core.replica.core import ReplicaCore, Send, SnapshotJob
from backend.core.replica.driver import ReplicaDriver
from backend.core.storage_records import encode_entry, encode_hard_state, records_for_ready, replay

REPLY = "reply"
TICK = 0.05


def inbox(member: int) -> str:
    return f"member/{member}"


def member_of(topic: str) -> int | None:
    return int(topic.split("/")[1]) if topic.startswith("member/") else None


class Disk:
    def __init__(self, state: PersistentState) -> None:
        self.initial = state
        self.records: list[bytes] = []
        self.snapshot: Snapshot | None = None

    def load(self) -> PersistentState:
        if not self.records and self.snapshot is None:
            return self.initial
        base = [
            *map(encode_entry, self.initial.entries),
            encode_hard_state(self.initial.hard_state),
        ]
        return replay(self.snapshot, [*base, *self.records])

    # ---- ReplicaStorage ---------------------------------------------------------------

    def save(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
        self.records.extend(records_for_ready(ready))

    def snapshot_written(self, index: int) -> None:
        """Nothing to free: the records stay, and replay skips what the snapshot covers."""

    def keep_snapshot(self, snapshot: Snapshot) -> None:
        """A background writer's file: the newest snapshot is the one a restart finds."""
        if self.snapshot is None or self.snapshot.index < snapshot.index:
            self.snapshot = snapshot


class Group:
    def __init__(
        self,
        members: int = 3,
        seed: int = 1,
        background_snapshots: bool = False,
        **core_options: Any,
    ) -> None:
        self.ids = list(range(1, members + 1))
        self.rng = random.Random(seed)
        self.core_options = core_options
        self.background_snapshots = background_snapshots
        self.writing: dict[int, tuple[SnapshotJob, Snapshot]] = {}
        self.snapshots_read = 0
        self.disks = {m: Disk(bootstrap_state(self.ids)) for m in self.ids}
        self.drivers: dict[int, ReplicaDriver] = {}
        self.cores: dict[int, ReplicaCore | None] = {m: self._start(m) for m in self.ids}
        self.now = 0.0
        self.cut: set[tuple[int, int]] = set()
        self.answers: list[dict[str, Any]] = []
        self.user_inbox: Callable[[dict[str, Any]], None] | None = None

    def _start(self, member: int) -> ReplicaCore:
        options = RaftOptions(election_ticks=10)
        core = ReplicaCore(
            "g1",
            member,
            self.disks[member].load(),
            inbox,
            random.Random(self.rng.getrandbits(32)),
            options,
            **self.core_options,
        )
        self.drivers[member] = ReplicaDriver(core, self.disks[member], partial(self.route, member))
        return core

    # ---- faults ---------------------------------------------------------------------------

    def crash(self, member: int) -> None:
        self.cores[member] = None
        del self.drivers[member]
        self.writing.pop(member, None)  # its snapshot writer dies with it

    def restart(self, member: int) -> None:
        self.cores[member] = self._start(member)

    def isolate(self, member: int) -> None:
        for other in self.ids:
            if other != member:
                self.cut |= {(member, other), (other, member)}

    def heal(self) -> None:
        self.cut.clear()

    # ---- running ----------------------------------------------------------------------------

    def core(self, member: int) -> ReplicaCore:
        core = self.cores[member]
        assert core is not None, f"member {member} is down"
        return core

    def leader(self) -> int | None:
        leaders = [m for m, c in self.cores.items() if c is not None and c.node.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def deliver(self, to: int, message: dict[str, Any], sender: int | None = None) -> None:
        core = self.cores[to]
        if core is None or (sender is not None and (sender, to) in self.cut):
            return
        self.drivers[to].receive(message, self.now)

    def route(self, sender: int, sends: list[Send]) -> None:
        for send in sends:
            member = member_of(send.topic)
            if member is not None:
                self.deliver(member, send.message, sender)
            else:
                self.answers.append(send.message)
                if self.user_inbox is not None:
                    self.user_inbox(send.message)

    def settle(self) -> None:
        """Run every member's Ready cycle until none has anything left to do."""
        busy = True
        while busy:
            busy = False
            for member in self.ids:
                driver = self.drivers.get(member)
                if driver is None:
                    continue
                self._background_work(member, driver)  # between Readys, as the adapter
                cycle = driver.next_cycle(self.now)
                if cycle is None:
                    continue
                busy = True
                driver.persist(cycle)
                driver.persisted(cycle, self.now)

    def _background_work(self, member: int, driver: ReplicaDriver) -> None:
        job = driver.snapshot_to_start(self.now)
        if job is not None:
            self.writing[member] = (job, job.encode())  # the state now, as a fork sees it
            if not self.background_snapshots:
                self._finish_snapshot(member)
        wanted = driver.snapshot_to_load(self.now)
        if wanted is None:
            return
        snapshot = self.disks[member].snapshot
        if snapshot is not None and snapshot.index == wanted:
            self.snapshots_read += 1
            driver.snapshot_loaded(snapshot)
        else:
            driver.snapshot_load_failed(self.now)

    def _finish_snapshot(self, member: int) -> None:
        if member not in self.writing:
            return
        job, snapshot = self.writing.pop(member)
        self.disks[member].keep_snapshot(snapshot)
        self.drivers[member].snapshot_written(job)

    def _finish_snapshots(self) -> None:
        for member in list(self.writing):
            self._finish_snapshot(member)

    def step(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.now += TICK
            self._finish_snapshots()
            for member in self.ids:
                driver = self.drivers.get(member)
                if driver is not None:
                    driver.tick(self.now)
            self.settle()

    def run_until(self, condition: Callable[[], Any], ticks: int = 400) -> None:
        for _ in range(ticks):
            if condition():
                return
            self.step()
        raise AssertionError("condition not reached")

    def elect(self) -> int:
        self.run_until(self.leader)
        leader = self.leader()
        assert leader is not None
        self.settle()
        return leader

    def answer(self, corr: str) -> dict[str, Any] | None:
        found = [a for a in self.answers if a["corr"] == corr]
        return found[-1] if found else None
