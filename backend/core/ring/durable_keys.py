"""A cache node's keys backed by replica groups, pure: what makes an owner's answers
durable and linearizable.

`DurableKeys` sits between the ring's owner logic (cache_core.py, through
key_holding.ReplicatedKeys) and the replica groups. The node hands it each
request it owns (`submit`), moves the groups' answers in (`receive`), ticks it
and calls `flush` after a burst; it returns messages to publish and collects
answers in `finished`. Per key, requests run one after another: a cold key is
claimed first, writes are proposed naming this node as owner (memory changes
only once the group applied them), reads are answered under the lease. The
rules, LEASE and the other constants: docs/architecture.md, "Leases"; batching
(MAX_IN_FLIGHT): "A write, end to end".
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import BAD_REQUEST, TIMEOUT, UNAVAILABLE
from backend.core.model.kv import WRITE_OPS, KeyValueState, key_from_wire
from backend.core.replica import wire as group_wire
from backend.core.replica.core import Send
from backend.core.replica.group import group_for
from backend.core.replica.proposer import Done, GroupProposer
from backend.core.replica.state_machine import (
    Operation,
    OpResult,
    apply_op,
    op_error,
    op_ok,
    outcome_of,
)
from backend.core.ring.jobs import Finished, Job

log = logging.getLogger(__name__)

LEASE = 0.6  # seconds an owner answers reads after sending a renewal the group committed
RENEW_INTERVAL = 0.3
# A group's lease is renewed only while reads of its keys came within this long: each
# renewal is a log entry, an fsync on every member and a round of AppendEntries, which a
# node that only writes, or sits idle, has no use for.
LEASE_KEEP = 2.0
LEASE_MARGIN = 0.1  # added to a takeover's wait, for clock-rate drift and scheduling
QUEUE_LIMIT = 4.0  # a request not yet proposed after this long answers `unavailable`
PROPOSAL_DEADLINE = 4.0  # then `timeout`; portals give up at 5 s
MAX_IN_FLIGHT = 1  # proposals per group awaiting answers; what arrives meanwhile waits

MOVED = "not applied: the key moved to another cache node; safe to retry"

COLD, CLAIMING, WAITING, READY = "cold", "claiming", "waiting", "ready"
IN_DOUBT = 1 << 62  # a log index above any claim's


@dataclass(slots=True)
class _Key:
    group: str
    status: str = COLD
    queue: deque[Job] = field(default_factory=deque)
    claim_index: int = 0  # log index of the claim that loaded it
    ready_at: float = 0.0


@dataclass(slots=True)
class _Item:
    """One operation of a proposal, and what it is for."""

    kind: str  # "claim", "write" or "renew"
    cid: int
    op: Operation
    job: Job | None = None


@dataclass(slots=True)
class _Batch:
    group: str
    items: list[_Item]
    sent_at: float


@dataclass(slots=True)
class _Scan:
    job: Job
    waiting: set[str]
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    error: OpResult | None = None


class DurableKeys:
    def __init__(
        self,
        host_id: str,
        incarnation: str,
        groups: dict[str, list[int]],
        state: KeyValueState,
        now: float,
        drops: Drops | None = None,
        *,
        lease: float = LEASE,
        lease_keep: float = LEASE_KEEP,
    ) -> None:
        self.host_id = host_id
        self.drops = drops or Drops(f"cache node {host_id}")
        self.owner = f"{host_id}/{incarnation}"
        client = client_name(host_id, incarnation)
        self.proposer = GroupProposer(
            client,
            groups,
            topics.raft_member,
            lambda group: topics.raft_reply(group, host_id, incarnation),
            deadline=PROPOSAL_DEADLINE,
            drops=self.drops,
        )
        self.reply_filter = topics.raft_replies(host_id, incarnation)
        self.groups = sorted(groups)
        self.state = state
        self.lease = lease
        self.lease_keep = lease_keep
        self._born = now
        self.keys: dict[int, _Key] = {}
        self.finished: list[Finished] = []
        self._lease_until = dict.fromkeys(self.groups, -math.inf)
        self._renewing: set[str] = set()
        # until when each group's lease is worth renewing (see LEASE_KEEP)
        self._lease_wanted_until = dict.fromkeys(self.groups, now + lease_keep)
        self._due_renew = now
        self._lease_waiters: dict[str, set[int]] = {g: set() for g in self.groups}
        self._writes_in_flight: Counter[int] = Counter()
        self._dirty: set[int] = set()
        self._queued: set[int] = set()  # keys with requests waiting (for expiry)
        self._waiting: set[int] = set()  # keys waiting out another owner's lease
        # Renewals may be answered before claims committed earlier (retries, leader
        # changes): the latest renewal index that revoked a key, or all of a group's
        # keys, while it was being claimed. A claim below it is stale and runs again.
        self._revoked_while_claiming: dict[int, int] = {}
        # Keys whose latest claim of ours was answered and waited out as needed: a later
        # claim that finds us still the owner may serve at once (any claim in between
        # would show as `previous`). A claim of ours whose answer was lost or set aside
        # takes a key out, since it may have displaced a live owner unseen.
        self._cleared: set[int] = set()
        self._all_revoked_at = dict.fromkeys(self.groups, 0)
        self._outbox: dict[str, list[_Item]] = {}
        self._in_flight: Counter[str] = Counter()  # proposals out per group
        self._renewals: dict[str, list[_Item]] = {}
        self._batches: dict[str, _Batch] = {}
        self._scans: dict[str, _Scan] = {}

    # ---- inputs -------------------------------------------------------------------------

    def submit(self, cid: int, job: Job) -> None:
        try:
            group_wire.check_write_or_read_op(job.op)
        except ValueError as exc:
            # alone, so that it cannot sink the proposal other requests share
            self.finished.append(Finished(job, op_error(BAD_REQUEST, str(exc)), ""))
            return
        key = self.keys.get(cid)
        if key is None:
            key = self.keys[cid] = _Key(group_for(cid, self.groups))
        key.queue.append(job)
        self._dirty.add(cid)
        self._queued.add(cid)

    def scan(self, job: Job, after: int, limit: int, now: float) -> list[Send]:
        """Every group's clients after `after`, merged (linearizable reads, not the cache)."""
        scan = _Scan(job, set())
        sends: list[Send] = []
        for group in self.groups:
            op = {"op": "clients_after", "after": after, "limit": limit}
            handle, out = self.proposer.read(group, [op], now)
            scan.waiting.add(handle)
            self._scans[handle] = scan
            sends.extend(out)
        return sends

    def receive(self, message: dict[str, Any], now: float) -> list[Send]:
        done, sends = self.proposer.receive(message, now)
        for item in done:
            self._on_done(item, now)
        return sends

    def tick(self, now: float) -> list[Send]:
        done, sends = self.proposer.tick(now)
        for item in done:
            self._on_done(item, now)
        if now >= self._due_renew:
            self._due_renew = now + RENEW_INTERVAL
            for group in self.groups:
                if now < self._lease_wanted_until[group]:
                    self._renew(group)
        self._expire_queued(now)
        for cid in list(self._waiting):
            key = self.keys.get(cid)
            if key is None or key.status != WAITING or now >= key.ready_at:
                self._waiting.discard(cid)
                self._dirty.add(cid)
        sends.extend(self.flush(now))
        return sends

    def flush(self, now: float) -> list[Send]:
        """Serve what memory can, and send one proposal per group with the rest."""
        dirty, self._dirty = self._dirty, set()
        for cid in dirty:
            self._pump(cid, now)
        sends: list[Send] = []
        for group, items in self._renewals.items():
            sends.extend(self._propose(group, items, now))
        self._renewals.clear()
        for group in list(self._outbox):
            if self._in_flight[group] >= MAX_IN_FLIGHT:
                continue  # it grows until an answer frees a slot: bigger batches under load
            items = self._outbox.pop(group)
            self._in_flight[group] += 1
            sends.extend(self._propose(group, items, now))
        return sends

    def _propose(self, group: str, items: list[_Item], now: float) -> list[Send]:
        handle, out = self.proposer.propose(group, [item.op for item in items], now)
        self._batches[handle] = _Batch(group, items, now)
        return out

    def abandon_queued(self, why: str) -> None:
        """Answer every request not yet proposed `unavailable` (the node is leaving)."""
        for cid in list(self._queued):
            key = self.keys.get(cid)
            if key is not None:
                self._fail_queue(key, op_error(UNAVAILABLE, f"not applied: {why}"))
        self._queued.clear()

    def forget(self, cid: int) -> bool:
        """Drop an idle key from memory (this node no longer owns it); False if it is busy."""
        key = self.keys.get(cid)
        if key is not None and (key.queue or key.status == CLAIMING):
            return False
        if self._writes_in_flight[cid]:
            return False
        self.keys.pop(cid, None)
        self.state.keys.pop(cid, None)
        return True

    # ---- running a key's queue ----------------------------------------------------------

    def _pump(self, cid: int, now: float) -> None:
        key = self.keys.get(cid)
        if key is None or not key.queue or self._writes_in_flight[cid]:
            return
        if key.status == COLD:
            key.status = CLAIMING
            op = {"op": "claim", "cid": cid, "owner": self.owner}
            self._outbox.setdefault(key.group, []).append(_Item("claim", cid, op))
            return
        if key.status == WAITING and now >= key.ready_at:
            key.status = READY
            self._cleared.add(cid)
        if key.status != READY:
            return
        while key.queue:
            if key.queue[0].op.get("op") in WRITE_OPS:
                self._propose_writes(cid, key)
                return
            self._lease_wanted_until[key.group] = now + self.lease_keep
            if now >= self._lease_until[key.group]:
                self._lease_waiters[key.group].add(cid)
                self._renew(key.group)  # now: no tick renews a lease no read wanted lately
                return
            job = key.queue.popleft()
            self.finished.append(Finished(job, self._read(job.op), key.group))

    def _renew(self, group: str) -> None:
        if group not in self._renewing:
            self._renewing.add(group)
            op = {"op": "renew", "cid": 0, "owner": self.owner}
            # alone, outside the in-flight limit: a lease must not queue behind writes
            self._renewals[group] = [_Item("renew", 0, op)]

    def _propose_writes(self, cid: int, key: _Key) -> None:
        outbox = self._outbox.setdefault(key.group, [])
        while key.queue and key.queue[0].op.get("op") in WRITE_OPS:
            job = key.queue.popleft()
            outbox.append(_Item("write", cid, {**job.op, "owner": self.owner}, job))
            self._writes_in_flight[cid] += 1

    def _read(self, op: Operation) -> OpResult:
        return apply_op(self.state, op)

    def _expire_queued(self, now: float) -> None:
        for cid in list(self._queued):
            key = self.keys.get(cid)
            if key is None or not key.queue:
                self._queued.discard(cid)
                continue
            while key.queue and now - key.queue[0].since >= QUEUE_LIMIT:
                job = key.queue.popleft()
                why = f"not applied: the key was not ready within {QUEUE_LIMIT:g}s"
                self.finished.append(Finished(job, op_error(UNAVAILABLE, why), key.group))

    # ---- answers from the groups --------------------------------------------------------

    def _on_done(self, done: Done, now: float) -> None:
        scan = self._scans.pop(done.handle, None)
        if scan is not None:
            self._on_scan_part(scan, done)
            return
        batch = self._batches.pop(done.handle, None)
        if batch is None:
            return
        if batch.items[0].kind != "renew":
            self._in_flight[batch.group] -= 1
        if done.ok:
            results = done.results
        else:
            results = [op_error(done.code, done.message)] * len(batch.items)
        for item, result in zip(batch.items, results, strict=False):
            result = self._checked(item.kind, result)
            if item.kind == "renew":
                self._on_renewed(batch, result, done.index)
            elif item.kind == "claim":
                self._on_claimed(item.cid, result, done.index, now)
            else:
                self._on_written(item, result, batch.group)
        for item in batch.items:
            if item.kind == "write":
                self._writes_in_flight[item.cid] -= 1
                if not self._writes_in_flight[item.cid]:
                    del self._writes_in_flight[item.cid]
            self._dirty.add(item.cid)

    def _checked(self, kind: str, result: OpResult) -> OpResult:
        """`result` if what this node reads of it is well formed (the proposer checked
        its shape); else a timeout: whatever it answered may have been applied."""
        if not result.get("ok") or _result_fits(kind, result["result"]):
            return result
        self.drops.drop(f"{kind} result", "malformed result")
        return op_error(TIMEOUT, f"the group's answer to a {kind} was malformed")

    def _on_renewed(self, batch: _Batch, result: OpResult, index: int) -> None:
        group = batch.group
        self._renewing.discard(group)
        if not result.get("ok"):
            if outcome_of(result) != UNAVAILABLE:
                # it may have been applied, emptying our revoked list unheard
                self._revoke(group, None, None)
            return
        self._lease_until[group] = batch.sent_at + self.lease
        answer = result["result"]
        self._revoke(group, answer.get("revoked"), answer.get("index", index))
        self._dirty |= self._lease_waiters[group]
        self._lease_waiters[group].clear()

    def _revoke(self, group: str, revoked: list[int] | None, index: int | None) -> None:
        """Keys (None: all of the group's) claimed by others before log index `index`
        (None: at an unknown index, so every claim made so far is in doubt)."""
        if revoked is None:
            if index is not None:
                self._all_revoked_at[group] = max(self._all_revoked_at[group], index)
            gone = [c for c, k in self.keys.items() if k.group == group]
        else:
            gone = [c for c in revoked if c in self.keys]
        for cid in gone:
            key = self.keys[cid]
            if key.status == CLAIMING:
                at = self._revoked_while_claiming.get(cid, 0)
                self._revoked_while_claiming[cid] = max(at, IN_DOUBT if index is None else index)
            elif index is None or key.claim_index < index:
                if index is not None:
                    self._cleared.discard(cid)  # another node took it
                self._lose(cid, key)

    def _on_claimed(self, cid: int, result: OpResult, index: int, now: float) -> None:
        key = self.keys.get(cid)
        if key is None or key.status != CLAIMING:
            return
        if not result.get("ok"):
            key.status = COLD
            self._cleared.discard(cid)  # it may have been applied, displacing a live owner
            self._fail_queue(key, op_error(UNAVAILABLE, _claim_failed(result)))
            return
        claimed = result["result"]
        index = claimed.get("index", index)
        revoked_at = max(self._revoked_while_claiming.pop(cid, 0), self._all_revoked_at[key.group])
        if index < revoked_at:
            key.status = COLD  # taken from us after this claim: claim again
            self._cleared.discard(cid)  # and whoever it displaced may still hold a lease
            self._dirty.add(cid)
            return
        self.state.keys.pop(cid, None)
        if claimed.get("key") is not None:
            self.state.import_keys([claimed["key"]])
        key.claim_index = index
        ready_at = self._serve_from(cid, claimed.get("previous"), now)
        if ready_at <= now:
            key.status = READY
            self._cleared.add(cid)
        else:
            key.status = WAITING
            key.ready_at = ready_at
            self._waiting.add(cid)

    def _serve_from(self, cid: int, previous: str | None, now: float) -> float:
        """When a claim that found `previous` may serve: once no other owner's lease can
        still run. Nobody held one. An earlier incarnation of this node is dead, but it
        may have displaced a live owner just before it died: that lease has run out
        LEASE after this incarnation began. Ourselves: at once if we served the key
        already; else an earlier claim of ours whose answer was lost or set aside may
        have displaced a live owner whose lease we never waited out."""
        if previous is None or (previous == self.owner and cid in self._cleared):
            return now
        if previous.startswith(f"{self.host_id}/") and previous != self.owner:
            return self._born + self.lease + LEASE_MARGIN
        return now + self.lease + LEASE_MARGIN

    def _on_written(self, item: _Item, result: OpResult, group: str) -> None:
        assert item.job is not None
        key = self.keys.get(item.cid)
        if result.get("fenced"):
            if key is not None:
                self._lose(item.cid, key)
            result = op_error(UNAVAILABLE, MOVED)
        elif not result.get("ok") and result["error"]["code"] in (TIMEOUT, UNAVAILABLE):
            if key is not None and result["error"]["code"] == TIMEOUT:
                key.status = COLD  # memory may miss it: claim again, as a barrier
        elif key is not None and key.status == READY and not result.get("repeat"):
            # (a repeat was applied before: through us, or before our claim loaded the key)
            self._apply_committed(item, result, key)
        self.finished.append(Finished(item.job, result, group))

    def _apply_committed(self, item: _Item, result: OpResult, key: _Key) -> None:
        """Memory follows the group; if it disagrees, it is stale: load the key again."""
        assert item.job is not None
        local = apply_op(self.state, item.job.op)
        if outcome_of(local) != outcome_of(result):
            log.warning("key %016x in memory disagreed with its group; loading it again", item.cid)
            key.status = COLD

    def _on_scan_part(self, scan: _Scan, done: Done) -> None:
        scan.waiting.discard(done.handle)
        first = done.results[0] if done.ok and done.results else {}
        if first.get("ok") and _result_fits("scan", first["result"]):
            for client in done.results[0]["result"]["clients"]:
                scan.clients[client["cid"]] = client
        elif scan.error is None:
            scan.error = op_error(UNAVAILABLE, f"listing clients: {done.message or 'failed'}")
        if scan.waiting:
            return
        if scan.error is not None:
            self.finished.append(Finished(scan.job, scan.error, ""))
            return
        limit = scan.job.op["limit"]
        clients = [scan.clients[c] for c in sorted(scan.clients)[:limit]]
        self.finished.append(Finished(scan.job, op_ok({"clients": clients}), ""))

    # ---- losing keys --------------------------------------------------------------------

    def _lose(self, cid: int, key: _Key) -> None:
        """Another node claimed the key: forget it, and send its waiting requests back."""
        self.keys.pop(cid, None)
        self.state.keys.pop(cid, None)
        self._fail_queue(key, op_error(UNAVAILABLE, MOVED))

    def _fail_queue(self, key: _Key, result: OpResult) -> None:
        while key.queue:
            self.finished.append(Finished(key.queue.popleft(), result, key.group))

    # ---- for status -----------------------------------------------------------------------

    def leases(self, now: float) -> dict[str, float]:
        """Seconds of lease left per group (0 when lapsed)."""
        return {g: max(0.0, round(t - now, 3)) for g, t in self._lease_until.items()}


def _result_fits(kind: str, result: dict[str, Any]) -> bool:
    """Whether an ok result of a renew, claim or scan holds what this module reads."""
    index = result.get("index", 0)
    if type(index) is not int:
        return False
    if kind == "renew":
        revoked = result.get("revoked")
        return revoked is None or (
            isinstance(revoked, list) and all(type(c) is int for c in revoked)
        )
    if kind == "claim":
        previous, key = result.get("previous"), result.get("key")
        if not (previous is None or isinstance(previous, str)):
            return False
        try:
            return key is None or key_from_wire(key) is not None
        except ValueError:
            return False
    if kind == "scan":
        clients = result.get("clients")
        return isinstance(clients, list) and all(
            isinstance(c, dict) and type(c.get("cid")) is int for c in clients
        )
    return True


def client_name(host_id: str, incarnation: str) -> str:
    """The node's name towards the groups (a topic level: no '/'), new per incarnation."""
    return f"{host_id}-{incarnation}"


def _claim_failed(result: OpResult) -> str:
    error = result.get("error") or {}
    return f"not applied: loading the key from its replica group failed ({error.get('message')})"
