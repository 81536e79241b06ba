"""Request metrics and heartbeats: how each component tells the others it is alive.

Every component publishes a heartbeat once a second on
`taskring/v1/heartbeat/<kind>/<id>`. The web process listens to them to
answer /readyz, /api/cluster and /metrics, and `taskring status` prints them,
so nothing needs to know in advance where the other components run.

Heartbeat message (msgpack map):

    id        component id, e.g. "client-portal-1"
    kind      "client-portal" | "admin-portal" | "web" | ...
    address   where users reach it ("127.0.0.1:7001"), or ""
    pid       OS process id
    ready     true when it can take a write now
    problem   why it is not ready, or None
    started   Unix time it started (float seconds)
    sent      Unix time of this heartbeat
    interval  seconds until the next heartbeat
    metrics   RequestMetrics.to_wire(): {"requests": [[op, outcome, n]...],
              "latency": [[op, bucket counts, seconds]...],
              "dropped": [[message, reason, n]...] (malformed messages dropped, drops.py)}
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .bus import topics
from .bus.drops import Drops
from .bus.transport import Bus, BusUnavailable

log = logging.getLogger(__name__)

# Upper bounds in seconds, as Prometheus histograms count them.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HEARTBEAT_INTERVAL = 1.0


class RequestMetrics:
    """Counts of requests by (op, outcome), a latency histogram per op, and the
    component's dropped messages (`drops`, shared by its bus and its cores)."""

    def __init__(self, drops: Drops | None = None) -> None:
        self.drops = drops or Drops()
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}  # per op: one count per bucket, +Inf last
        self.sums: dict[str, float] = {}

    def observe(self, op: str, outcome: str, seconds: float) -> None:
        """Record one request; outcome is "ok" or an error code (or gRPC status name)."""
        self.counts[(op, outcome)] = self.counts.get((op, outcome), 0) + 1
        counts = self.buckets.setdefault(op, [0] * (len(LATENCY_BUCKETS) + 1))
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sums[op] = self.sums.get(op, 0.0) + seconds

    def to_wire(self) -> dict[str, Any]:
        return {
            "requests": [[op, outcome, n] for (op, outcome), n in self.counts.items()],
            "latency": [[op, counts, self.sums[op]] for op, counts in self.buckets.items()],
            "dropped": self.drops.to_wire(),
        }


def heartbeat_message(
    component_id: str,
    kind: str,
    address: str,
    started: float,
    problem: str | None,
    metrics: RequestMetrics | None,
) -> dict[str, Any]:
    return {
        "id": component_id,
        "kind": kind,
        "address": address,
        "pid": os.getpid(),
        "ready": problem is None,
        "problem": problem,
        "started": started,
        "sent": time.time(),
        "interval": HEARTBEAT_INTERVAL,
        "metrics": metrics.to_wire() if metrics else {"requests": [], "latency": [], "dropped": []},
    }


async def run_heartbeat(
    bus: Bus,
    kind: str,
    component_id: str,
    address: str,
    readiness: Callable[[], str | None],
    metrics: RequestMetrics | None = None,
) -> None:
    """Publish a heartbeat every HEARTBEAT_INTERVAL seconds until cancelled."""
    started = time.time()
    topic = topics.heartbeat(kind, component_id)
    while True:
        message = heartbeat_message(component_id, kind, address, started, readiness(), metrics)
        with contextlib.suppress(BusUnavailable):  # the bus logs its own connection trouble
            await bus.publish(topic, message, qos=0)
        await asyncio.sleep(HEARTBEAT_INTERVAL)
