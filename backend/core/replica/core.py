"""One replica of a replica group as a pure state machine: messages and ticks in,
messages to publish out.

It joins a RaftNode (backend/core/raft) to the ReplicaStateMachine, batches
proposals into log entries (group commit), answers reads by ReadIndex, and
gives each proposal one honest answer (results, `unavailable` or `timeout`).
ReplicaDriver (driver.py) runs its Ready cycle (`flush`, `next_ready`,
`sends_before_persist`, `after_persist`) and its background snapshots for the
process, the simulator and the tests. `receive` is total: what cannot be
answered is dropped and counted in `drops`, never raised. The rules:
docs/architecture.md, "Replica groups" and "Snapshots".
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import BAD_REQUEST, TIMEOUT, UNAVAILABLE
from backend.core.metrics import RequestMetrics
from backend.core.raft import (
    AppendEntries,
    Config,
    Heartbeat,
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftNode,
    RaftOptions,
    Ready,
    Role,
    Snapshot,
    message_from_wire,
    message_to_wire,
)
from backend.core.replica import wire
from backend.core.replica.state_machine import (
    Operation,
    OpResult,
    Outcome,
    Proposal,
    ReplicaStateMachine,
    join_packed,
    op_error,
    outcome_of,
    pack_proposal,
)

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 10_000  # applied entries between snapshots
PROPOSAL_TIMEOUT = 10.0  # seconds a proposal may wait for its entry before `timeout`
READ_TIMEOUT = 5.0
MAX_ENTRY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Send:
    """A message to publish."""

    topic: str
    message: dict[str, Any]
    qos: int = topics.MESSAGE_QOS


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    """A snapshot to take: the state machine as of `index`, with Raft's term and
    membership there. `encode` is the slow part; it runs where the state is frozen
    (a forked child's copy, or in line before anything else is applied)."""

    index: int
    term: int
    config: Config
    machine: ReplicaStateMachine

    def encode(self) -> Snapshot:
        if self.machine.applied_index != self.index:
            raise ValueError(
                f"the state is at index {self.machine.applied_index}, not {self.index}"
            )
        return Snapshot(self.index, self.term, self.config, self.machine.snapshot())


@dataclass(slots=True)
class _Waiter:
    """Someone waiting for an answer: a proposal or a batch of reads."""

    corr: str
    reply_to: str
    received: float
    proposal: Proposal | None = None
    ops: list[Operation] = field(default_factory=list)


@dataclass(slots=True)
class _Entry:
    """A log entry this replica appended as leader, and the proposals in it."""

    term: int
    waiters: list[_Waiter]


class ReplicaCore:
    def __init__(
        self,
        group: str,
        member: int,
        state: PersistentState,
        topic_for: Callable[[int], str],
        rng: random.Random | None = None,
        options: RaftOptions | None = None,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        proposal_timeout: float = PROPOSAL_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
    ) -> None:
        """`topic_for(member)` is the inbox topic of another member of the group."""
        self.group = group
        self.member = member
        self.topic_for = topic_for
        self.node = RaftNode(member, state, rng or random.Random(), options)
        snapshot = state.snapshot
        self.machine = ReplicaStateMachine.restore(snapshot.data if snapshot else b"")
        if self.machine.applied_index != self.node.applied_index:
            raise ValueError(
                f"snapshot state is at index {self.machine.applied_index}, "
                f"the snapshot at {self.node.applied_index}"
            )
        self.snapshot_every = snapshot_every
        self.proposal_timeout = proposal_timeout
        self.read_timeout = read_timeout
        self.max_entry_bytes = max_entry_bytes
        self.metrics = RequestMetrics(Drops(f"replica {group}-{member}"))
        self.drops = self.metrics.drops
        self._buffer: list[_Waiter] = []
        self._entries: dict[int, _Entry] = {}
        self._read_batch: list[_Waiter] = []
        self._reads_asked: dict[bytes, list[_Waiter]] = {}
        self._reads_ready: list[tuple[int, list[_Waiter]]] = []
        self._read_ctx = itertools.count(1)
        self._sent_early: Ready | None = None
        self._snapshot_job: SnapshotJob | None = None

    # ---- inputs -------------------------------------------------------------------------

    def receive(self, message: dict[str, Any], now: float) -> list[Send]:
        kind = message.get("t")
        if kind == wire.RAFT:
            self._step(message)
            return []
        if kind == wire.PROPOSE or kind == wire.READ:
            answer_kind = wire.PROPOSED if kind == wire.PROPOSE else wire.READ_RESULT
            try:
                request = (
                    wire.Propose.from_wire(message)
                    if kind == wire.PROPOSE
                    else wire.Read.from_wire(message)
                )
            except wire.BadRequest as exc:
                waiter = _Waiter(exc.corr, exc.reply_to, now)
                return [self._error(answer_kind, waiter, BAD_REQUEST, str(exc), ops=())]
            except ValueError as exc:
                self.drops.bad(f"{kind} without a reply address", exc)
                return []
            if isinstance(request, wire.Propose):
                return self._on_propose(request, now)
            return self._on_read(request, now)
        self.drops.drop("message", "unknown type", f"{kind!r:.80}")
        return []

    def tick(self, now: float) -> list[Send]:
        self.node.tick()
        return [*self._expire_entries(now), *self._expire_reads(now)]

    # ---- the Ready cycle ------------------------------------------------------------------

    def flush(self, now: float) -> list[Send]:
        """Turn buffered proposals into log entries and buffered reads into one ReadIndex."""
        sends = self._flush_proposals(now)
        sends.extend(self._flush_reads(now))
        return sends

    def next_ready(self) -> Ready | None:
        return self.node.ready() if self.node.has_ready() else None

    def sends_before_persist(self, ready: Ready) -> list[Send]:
        """Messages that may leave before `ready` is durable: a leader's entries and
        heartbeats. The leader writes its log in parallel with replicating it (Raft
        dissertation §10.2.1): its own copy counts towards commitment only once stable,
        so followers may store the entries first. Everything else waits for the fsync."""
        if ready.soft_state is not None or not self.node.is_leader or not ready.messages:
            return []
        if not all(isinstance(m, AppendEntries | Heartbeat) for m in ready.messages):
            return []
        self._sent_early = ready
        return self._raft_sends(ready)

    def after_persist(self, ready: Ready, now: float) -> list[Send]:
        """`ready` is durable: its messages, then the answers its applied entries allow."""
        sends = [] if self._sent_early is ready else self._raft_sends(ready)
        self._sent_early = None
        if ready.soft_state is not None:
            soft = ready.soft_state
            log.info(
                "group %s member %d: %s in term %d, leader %s",
                self.group,
                self.member,
                soft.role,
                self.node.term,
                soft.leader,
            )
            if soft.role is not Role.LEADER:
                reads = self._all_unconfirmed_reads()
                sends.extend(self._fail_reads(reads, now, "leadership lost"))
        if ready.snapshot is not None:
            sends.extend(self._install(ready.snapshot, now))
        for entry in ready.committed_entries:
            sends.extend(self._apply(entry.index, entry.term, entry.data, entry.config, now))
        for read in ready.read_states:
            waiters = self._reads_asked.pop(read.ctx, None)
            if waiters:
                self._reads_ready.append((read.index, waiters))
        self.node.advance(ready)
        sends.extend(self._serve_reads(now))
        return sends

    # ---- snapshots ----------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        """`snapshot_every` entries were applied since the last snapshot, and none is
        being taken."""
        raft_log = self.node.log
        return (
            self._snapshot_job is None
            and raft_log.pending_snapshot is None
            and self.node.applied_index - raft_log.snapshot.index >= self.snapshot_every
        )

    def start_snapshot(self) -> SnapshotJob:
        """A snapshot of the state as it is now; until `snapshot_saved` or
        `snapshot_failed`, no other is due. Call between Ready cycles."""
        if self._snapshot_job is not None:
            raise RuntimeError(f"a snapshot at index {self._snapshot_job.index} is under way")
        index = self.node.applied_index
        if self.machine.applied_index != index:
            raise RuntimeError(f"applied {self.machine.applied_index}, Raft says {index}")
        raft_log = self.node.log
        term = raft_log.term(index)
        if term is None:
            raise RuntimeError(f"index {index} is not in the log")
        self._snapshot_job = SnapshotJob(index, term, raft_log.config_at(index), self.machine)
        return self._snapshot_job

    def snapshot_saved(self, job: SnapshotJob, snapshot: Snapshot | None = None) -> bool:
        """`job`'s snapshot is durable: compact the log through its index, keeping the
        bytes if `snapshot` carries them (else they are read back when a follower needs
        them). False if it came too late: a newer snapshot (the leader's) replaced the log."""
        self._finish(job)
        raft_log = self.node.log
        if raft_log.pending_snapshot is not None or job.index <= raft_log.snapshot.index:
            return False
        self.node.compact(job.index, snapshot.data if snapshot is not None else None)
        return True

    def snapshot_failed(self, job: SnapshotJob) -> None:
        """`job` came to nothing; the next snapshot is due at once."""
        self._finish(job)

    def _finish(self, job: SnapshotJob) -> None:
        if self._snapshot_job is not job:
            raise RuntimeError(f"the snapshot at index {job.index} is not the one under way")
        self._snapshot_job = None

    def snapshot_wanted(self) -> int | None:
        """The index of a snapshot file a lagging follower needs the bytes of."""
        return self.node.snapshot_wanted

    def snapshot_loaded(self, snapshot: Snapshot) -> None:
        """The bytes `snapshot_wanted` asked for (ignored if a newer snapshot came since)."""
        self.node.snapshot_data(snapshot)

    # ---- what others may look at ----------------------------------------------------------

    def readiness(self) -> str | None:
        if self.node.leader is None:
            return f"replica group {self.group} has no leader"
        return None

    def status(self) -> dict[str, Any]:
        node = self.node
        return {
            "group": self.group,
            "member": self.member,
            "role": str(node.role),
            "term": node.term,
            "leader": node.leader,
            "commit_index": node.commit_index,
            "applied_index": self.machine.applied_index,
            "last_index": node.last_index,
            "snapshot_index": node.log.snapshot.index,
            "voters": sorted(node.config.voters),
            "keys": len(self.machine.kv.keys),
            "waiting": sum(len(e.waiters) for e in self._entries.values()) + len(self._buffer),
        }

    # ---- Raft messages ---------------------------------------------------------------------

    def _step(self, message: dict[str, Any]) -> None:
        try:
            batch = wire.RaftBatch.from_wire(message)
        except ValueError as exc:
            self.drops.bad("raft", exc)
            return
        if batch.group != self.group:
            self.drops.drop("raft", "another group's", f"{batch.group!r:.80}")
            return
        for item in batch.messages:
            try:
                raft_message = message_from_wire(item)
            except ValueError as exc:
                self.drops.bad("raft message", exc)
                continue
            if raft_message.dst != self.member:
                self.drops.drop("raft message", "for another member")
                continue
            self.node.step(raft_message)

    def _raft_sends(self, ready: Ready) -> list[Send]:
        by_member: dict[int, list[dict[str, Any]]] = {}
        for message in ready.messages:
            by_member.setdefault(message.dst, []).append(message_to_wire(message))
        return [
            Send(self.topic_for(member), wire.RaftBatch(self.group, batch).to_wire())
            for member, batch in by_member.items()
        ]

    # ---- proposals --------------------------------------------------------------------------

    def _on_propose(self, propose: wire.Propose, now: float) -> list[Send]:
        proposal = propose.proposal()
        waiter = _Waiter(propose.corr, propose.reply_to, now, proposal)
        if not self.node.is_leader:
            return [self._not_leader(wire.PROPOSED, waiter)]
        known = [self.machine.lookup(proposal.client, rid) for rid in proposal.request_ids]
        if all(outcome == Outcome.APPLIED for outcome, _ in known):
            results = [result for _, result in known if result is not None]
            return [self._answer(waiter, self.machine.applied_index, results, waiter.received)]
        self._buffer.append(waiter)
        return []

    def _flush_proposals(self, now: float) -> list[Send]:
        if not self._buffer:
            return []
        waiters, self._buffer = self._buffer, []
        sends: list[Send] = []
        for chunk, pieces in self._chunks(waiters):
            try:
                index = self.node.propose(join_packed(pieces))
            except NotLeader:
                sends.extend(self._not_leader(wire.PROPOSED, w, now) for w in chunk)
                continue
            except ProposalDropped as exc:
                text = f"member {self.member} of group {self.group} refused it: {exc}"
                sends.extend(self._error(wire.PROPOSED, w, UNAVAILABLE, text, now) for w in chunk)
                continue
            self._entries[index] = _Entry(self.node.term, chunk)
        return sends

    def _chunks(self, waiters: list[_Waiter]) -> Iterable[tuple[list[_Waiter], list[bytes]]]:
        chunk: list[_Waiter] = []
        pieces: list[bytes] = []
        size = 0
        for waiter in waiters:
            assert waiter.proposal is not None
            piece = pack_proposal(waiter.proposal)
            if chunk and size + len(piece) > self.max_entry_bytes:
                yield chunk, pieces
                chunk, pieces, size = [], [], 0
            chunk.append(waiter)
            pieces.append(piece)
            size += len(piece)
        if chunk:
            yield chunk, pieces

    def _apply(self, index: int, term: int, data: bytes, config: Any, now: float) -> list[Send]:
        results: list[list[OpResult]] = []
        if config is not None:
            self.machine.skip(index)
        else:
            try:
                results = self.machine.apply_entry(index, data)
            except ValueError as exc:
                log.error("group %s: skipped log entry %d: %s", self.group, index, exc)
        entry = self._entries.pop(index, None)
        if entry is None:
            return []
        if entry.term == term and len(results) == len(entry.waiters):
            return [
                self._answer(w, index, r, now) for w, r in zip(entry.waiters, results, strict=True)
            ]
        # another leader's entry took this index: ours can never commit
        return self._settle_all(entry.waiters, Outcome.NOT_APPLIED, now)

    def _install(self, snapshot: Snapshot, now: float) -> list[Send]:
        """A snapshot from the leader replaces the state; it decides every entry it covers."""
        self.machine = ReplicaStateMachine.restore(snapshot.data)
        self.machine.applied_index = snapshot.index
        log.info(
            "group %s member %d: installed a snapshot at index %d from the leader",
            self.group,
            self.member,
            snapshot.index,
        )
        covered = sorted(i for i in self._entries if i <= snapshot.index)
        waiters = [w for index in covered for w in self._entries.pop(index).waiters]
        return self._settle_all(waiters, None, now)

    def _expire_entries(self, now: float) -> list[Send]:
        expired = [i for i, e in self._entries.items() if self._expired(e.waiters, now)]
        waiters = [w for index in expired for w in self._entries.pop(index).waiters]
        return self._settle_all(waiters, Outcome.UNKNOWN, now)

    def _expired(self, waiters: list[_Waiter], now: float) -> bool:
        return now - waiters[0].received >= self.proposal_timeout

    def _settle_all(self, waiters: list[_Waiter], fallback: str | None, now: float) -> list[Send]:
        return [self._settle(waiter, fallback, now) for waiter in waiters]

    def _settle(self, waiter: _Waiter, fallback: str | None, now: float) -> Send:
        """Answer a proposal whose entry will not be applied here.

        Each operation: its result if the answer table has it (a retry was applied),
        else `fallback` (NOT_APPLIED or UNKNOWN), or with no fallback what the table
        says (after a snapshot, which covers the entry, the table is the whole truth).
        A second copy of the proposal (QoS 1 delivers twice) appended after this one
        cannot save it: the entry that replaced ours truncated every later one of ours.
        """
        proposal = waiter.proposal
        assert proposal is not None
        outcomes: list[tuple[str, OpResult | None]] = []
        for rid in proposal.request_ids:
            outcome, result = self.machine.lookup(proposal.client, rid)
            if outcome != Outcome.APPLIED and fallback is not None:
                outcome = fallback
            outcomes.append((outcome, result))
        kinds = {outcome for outcome, _ in outcomes}
        if kinds == {Outcome.NOT_APPLIED}:
            return self._error(
                wire.PROPOSED, waiter, UNAVAILABLE, "not applied: the leader changed", now=now
            )
        if kinds == {Outcome.UNKNOWN}:
            return self._error(
                wire.PROPOSED,
                waiter,
                TIMEOUT,
                "no outcome in time: the proposal may or may not be applied",
                now=now,
            )
        results = [r if r is not None else _op_outcome_error(o) for o, r in outcomes]
        return self._answer(waiter, self.machine.applied_index, results, now)

    # ---- reads --------------------------------------------------------------------------------

    def _on_read(self, read: wire.Read, now: float) -> list[Send]:
        waiter = _Waiter(read.corr, read.reply_to, now, ops=read.ops)
        if not self.node.is_leader:
            return [self._not_leader(wire.READ_RESULT, waiter)]
        self._read_batch.append(waiter)
        return []

    def _flush_reads(self, now: float) -> list[Send]:
        if not self._read_batch:
            return []
        waiters, self._read_batch = self._read_batch, []
        ctx = next(self._read_ctx).to_bytes(8, "big")
        try:
            self.node.read_index(ctx)
        except NotLeader:
            return [self._not_leader(wire.READ_RESULT, w, now) for w in waiters]
        self._reads_asked[ctx] = waiters
        return []

    def _serve_reads(self, now: float) -> list[Send]:
        applied = self.machine.applied_index
        due = [waiters for index, waiters in self._reads_ready if index <= applied]
        if not due:
            return []
        self._reads_ready = [(i, w) for i, w in self._reads_ready if i > applied]
        sends: list[Send] = []
        for waiters in due:
            for waiter in waiters:
                results = [self.machine.read(op) for op in waiter.ops]
                sends.append(self._answer(waiter, applied, results, now, kind=wire.READ_RESULT))
        return sends

    def _all_unconfirmed_reads(self) -> list[_Waiter]:
        waiters = [w for batch in self._reads_asked.values() for w in batch]
        self._reads_asked.clear()
        return waiters

    def _expire_reads(self, now: float) -> list[Send]:
        expired: list[_Waiter] = []
        for ctx in [
            c for c, ws in self._reads_asked.items() if now - ws[0].received >= self.read_timeout
        ]:
            expired.extend(self._reads_asked.pop(ctx))
        return self._fail_reads(expired, now, "no read index in time")

    def _fail_reads(self, waiters: list[_Waiter], now: float, why: str) -> list[Send]:
        return [
            self._error(wire.READ_RESULT, w, UNAVAILABLE, f"read not served: {why}", now=now)
            for w in waiters
        ]

    # ---- answers ------------------------------------------------------------------------------

    def _answer(
        self,
        waiter: _Waiter,
        index: int,
        results: list[OpResult],
        now: float,
        kind: str = wire.PROPOSED,
    ) -> Send:
        ops = waiter.proposal.ops if waiter.proposal is not None else waiter.ops
        for op, result in zip(ops, results, strict=False):
            outcome = outcome_of(result)
            self.metrics.observe(str(op.get("op")), outcome, max(0.0, now - waiter.received))
        answer = wire.AnswerOk(kind, waiter.corr, self.group, self.member, index, results)
        return Send(waiter.reply_to, answer.to_wire())

    def _error(
        self,
        kind: str,
        waiter: _Waiter,
        code: str,
        text: str,
        now: float | None = None,
        ops: Iterable[Operation] | None = None,
    ) -> Send:
        if ops is None:
            ops = waiter.proposal.ops if waiter.proposal is not None else waiter.ops
        seconds = 0.0 if now is None else max(0.0, now - waiter.received)
        for op in ops:
            self.metrics.observe(str(op.get("op")), code, seconds)
        if not ops and code == BAD_REQUEST:
            self.metrics.observe(kind, code, seconds)
        answer = wire.AnswerError(
            kind, waiter.corr, self.group, self.member, code, text, self.node.leader
        )
        return Send(waiter.reply_to, answer.to_wire())

    def _not_leader(self, kind: str, waiter: _Waiter, now: float | None = None) -> Send:
        leader = self.node.leader
        hint = f"member {leader} leads" if leader is not None else "no leader is known"
        text = f"member {self.member} of group {self.group} is not the leader; {hint}"
        return self._error(kind, waiter, UNAVAILABLE, text, now)


def _op_outcome_error(outcome: str) -> OpResult:
    if outcome == Outcome.NOT_APPLIED:
        return op_error(UNAVAILABLE, "not applied: the leader changed")
    return op_error(TIMEOUT, "no outcome in time: the operation may or may not be applied")
