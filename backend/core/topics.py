"""Every MQTT topic taskring uses, in one place.

All topics live under `taskring/v1/` so a broker's ACL can grant each login
exactly the topics it needs (see backend/adapters/broker_logins.py). Only MQTT 3.1.1
features are used: reply addresses and correlation ids ride in the payload.
"""

from __future__ import annotations

ROOT = "taskring/v1"

# Stage-1 ("local" storage) replication between portals.
SYNC_CHANGES = f"{ROOT}/sync/changes"
SYNC_SNAPSHOT_REQUEST = f"{ROOT}/sync/snapshot-request"


def sync_snapshot_reply(portal_id: str) -> str:
    return f"{ROOT}/sync/snapshot/{portal_id}"


# Requests, replies, Raft messages and change events travel at QoS 0. Over a live
# connection to the broker it loses nothing QoS 1 would keep (sessions are clean, so
# neither survives a reconnect), every protocol above retries or times out on its own, and
# it spares a PUBACK per message both ways. Mosquitto also sends QoS-0 messages to a
# connected client at once, whereas QoS-1 ones beyond a client's 20 in flight wait in a
# queue that drops what passes 1000: under load QoS 1 would lose more, not less.
MESSAGE_QOS = 0

# The cache ring: one inbox per cache node, announcements, replies to portals, events.
RING_ANNOUNCE = f"{ROOT}/ring/announce"
# Change events, one topic per cache node that applied them, batched like replies. A portal
# subscribes to them only while one of its connections watches a client: most writes are
# watched by nobody, and the broker then drops their events without sending them on.
RING_EVENTS = f"{ROOT}/ring/events/+"
# Token rotations and client deletions, which every portal hears to forget the
# authentications it caches.
RING_CLIENT_CHANGES = f"{ROOT}/ring/client-changes"


def ring_host(host_id: str) -> str:
    return f"{ROOT}/ring/host/{host_id}"


def ring_reply(portal_id: str) -> str:
    return f"{ROOT}/ring/reply/{portal_id}"


def ring_events(host_id: str) -> str:
    return f"{ROOT}/ring/events/{host_id}"


# Replica groups (the durable tier): one inbox per replica, carrying Raft messages between
# the group's members and proposals and reads from the group's users; replies go to a topic
# the user names under raft/ (the only subtree replicas may publish on). A cache node's
# replies carry its id and its incarnation as two levels, so the broker's ACL can let it
# read the replies of all its incarnations and no other node's.
def raft_member(group: str, member: int) -> str:
    return f"{ROOT}/raft/{group}/{member}"


def raft_reply(group: str, host_id: str, incarnation: str) -> str:
    return f"{ROOT}/raft/{group}/reply/{host_id}/{incarnation}"


def raft_replies(host_id: str, incarnation: str) -> str:
    """Filter for the replies to one incarnation of a cache node from every group."""
    return f"{ROOT}/raft/+/reply/{host_id}/{incarnation}"


# Fault notices from `taskring chaos` (backend/core/chaos_notices.py): a fault struck,
# healed or could not strike. The web process keeps the recent ones for the cluster page.
CHAOS_EVENTS = f"{ROOT}/chaos/events"


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
