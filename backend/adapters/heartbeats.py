"""Heartbeats: how each component tells the others it is alive (and what it counted).

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
    refused   the topic filters the broker refused this component's subscriptions to
              (its bus's `refused`): connected but deaf to them, so not ready; absent
              from the heartbeats of older versions
    cpu_seconds
              CPU seconds (user + system) this process and the children it waited
              for have used since it started (`taskring bench` turns them into CPU
              per operation); absent from the heartbeats of older versions
    metrics   RequestMetrics.to_wire() (core/metrics.py): {"requests": [[op, outcome, n]...],
              "latency": [[op, bucket counts, seconds]...],
              "dropped": [[message, reason, n]...] (messages dropped, drops.py: malformed
              ones, and ["outgoing", "broker cannot keep up", n] from the MQTT client)}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable
from typing import Any

from backend.adapters.bus.transport import Bus, BusUnavailable
from backend.core import topics
from backend.core.metrics import RequestMetrics

# RequestMetrics is re-exported until backend/processes/cache_node.py imports it from core.metrics.
__all__ = [
    "HEARTBEAT_INTERVAL",
    "RequestMetrics",
    "heartbeat_message",
    "process_cpu_seconds",
    "refused_subscriptions",
    "run_heartbeat",
]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0


def heartbeat_message(
    component_id: str,
    kind: str,
    address: str,
    started: float,
    problem: str | None,
    metrics: RequestMetrics | None,
    refused: Iterable[str] = (),
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
        "refused": sorted(refused),
        "cpu_seconds": process_cpu_seconds(),
        "metrics": metrics.to_wire() if metrics else {"requests": [], "latency": [], "dropped": []},
    }


def refused_subscriptions(bus: object) -> list[str]:
    """The filters the broker refused `bus` (its `refused`); none for a bus that cannot
    tell (the memory bus of tests, a stand-in)."""
    return sorted(getattr(bus, "refused", ()))


def process_cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children it has waited
    for: a replica writes its snapshots in forked children, and their work is the
    replica's too."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
        message = heartbeat_message(
            component_id, kind, address, started, readiness(), metrics, refused_subscriptions(bus)
        )
        with contextlib.suppress(BusUnavailable):  # the bus logs its own connection trouble
            await bus.publish(topic, message, qos=0)
        await asyncio.sleep(HEARTBEAT_INTERVAL)
