"""Deterministic simulation of one Raft group under faults, checking Raft's safety properties.

A seed fixes the scenario, the network's faults, crashes (losing unsynced
writes), membership changes and every election timeout, so a failing seed
replays exactly:

    python -m backend.sim.raft_sim --seed 1234 --trace

What it simulates and checks (from Figure 3 of the Raft paper, via
raft_safety.py): docs/architecture.md, "The Raft simulator".
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from backend.core.codec import pack, unpack
from backend.core.raft import (
    ConfChange,
    Config,
    ConfigChangeError,
    Entry,
    InstallSnapshot,
    Message,
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftNode,
    RaftOptions,
    ReadState,
    Ready,
    Snapshot,
    bootstrap_state,
    message_from_wire,
)
from backend.core.storage_records import encode_entry, encode_hard_state, records_for_ready, replay
from backend.sim import seeds
from backend.sim.raft_safety import RaftSafety

TICK = 10  # simulated time units per node tick; message delays are drawn in these units


class SafetyViolation(AssertionError):
    """A Raft property failed; the message says which, where and when."""


@dataclass(frozen=True)
class Scenario:
    seed: int
    voters: int
    spare: int  # further node ids membership changes may add
    options: RaftOptions
    chaos_ticks: int
    drop: float
    duplicate: float
    max_delay: int
    crash_chance: float  # per tick
    partition_chance: float
    change_chance: float
    propose_chance: float
    read_chance: float
    compact_every: int
    wire: bool  # send every message through to_wire/msgpack/from_wire
    # Added later, drawn last and from their own stream, so older seeds keep their runs
    # when these are zero (see REGRESSION_SEEDS in the tests).
    leader_crash_chance: float = 0.0  # per tick: leaders die with entries half replicated
    outbox_loss: float = 0.0  # chance a crash also loses the messages not yet delivered

    @classmethod
    def from_seed(cls, seed: int) -> Scenario:
        rng = random.Random(f"scenario-{seed}")
        voters = rng.choice([1, 3, 3, 3, 5, 5])
        election = rng.randint(4, 10)
        options = RaftOptions(
            election_ticks=election,
            heartbeat_ticks=rng.choice([1, 1, 2]),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            max_inflight=rng.choice([1, 2, 4, 64]),
            max_msg_bytes=rng.choice([1, 64, 1 << 20]),
        )
        return cls(
            seed=seed,
            voters=voters,
            spare=rng.choice([0, 1, 2]),
            options=options,
            chaos_ticks=rng.randint(80, 160),
            drop=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            max_delay=rng.choice([1, 5, 15, 30]),
            crash_chance=rng.choice([0.0, 0.01, 0.03]),
            partition_chance=rng.choice([0.0, 0.01, 0.04]),
            change_chance=rng.choice([0.0, 0.0, 0.03, 0.08]),
            propose_chance=rng.choice([0.3, 0.6]),
            read_chance=rng.choice([0.0, 0.1, 0.3]),
            compact_every=rng.choice([3, 10, 40, 1_000_000]),
            wire=rng.random() < 0.25,
            leader_crash_chance=rng.choice([0.0, 0.0, 0.02, 0.05]),
            outbox_loss=rng.choice([0.0, 0.5]),
        )


class SimDisk:
    """A replica's disk: records written, how many are fsynced, and the latest snapshot.

    Snapshots are durable when saved (the real store fsyncs before renaming).
    """

    def __init__(self, state: PersistentState | None = None) -> None:
        self.records: list[bytes] = []
        self.synced = 0
        self.snapshot: Snapshot | None = None
        if state is not None:
            self.records = [*map(encode_entry, state.entries), encode_hard_state(state.hard_state)]
            self.synced = len(self.records)

    def write(self, records: list[bytes]) -> None:
        self.records.extend(records)

    def fsync(self) -> None:
        self.synced = len(self.records)

    def crash(self, rng: random.Random) -> int:
        """Lose a random suffix of what was not fsynced; returns how many records were lost."""
        keep = rng.randint(self.synced, len(self.records))
        lost = len(self.records) - keep
        del self.records[keep:]
        self.synced = keep
        return lost

    def load(self) -> PersistentState:
        return replay(self.snapshot, self.records)


def state_machine_snapshot(index: int, digest: int) -> bytes:
    return msgpack.packb([index, digest])


class SimReplica:
    def __init__(self, sim: RaftSim, node_id: int, disk: SimDisk) -> None:
        self.sim = sim
        self.id = node_id
        self.disk = disk
        self.node: RaftNode | None = None
        self.incarnation = 0
        self.busy = False
        self.retired = False  # stopped for good: removed from the group
        self.sm_index = 0
        self.sm_digest = 0
        self.seen_commit = 0
        self.leader_term = 0
        self.lost_outbox: set[int] = set()  # incarnations whose unsent messages died with them

    def start(self) -> None:
        state = self.disk.load()
        rng = random.Random(self.sim.rng.getrandbits(64))
        self.node = RaftNode(self.id, state, rng, self.sim.scenario.options)
        self.incarnation += 1
        self.busy = False
        self.leader_term = 0
        self.sm_index, self.sm_digest = 0, 0
        self.seen_commit = self.node.log.snapshot.index
        if state.snapshot is not None:
            self._restore(state.snapshot)
        self.sim.trace(f"node {self.id} starts: term {self.node.term} last {self.node.last_index}")
        self.sim.schedule(self.sim.rng.randrange(1, TICK + 1), self._tick, self.incarnation)
        self.sim.observe(self)

    def crash(self) -> None:
        if self.node is None:
            return
        self.node = None
        if self.sim.fault_rng.random() < self.sim.scenario.outbox_loss:
            # messages the broker had not yet taken from the dead connection are lost too
            self.lost_outbox.add(self.incarnation)
        self.incarnation += 1
        lost = self.disk.crash(self.sim.rng)
        self.sim.stats["crashes"] += 1
        self.sim.stats["unsynced records lost"] += lost
        self.sim.trace(f"node {self.id} crashes, losing {lost} unsynced records")

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        self.node.tick()
        self.sim.observe(self)
        self.sim.schedule(TICK, self._tick, incarnation)

    # ---- the Ready cycle, as a replica process runs it ----------------------

    def kick(self) -> None:
        if self.node is not None and not self.busy and self.node.has_ready():
            self.busy = True
            self.sim.schedule(0, self._write, self.incarnation)

    def _write(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        ready = self.node.ready()
        if ready.snapshot is not None:
            self.disk.snapshot = ready.snapshot
        self.disk.write(records_for_ready(ready))
        self.sim.schedule(self.sim.rng.randint(0, 3), self._finish, incarnation, ready)

    def _finish(self, incarnation: int, ready: Ready) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        if ready.must_sync:
            self.disk.fsync()
        for message in ready.messages:
            self.sim.send(message, incarnation)
        if ready.snapshot is not None:
            self._restore(ready.snapshot)
        for entry in ready.committed_entries:
            self._apply(entry)
        for read in ready.read_states:
            self.sim.check_read(self, read)
        self.node.advance(ready)
        self.busy = False
        self._maybe_compact()
        self.sim.observe(self)

    # ---- the state machine: a running checksum of the applied log ------------

    def _apply(self, entry: Entry) -> None:
        if entry.index != self.sm_index + 1:
            self.sim.violation(
                f"node {self.id} applied index {entry.index} after {self.sm_index}: "
                "entries must be applied in log order without gaps"
            )
        digest = zlib.crc32(
            entry.data, zlib.crc32(entry.term.to_bytes(8, "little"), self.sm_digest)
        )
        self.sm_index, self.sm_digest = entry.index, digest
        self.sim.record_applied(self, entry, digest)

    def _restore(self, snapshot: Snapshot) -> None:
        index, digest = msgpack.unpackb(snapshot.data) if snapshot.data else (0, 0)
        if index != snapshot.index or self.sim.digests.get(index, digest) != digest:
            self.sim.violation(
                f"node {self.id} restored snapshot {snapshot.index} whose state is not "
                f"what applying the log through {index} produced"
            )
        self.sm_index, self.sm_digest = index, digest

    def _maybe_compact(self) -> None:
        node = self.node
        assert node is not None
        if node.log.pending_snapshot is not None:
            return
        if node.applied_index - node.log.snapshot.index >= self.sim.scenario.compact_every:
            data = state_machine_snapshot(self.sm_index, self.sm_digest)
            self.disk.snapshot = node.compact(node.applied_index, data)
            self.sim.stats["compactions"] += 1


@dataclass
class SimResult:
    seed: int
    stats: Counter[str] = field(default_factory=Counter)


class RaftSim:
    def __init__(self, scenario: Scenario, trace: bool = False) -> None:
        self.scenario = scenario
        self.rng = random.Random(f"run-{scenario.seed}")
        self.fault_rng = random.Random(f"faults-{scenario.seed}")  # for the later fault kinds
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.tracing = trace
        self.trace_lines: list[str] = []
        self.stats: Counter[str] = Counter()
        self.blocked: set[tuple[int, int]] = set()
        self.faults = True
        self.replicas: dict[int, SimReplica] = {}
        # what the checks remember
        self.safety = RaftSafety(self.violation)
        self.committed = self.safety.committed  # index -> the entry committed there
        self.digests: dict[int, int] = {}  # index -> state machine checksum after applying it
        self.proposals: dict[bytes, tuple[int, int, int]] = {}  # value -> (node, term, index)
        self.applied_at: dict[bytes, int] = {}
        self.acked: set[bytes] = set()
        self.reads: dict[bytes, int] = {}  # ctx -> highest commit index known when asked
        self._counter = itertools.count(1)
        founders = bootstrap_state(range(1, scenario.voters + 1))
        for node_id in range(1, scenario.voters + 1):
            self.replicas[node_id] = SimReplica(self, node_id, SimDisk(founders))

    # ---- event scheduling --------------------------------------------------------

    def schedule(self, delay: int, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action, args))

    def run_until(self, end: int, done: Callable[[], bool] | None = None) -> bool:
        while self._queue and self._queue[0][0] <= end:
            time, _, action, args = heapq.heappop(self._queue)
            self.now = time
            action(*args)
            if done is not None and done():
                return True
        self.now = max(self.now, end)
        return done is not None and done()

    def trace(self, line: str) -> None:
        if self.tracing:
            self.trace_lines.append(f"t={self.now:>6} {line}")

    def violation(self, what: str) -> None:
        self.trace(f"VIOLATION: {what}")
        raise SafetyViolation(f"seed {self.scenario.seed}, time {self.now}: {what}")

    # ---- the network ---------------------------------------------------------------

    def send(self, message: Message, incarnation: int) -> None:
        self.stats["messages"] += 1
        if (message.src, message.dst) in self.blocked:
            return
        if self.faults and self.rng.random() < self.scenario.drop:
            self.stats["dropped"] += 1
            return
        if self.scenario.wire:
            message = message_from_wire(unpack(pack(message.to_wire())))
        copies = 2 if self.faults and self.rng.random() < self.scenario.duplicate else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.scenario.max_delay)
            self.schedule(delay, self._deliver, message, incarnation)

    def _deliver(self, message: Message, incarnation: int) -> None:
        if incarnation in self.replicas[message.src].lost_outbox:
            return
        replica = self.replicas.get(message.dst)
        if replica is None or replica.node is None or (message.src, message.dst) in self.blocked:
            return
        if isinstance(message, InstallSnapshot):
            self.stats["snapshots sent"] += 1
        self.trace(f"{message.src}->{message.dst} {_describe(message)}")
        replica.node.step(message)
        self.observe(replica)

    # ---- checks ------------------------------------------------------------------

    def observe(self, replica: SimReplica) -> None:
        node = replica.node
        if node is None:
            return
        if node.is_leader and replica.leader_term != node.term:
            replica.leader_term = node.term
            self.stats["elections"] += 1
            self.trace(f"node {replica.id} leads term {node.term}")
            self.safety.new_leader(replica.id, node)
        if node.commit_index > replica.seen_commit:
            replica.seen_commit = self.safety.record_commits(replica.id, node, replica.seen_commit)
        replica.kick()

    def record_applied(self, replica: SimReplica, entry: Entry, digest: int) -> None:
        self.safety.check_applied(replica.id, entry)
        if self.digests.setdefault(entry.index, digest) != digest:
            self.violation(f"node {replica.id} reached a different state at index {entry.index}")
        if not entry.data:
            return
        first = self.applied_at.setdefault(entry.data, entry.index)
        if first != entry.index:
            self.violation(f"value {entry.data!r} committed twice, at {first} and {entry.index}")
        proposal = self.proposals.get(entry.data)
        if proposal == (replica.id, entry.term, entry.index):
            self.acked.add(entry.data)

    def check_read(self, replica: SimReplica, read: ReadState) -> None:
        needed = self.reads.pop(read.ctx, None)
        if needed is None:
            return  # a duplicate answer to a read already checked
        self.stats["reads"] += 1
        if read.index < needed:
            self.violation(
                f"linearizable read: node {replica.id} got read index {read.index} for "
                f"{read.ctx!r}, but index {needed} was committed before the read began"
            )

    def check_log_matching(self) -> None:
        self.safety.check_log_matching(
            (r.id, r.node) for r in self.replicas.values() if r.node is not None
        )

    # ---- what happens during the run -------------------------------------------------

    def _leader(self) -> SimReplica | None:
        leaders = [
            (r.node.term, r)
            for r in self.replicas.values()
            if r.node is not None and r.node.is_leader
        ]
        return max(leaders, key=lambda leader: leader[0], default=(0, None))[1]

    def _live(self) -> list[SimReplica]:
        return [r for r in self.replicas.values() if r.node is not None]

    def _chaos_tick(self) -> None:
        if not self.faults:
            return
        scenario = self.scenario
        roll = self.rng.random
        if roll() < scenario.crash_chance:
            self._crash_someone()
        if scenario.leader_crash_chance and self.fault_rng.random() < scenario.leader_crash_chance:
            self._crash_leader()
        if roll() < scenario.partition_chance:
            self._partition()
        if roll() < scenario.change_chance:
            self._change_membership()
        if roll() < scenario.propose_chance:
            self._propose()
        if roll() < scenario.read_chance:
            self._read()
        self.schedule(TICK, self._chaos_tick)

    def _crash_someone(self) -> None:
        live = self._live()
        if not live:
            return
        victim = self.rng.choice(live)
        victim.crash()
        downtime = self.rng.randint(1, 4 * self.scenario.options.election_ticks) * TICK
        self.schedule(downtime, self._restart, victim)

    def _crash_leader(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        leader.crash()
        downtime = self.fault_rng.randint(1, 2 * self.scenario.options.election_ticks) * TICK
        self.schedule(downtime, self._restart, leader)

    def _restart(self, replica: SimReplica) -> None:
        if replica.node is None and not replica.retired:
            replica.start()

    def _partition(self) -> None:
        if self.blocked and self.rng.random() < 0.5:
            self.trace("network heals")
            self.blocked.clear()
            return
        ids = sorted(self.replicas)
        side = {node for node in ids if self.rng.random() < 0.5}
        one_way = self.rng.random() < 0.3
        self.blocked = {
            (a, b)
            for a in ids
            for b in ids
            if (a in side) != (b in side) and not (one_way and a in side)
        }
        self.stats["partitions"] += 1
        self.trace(f"partition {sorted(side)} | rest{' (one way)' if one_way else ''}")
        heal_after = self.rng.randint(1, 6 * self.scenario.options.election_ticks) * TICK
        self.schedule(heal_after, self._heal, self.blocked)

    def _heal(self, blocked: set[tuple[int, int]]) -> None:
        if self.blocked is blocked:
            self.trace("network heals")
            self.blocked = set()

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None or leader.node is None:
            return
        config = leader.node.config
        ids = range(1, self.scenario.voters + self.scenario.spare + 1)
        choices: list[ConfChange] = []
        choices += [ConfChange.add_learner(n) for n in ids if n not in config.members]
        choices += [ConfChange.add_voter(n) for n in sorted(config.learners)]
        choices += [ConfChange.remove(n) for n in sorted(config.members)]
        choices += [ConfChange.add_learner(n) for n in sorted(config.voters)]
        if not choices:
            return
        change = self.rng.choice(choices)
        try:
            leader.node.propose_config_change(change)
        except (ProposalDropped, ConfigChangeError, NotLeader):
            return
        self.stats["membership changes proposed"] += 1
        self.trace(f"node {leader.id} proposes {change.op} {change.node}")
        if change.op != "remove":
            self._ensure_running(change.node)
        self.observe(leader)

    def _ensure_running(self, node_id: int) -> None:
        replica = self.replicas.get(node_id)
        if replica is None:
            replica = self.replicas[node_id] = SimReplica(self, node_id, SimDisk())
        replica.retired = False
        if replica.node is None:
            replica.start()

    def _propose(self) -> None:
        live = self._live()
        if not live:
            return
        leader = self._leader()
        replica = (
            leader if leader is not None and self.rng.random() < 0.8 else self.rng.choice(live)
        )
        node = replica.node
        assert node is not None
        for _ in range(self.rng.choice([1, 1, 2, 5])):
            value = f"v{next(self._counter)}".encode()
            try:
                index = node.propose(value)
            except (NotLeader, ProposalDropped):
                return
            self.proposals[value] = (replica.id, node.term, index)
            self.stats["proposed"] += 1
        self.observe(replica)

    def _read(self) -> None:
        live = self._live()
        if not live:
            return
        replica = self.rng.choice(live)
        assert replica.node is not None
        ctx = f"r{next(self._counter)}".encode()
        try:
            replica.node.read_index(ctx)
        except NotLeader:
            return
        self.reads[ctx] = self.safety.max_commit
        self.observe(replica)

    # ---- the run -----------------------------------------------------------------------

    def run(self) -> SimResult:
        for replica in list(self.replicas.values()):
            replica.start()
        self.schedule(TICK, self._chaos_tick)
        self.run_until(self.scenario.chaos_ticks * TICK)
        self._calm_down()
        self._check_liveness()
        self.check_log_matching()
        self.stats["acknowledged"] = len(self.acked)
        self.stats["committed"] = len(self.committed)
        return SimResult(self.scenario.seed, self.stats)

    def _calm_down(self) -> None:
        """Faults stop: the network heals, crashed members restart, removed servers stop."""
        self.faults = False
        self.blocked = set()
        members = self._committed_config().members
        for replica in self.replicas.values():
            if replica.id in members:
                replica.retired = False
                if replica.node is None:
                    replica.start()
            elif replica.node is not None:
                replica.crash()
                replica.retired = True
        self.trace(f"faults stop; members {sorted(members)}")

    def _committed_config(self) -> Config:
        config = Config()
        for index in sorted(self.committed):
            entry = self.committed[index]
            if entry.config is not None:
                config = entry.config
        return config

    def _check_liveness(self) -> None:
        """After the faults stop a leader must commit a new value that every member applies.

        Like a real client, retry with a fresh value when the leader it went to was
        deposed and its entry discarded. Catching up a long log over a slow network
        takes a while, so fail only when a whole window passes without any progress.
        """
        window = 30 * self.scenario.options.election_ticks * TICK
        attempt = itertools.count(1)
        progress = self._progress_mark()
        stalled_since = self.now
        while self.now - stalled_since < window:
            value = f"final-{next(attempt)}".encode()
            if self._propose_final(value) and self.run_until(
                self.now + window // 3, functools.partial(self._everyone_applied, value)
            ):
                return
            self.run_until(self.now + TICK)
            mark = self._progress_mark()
            if mark != progress:
                progress, stalled_since = mark, self.now
        applied = {n: r.sm_index for n, r in self.replicas.items() if r.node is not None}
        self.violation(
            f"liveness: no progress for {window} time units after the faults stopped "
            f"(applied: {applied}, committed config {self._committed_config()})"
        )

    def _progress_mark(self) -> tuple[int, ...]:
        """Changes whenever any replica applies or stores more of the log."""
        return tuple(
            r.sm_index * 1_000_000 + (r.node.last_index if r.node else 0)
            for r in self.replicas.values()
        )

    def _propose_final(self, value: bytes) -> bool:
        leader = self._leader()
        if leader is None or leader.node is None:
            return False
        try:
            index = leader.node.propose(value)
        except ProposalDropped:
            return False  # a membership change or transfer is finishing
        self.proposals[value] = (leader.id, leader.node.term, index)
        self.observe(leader)
        return True

    def _everyone_applied(self, value: bytes) -> bool:
        if value not in self.acked:
            return False
        members = self._committed_config().members
        for node_id in members:
            # a change proposed before the faults stopped may re-add a stopped server
            self._ensure_running(node_id)
        at = self.applied_at[value]
        return all(self.replicas[n].sm_index >= at for n in members)


def _describe(message: Message) -> str:
    fields = message.to_wire()
    fields.pop("src")
    fields.pop("dst")
    if "entries" in fields:
        fields["entries"] = [e[:2] for e in fields["entries"]]
    if isinstance(message, InstallSnapshot):
        fields["snapshot"] = (message.snapshot.index, message.snapshot.term)
    return " ".join(f"{k}={v}" for k, v in fields.items())


def run_seed(seed: int, trace: bool = False) -> SimResult:
    return RaftSim(Scenario.from_seed(seed), trace=trace).run()


def as_first_found(seed: int) -> Scenario:
    """A seed's scenario without the fault kinds added after the first regression seeds."""
    return replace(Scenario.from_seed(seed), leader_crash_chance=0.0, outbox_loss=0.0)


def check_seed(seed: int) -> tuple[int, str | None, Counter[str]]:
    """Run one seed; (seed, what failed or None, statistics). Safe to call in a worker process."""
    sim = RaftSim(Scenario.from_seed(seed))
    try:
        return seed, None, sim.run().stats
    except Exception as failure:  # any crash of a run is a finding
        return seed, f"{type(failure).__name__}: {failure}", sim.stats


def replay_hint(seed: int) -> str:
    return seeds.replay_hint(seed, "tests/sim/test_raft_sim.py", "backend.sim.raft_sim")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Raft simulator on one seed or a range.")
    parser.add_argument("--seed", type=int, help="one seed to run")
    parser.add_argument("--seeds", default="0-99", help="a range of seeds, e.g. 0-999")
    parser.add_argument("--trace", action="store_true", help="print every event of a failing run")
    args = parser.parse_args(argv)
    return seeds.run_seeds(
        seeds.seed_range(args.seed, args.seeds),
        lambda seed: RaftSim(Scenario.from_seed(seed), trace=args.trace),
        replay_hint,
        trace_tail=400 if args.trace else 0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
