"""A coverage-guided fuzz run (atheris) of what reads untrusted bytes: `make fuzz`.

The seeded hypothesis tests in tests/unit run in `make test`; this one runs for
as long as asked (FUZZ_SECONDS, default 60) and steers its inputs by coverage,
so it reaches branches random inputs rarely do. Each input's first byte picks a
target: the bus codec, the client-protocol parser, a cache node, a replica,
the cluster view or the MQTT packet decoder. Anything but the documented refusal
(DecodeError, InvalidRequest, HeartbeatError, ProtocolError) is a crash, and
atheris saves the input that caused it; `python tests/fuzz/coverage_guided.py <file>` replays one.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable
from functools import partial

import atheris

with atheris.instrument_imports():
    from backend.core import topics
    from backend.core.cluster_view import ClusterView, HeartbeatError
    from backend.core.codec import DecodeError, unpack
    from backend.core.mqtt_packets import PacketDecoder, ProtocolError
    from backend.core.protocol import InvalidRequest, parse_request
    from backend.core.raft import RaftOptions, bootstrap_state
    from backend.core.replica.core import ReplicaCore
    from backend.core.ring.cache_core import CacheNode

HEARTBEAT_TOPIC = topics.heartbeat("cache-node", "cache-node-2")


def new_cache_node() -> CacheNode:
    return CacheNode("cache-node-1", incarnation="fuzz", bootstrap=True, now=0.0, seed=1)


def new_replica() -> ReplicaCore:
    return ReplicaCore(
        "g1",
        1,
        bootstrap_state([1, 2, 3]),
        partial(topics.raft_member, "g1"),
        random.Random(1),
        RaftOptions(election_ticks=10),
    )


CACHE_NODE = new_cache_node()
REPLICA = new_replica()
VIEW = ClusterView()


def codec(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        unpack(data)


def mqtt_packets(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        PacketDecoder(max_packet_size=4096).feed(data)


def protocol(data: bytes) -> None:
    with contextlib.suppress(InvalidRequest):
        parse_request(data)


def _message(data: bytes) -> dict | None:
    try:
        return unpack(data)
    except DecodeError:
        return None


def cache_node(data: bytes) -> None:
    message = _message(data)
    if message is not None:
        CACHE_NODE.receive(topics.ring_host("cache-node-1"), message, 1.0)
        CACHE_NODE.tick(1.0)


def replica(data: bytes) -> None:
    message = _message(data)
    if message is not None:
        REPLICA.receive(message, 1.0)
        REPLICA.tick(1.0)


def cluster_view(data: bytes) -> None:
    message = _message(data)
    if message is not None:
        with contextlib.suppress(HeartbeatError):
            VIEW.observe(HEARTBEAT_TOPIC, message, 1.0)
        VIEW.missing(2.0)
        VIEW.cache_nodes(2.0)


TARGETS: tuple[Callable[[bytes], None], ...] = (
    codec,
    protocol,
    cache_node,
    replica,
    cluster_view,
    mqtt_packets,
)


def one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
