"""The Ready cycle around a ReplicaCore, once for every adapter that drives one.

The replica process, the system simulator and the unit tests' group all run a
replica through this driver, so what the simulator checks is the order
production follows (docs/architecture.md, "Code shape"). It does no blocking
I/O: it calls the adapter's storage and `publish`, and the adapter performs
what takes time (fsync, a forked snapshot writer, a file read) and reports back.

    cycle = driver.next_cycle(now)     flush; take a Ready; publish a leader's entries
    driver.persist(cycle)              storage.save: written, fsynced if it must be
    driver.persisted(cycle, now)       once durable: the other messages, apply, advance

Between cycles: `snapshot_to_start` -> `snapshot_written` / `snapshot_failed`
(the log is compacted only once written); `snapshot_to_load` ->
`snapshot_loaded` / `snapshot_load_failed` (each failure retried later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from backend.core.raft import Ready, Snapshot
from backend.core.replica.core import ReplicaCore, Send, SnapshotJob

log = logging.getLogger(__name__)

SNAPSHOT_RETRY = 5.0  # seconds after a failed snapshot before the next try
LOAD_RETRY = 1.0  # seconds after a snapshot could not be read for a follower

Publish = Callable[[list[Send]], None]


class ReplicaStorage(Protocol):
    """The replica's disk, as the driver uses it."""

    def save(self, ready: Ready) -> None:
        """Write what `ready` must persist (its snapshot before the records naming it)."""

    def snapshot_written(self, index: int) -> None:
        """A background writer made the snapshot at `index` durable: older files and
        the log it covers may go."""


@dataclass(frozen=True, slots=True)
class Cycle:
    """One Ready on its way through persist, send, apply, advance. `sent_early`: some
    of its messages were published before it is durable (see `next_cycle`)."""

    ready: Ready
    sent_early: bool


class ReplicaDriver:
    """Runs one ReplicaCore's Ready cycle and background snapshots; publishes through
    `publish` and persists through `storage`."""

    def __init__(
        self,
        core: ReplicaCore,
        storage: ReplicaStorage,
        publish: Publish,
        *,
        snapshot_retry: float = SNAPSHOT_RETRY,
        load_retry: float = LOAD_RETRY,
    ) -> None:
        self.core = core
        self.storage = storage
        self.publish = publish
        self.snapshot_retry = snapshot_retry
        self.load_retry = load_retry
        self._cycle: Cycle | None = None
        self._persisted_cycle: Cycle | None = None
        self._snapshot_job: SnapshotJob | None = None
        self._snapshot_retry_at = float("-inf")
        self._loading: int | None = None
        self._load_retry_at = float("-inf")

    # ---- inputs -------------------------------------------------------------------------

    def receive(self, message: dict[str, Any], now: float) -> None:
        self.publish(self.core.receive(message, now))

    def tick(self, now: float) -> None:
        self.publish(self.core.tick(now))

    # ---- the Ready cycle ------------------------------------------------------------------

    @property
    def in_cycle(self) -> bool:
        """A Ready was taken and is not yet through `persisted`."""
        return self._cycle is not None

    def next_cycle(self, now: float) -> Cycle | None:
        """Flush buffered proposals and reads, take the next Ready (None: nothing to do)
        and publish the messages that may leave before it is durable: a leader's entries
        and heartbeats (Raft dissertation §10.2.1). Everything else waits for `persisted`."""
        if self._cycle is not None:
            raise RuntimeError("the previous Ready is not yet persisted")
        self.publish(self.core.flush(now))
        ready = self.core.next_ready()
        if ready is None:
            return None
        early = self.core.sends_before_persist(ready)
        self.publish(early)
        self._cycle = Cycle(ready, bool(early))
        return self._cycle

    def persist(self, cycle: Cycle) -> None:
        """Write `cycle`'s Ready to storage; the adapter calls `persisted` once durable."""
        self._check_current(cycle)
        self.storage.save(cycle.ready)
        self._persisted_cycle = cycle

    def persisted(self, cycle: Cycle, now: float) -> None:
        """`cycle`'s Ready is durable: publish its remaining messages, apply what it
        commits, answer who waited, advance Raft."""
        self._check_current(cycle)
        if self._persisted_cycle is not cycle:
            raise RuntimeError("a Ready reported durable before it was written")
        self._cycle = self._persisted_cycle = None
        self.publish(self.core.after_persist(cycle.ready, now))

    def _check_current(self, cycle: Cycle) -> None:
        if self._cycle is not cycle:
            raise RuntimeError("not the Ready this cycle took")

    # ---- snapshots in the background --------------------------------------------------------

    def snapshot_to_start(self, now: float) -> SnapshotJob | None:
        """A snapshot to save in the background, if one is due (one at a time, none
        before `snapshot_retry` seconds after a failure). Between cycles only: the job's
        state is the state now, which is all the entries applied so far."""
        if self._cycle is not None:
            raise RuntimeError("a snapshot starts between Ready cycles")
        if self._snapshot_job is not None or now < self._snapshot_retry_at:
            return None
        if not self.core.snapshot_due():
            return None
        self._snapshot_job = self.core.start_snapshot()
        return self._snapshot_job

    @property
    def snapshot_job(self) -> SnapshotJob | None:
        """The snapshot being saved in the background, if any."""
        return self._snapshot_job

    def snapshot_written(self, job: SnapshotJob) -> bool:
        """`job`'s snapshot is durable: let storage drop what it covers, then compact the
        log through its index. False if a newer snapshot (the leader's) came meanwhile."""
        self._finish(job)
        try:
            self.storage.snapshot_written(job.index)
        except OSError as exc:  # the snapshot is saved; only the clean-up failed
            log.warning("group %s: after the snapshot at %d: %s", self.core.group, job.index, exc)
        return self.core.snapshot_saved(job)

    def snapshot_failed(self, job: SnapshotJob, now: float) -> None:
        """`job` came to nothing; the next one is due `snapshot_retry` seconds from now."""
        self._finish(job)
        self.core.snapshot_failed(job)
        self._snapshot_retry_at = now + self.snapshot_retry

    def _finish(self, job: SnapshotJob) -> None:
        if self._snapshot_job is not job:
            raise RuntimeError(f"the snapshot at index {job.index} is not the one under way")
        self._snapshot_job = None

    # ---- snapshot bytes for lagging followers -----------------------------------------------

    def snapshot_to_load(self, now: float) -> int | None:
        """The index of a saved snapshot whose bytes a lagging follower needs, for the
        adapter to read from storage (one read at a time; none for `load_retry` seconds
        after a failed one)."""
        if self._loading is not None or now < self._load_retry_at:
            return None
        self._loading = self.core.snapshot_wanted()
        return self._loading

    def snapshot_loaded(self, snapshot: Snapshot) -> None:
        self._loading = None
        self.core.snapshot_loaded(snapshot)

    def snapshot_load_failed(self, now: float) -> None:
        self._loading = None
        self._load_retry_at = now + self.load_retry
