"""A few bytes on the broker must not silence any component.

A msgpack map keyed by an array (`81 91 01 01`) once raised inside the bus's
loop, which died without a word: every cache node and portal that heard it on
the announcement topic went deaf for good, and every replica that heard it on
its inbox left its group. Here real processes hear that and other poison on
both, and must go on serving writes and reads, saying in their logs what they
dropped.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt

from backend.adapters.settings import BrokerAddress
from backend.core import topics
from tests.conftest import Processes
from tests.e2e.stack import start_stack
from tests.support.waiting import log_text, wait_until

POISON = [
    bytes.fromhex("81910101"),  # the reported one: a map keyed by an array
    b"\xc1",  # a byte msgpack never uses
    b"\x91" * 100_000,  # an array nested 100,000 deep
    bytes.fromhex("818101a10101"),  # a map keyed by a map
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
]
HOST_FRESHNESS = (
    1.6  # backend/adapters/store/ring_store.py: a portal forgets a silent cache node after this
)


def exchange(port: int, requests: list[dict[str, Any]], timeout: float = 10.0) -> list[dict]:
    """Send request lines to a client portal; its answers, one per request."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        reader = sock.makefile("rb")
        return [json.loads(reader.readline()) for _ in requests]


async def publish_poison(broker: str, topic_names: list[str]) -> None:
    address = BrokerAddress.parse(broker)
    async with aiomqtt.Client(address.host, address.port, identifier="poisoner") as client:
        for topic in topic_names:
            for payload in POISON:
                await client.publish(topic, payload, qos=1)


def test_poison_on_the_ring_and_raft_topics_silences_nothing(
    processes: Processes, tmp_path: Path
) -> None:
    stack = start_stack(
        processes, tmp_path, client_portals=1, storage="ring", cache_nodes=2, replica_groups=1
    )
    client = stack.create_client("poisoned")
    cid, token = client["cid"], client["token"]
    port = stack.client_ports[0]
    auth = {"id": 0, "op": "auth", "cid": cid, "token": token}

    poisoned = [topics.RING_ANNOUNCE, *(topics.raft_member("g1", m) for m in (1, 2, 3))]
    poisoned += [topics.ring_host(name) for name in stack.cache_nodes]
    asyncio.run(publish_poison(stack.broker, poisoned))
    # Long enough for a deaf portal to forget every cache node, and a deaf group its leader.
    time.sleep(HOST_FRESHNESS + 0.9)

    def serves() -> bool:
        title = f"after the poison {time.monotonic()}"
        insert = {"id": 1, "op": "insert_task", "cid": cid, "title": title, "description": ""}
        listing = {"id": 2, "op": "list_tasks", "cid": cid}
        answers = exchange(port, [auth, insert, listing])
        return all(a.get("ok") for a in answers) and title in json.dumps(answers[2])

    wait_until(serves, "a write and a read after the poison", timeout=8, alive=processes.started)
    assert all(p.poll() is None for p in processes.started), "a process died"
    logs = {Path(p.log_path).name: log_text(p) for p in processes.started}
    for name, text in logs.items():
        if name.startswith(("cache-node", "client-portal", "replica")):
            assert "dropped a malformed payload: not a msgpack map" in text, name
