"""Request metrics: counts by (op, outcome) and a latency histogram per op.

Pure counters a core updates as it answers requests; the component's heartbeat
(backend/adapters/heartbeats.py) publishes `RequestMetrics.to_wire()` and the web process
turns it into Prometheus families (backend/core/cluster_view.py). Nothing here reads a
clock: callers pass the latency they measured.
"""

from __future__ import annotations

import bisect
from typing import Any

from backend.core.drops import Drops

# Upper bounds in seconds, as Prometheus histograms count them.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
