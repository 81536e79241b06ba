"""A replica group of ReplicaCores in one process, for unit tests.

Each member has a simulated disk (the storage's own records and replay, as
backend/sim/raft_sim.py uses), so a member can crash and restart from what it
had persisted. Time is a number the test advances; messages between members
are delivered at once unless a link is cut or a member is down. Answers to
users are collected in `answers`.

Snapshots are taken in line, or with `background_snapshots=True` as the
replica process takes them: encoded as of the moment they are due, saved and
compacted only at the next tick (the forked writer finishing later), and the
bytes read back from the disk when a follower needs them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from backend.raft import PersistentState, RaftOptions, Snapshot, bootstrap_state
from backend.replica.core import ReplicaCore, Send, SnapshotJob
from backend.storage.records import encode_entry, encode_hard_state, records_for_ready, replay

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
        self.cores: dict[int, ReplicaCore | None] = {m: self._start(m) for m in self.ids}
        self.now = 0.0
        self.cut: set[tuple[int, int]] = set()
        self.answers: list[dict[str, Any]] = []
        self.user_inbox: Callable[[dict[str, Any]], None] | None = None

    def _start(self, member: int) -> ReplicaCore:
        options = RaftOptions(election_ticks=10)
        return ReplicaCore(
            "g1",
            member,
            self.disks[member].load(),
            inbox,
            random.Random(self.rng.getrandbits(32)),
            options,
            **self.core_options,
        )

    # ---- faults ---------------------------------------------------------------------------

    def crash(self, member: int) -> None:
        self.cores[member] = None
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
        self.route(to, core.receive(message, self.now))

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
            for member, core in self.cores.items():
                if core is None:
                    continue
                if self.background_snapshots:
                    self._background_snapshot(member, core)  # between Readys, as the adapter
                self.route(member, core.flush(self.now))
                ready = core.next_ready()
                if ready is None:
                    continue
                busy = True
                disk = self.disks[member]
                if ready.snapshot is not None:
                    disk.snapshot = ready.snapshot
                disk.records.extend(records_for_ready(ready))
                self.route(member, core.after_persist(ready, self.now))
                if not self.background_snapshots:
                    snapshot = core.maybe_compact()
                    if snapshot is not None:
                        disk.snapshot = snapshot

    def _background_snapshot(self, member: int, core: ReplicaCore) -> None:
        disk = self.disks[member]
        if core.snapshot_due():
            job = core.start_snapshot()
            self.writing[member] = (job, job.encode())  # the state now, as a fork sees it
        wanted = core.snapshot_wanted()
        if wanted is not None and disk.snapshot is not None and disk.snapshot.index == wanted:
            self.snapshots_read += 1
            core.snapshot_loaded(disk.snapshot)

    def _finish_snapshots(self) -> None:
        for member, (job, snapshot) in list(self.writing.items()):
            del self.writing[member]
            disk = self.disks[member]
            if disk.snapshot is None or disk.snapshot.index < snapshot.index:
                disk.snapshot = snapshot
            self.core(member).snapshot_saved(job)

    def step(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.now += TICK
            self._finish_snapshots()
            for member, core in list(self.cores.items()):
                if core is not None:
                    self.route(member, core.tick(self.now))
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
