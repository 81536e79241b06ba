"""A flood of malformed messages is counted, not logged message by message."""

from __future__ import annotations

import asyncio
import logging

import pytest

from backend.adapters.bus.memory import MemoryHub
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.ring.cache_core import CacheNode
from tests.unit.core.replica_harness import Group

FLOOD = 1000


def test_a_cache_node_counts_a_flood_of_bad_announcements(caplog: pytest.LogCaptureFixture) -> None:
    node = CacheNode("n1", incarnation="i", bootstrap=True)
    with caplog.at_level(logging.WARNING):
        for n in range(FLOOD):
            assert node.receive(topics.RING_ANNOUNCE, {"t": "announce", "host": n}, 0.0) == []
    assert node.drops.to_wire() == [
        ["announcement", "host must be text of 1 to 512 characters", FLOOD]
    ]
    assert node.metrics.to_wire()["dropped"] == node.drops.to_wire()  # rides in heartbeats
    assert len(caplog.records) == 4  # the 1st, 10th, 100th and 1000th


def test_a_replica_counts_a_flood_of_undecodable_raft_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = Group().core(1)
    with caplog.at_level(logging.WARNING):
        for _ in range(FLOOD):
            core.receive({"t": "raft", "group": "g1", "msgs": [{"kind": ["append"]}]}, 0.0)
    assert core.drops.total == FLOOD
    assert len(caplog.records) == 4


def test_a_portal_counts_a_flood_of_bad_events(caplog: pytest.LogCaptureFixture) -> None:
    store = RingStore(MemoryHub().attach(), "p1")

    async def flood() -> None:
        for _ in range(FLOOD):
            await store._on_client_change("t", {"event": "client_deleted", "cid": " 0x1f"})

    with caplog.at_level(logging.WARNING):
        asyncio.run(flood())
    assert store.drops.to_wire() == [["event", "event cid must be 16 lowercase hex digits", FLOOD]]
    assert len(caplog.records) == 4
