"""Every MQTT topic taskring uses, in one place.

All topics live under `taskring/v1/` so a broker's ACL can grant each role
exactly the subtrees it needs (see backend/broker.py). Only MQTT 3.1.1
features are used: reply addresses and correlation ids ride in the payload.
"""

from __future__ import annotations

ROOT = "taskring/v1"

# Stage-1 ("local" storage) replication between portals.
SYNC_CHANGES = f"{ROOT}/sync/changes"
SYNC_SNAPSHOT_REQUEST = f"{ROOT}/sync/snapshot-request"


def sync_snapshot_reply(portal_id: str) -> str:
    return f"{ROOT}/sync/snapshot/{portal_id}"


# The cache ring: one inbox per cache node, announcements, replies to portals, events.
RING_ANNOUNCE = f"{ROOT}/ring/announce"
RING_EVENTS = f"{ROOT}/ring/events/+"


def ring_host(host_id: str) -> str:
    return f"{ROOT}/ring/host/{host_id}"


def ring_reply(portal_id: str) -> str:
    return f"{ROOT}/ring/reply/{portal_id}"


def ring_events(cid: int) -> str:
    return f"{ROOT}/ring/events/{cid:016x}"


# Heartbeats: every component announces itself, its address and its metrics.
HEARTBEATS = f"{ROOT}/heartbeat/#"


def heartbeat(kind: str, component_id: str) -> str:
    return f"{ROOT}/heartbeat/{kind}/{component_id}"


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching: `+` is one level, a final `#` is any number of levels."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)
