"""`taskring broker` as a real process: Mosquitto with a login and ACL per component; embedded.

A denied publish is silently dropped by Mosquitto (MQTT 3.1.1 has no way to
say no), so each "may not" test follows the forbidden message with an
allowed marker on the same subscriber connection: Mosquitto handles
messages in order, so if the forbidden one had been delivered it would
arrive before the marker.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.broker_logins import broker_url_for, load_credentials
from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.bus.probe import CONNACK_ACCEPTED, probe_broker
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from tests.conftest import MOSQUITTO, Processes, free_port, port_open
from tests.e2e.stack import start_taskring_broker
from tests.support.waiting import log_text, wait_until

needs_mosquitto = pytest.mark.skipif(
    not os.access(MOSQUITTO, os.X_OK), reason="Mosquitto is not installed"
)


def start_broker(
    processes: Processes, tmp_path: Path, *flags: str
) -> tuple[int, Path, subprocess.Popen[bytes]]:
    data = tmp_path / "data"
    port, process = start_taskring_broker(processes, data, *flags)
    return port, data, process


class ReceivingBus(MqttBus):
    """An MqttBus with a queue of the messages its subscriptions received."""

    received: asyncio.Queue[tuple[str, dict[str, Any]]]


@asynccontextmanager
async def bus_for(url: str, client_id: str, *filters: str) -> AsyncIterator[Any]:
    """A connected MqttBus; messages on `filters` land in `bus.received` (a queue)."""
    bus = ReceivingBus(BrokerAddress.parse(url), client_id)
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def collect(topic: str, message: dict[str, Any]) -> None:
        await received.put((topic, message))

    for topic_filter in filters:
        bus.subscribe(topic_filter, collect)
    async with bus:
        assert await bus.wait_connected(10), f"{client_id}: {bus.last_error}"
        bus.received = received
        yield bus


async def next_message(bus: Any) -> tuple[str, dict[str, Any]]:
    return await asyncio.wait_for(bus.received.get(), 5)


@needs_mosquitto
async def test_anonymous_and_wrong_password_are_refused(processes: Processes, tmp_path: Path):
    port, data, _ = start_broker(processes, tmp_path)
    passwords = load_credentials(data)
    assert probe_broker("127.0.0.1", port) not in (None, CONNACK_ACCEPTED)
    assert probe_broker("127.0.0.1", port, "status", "wrong") not in (None, CONNACK_ACCEPTED)
    assert probe_broker("127.0.0.1", port, "status", passwords["status"]) == CONNACK_ACCEPTED
    async with MqttBus(BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "anon") as anonymous:
        assert not await anonymous.wait_connected(1.5)
        assert anonymous.last_error


def login_url(port: int, data: Path, login: str) -> str:
    return broker_url_for(login, "127.0.0.1", port, data)


@needs_mosquitto
async def test_heartbeats_reach_web_but_web_cannot_forge_them(processes: Processes, tmp_path: Path):
    port, data, _ = start_broker(processes, tmp_path)
    beat = topics.heartbeat("client-portal", "client-portal-1")
    async with (
        bus_for(login_url(port, data, "client-portal-1"), "client-portal-1") as portal,
        bus_for(login_url(port, data, "web-1"), "web-1", topics.HEARTBEATS) as web,
    ):
        await portal.publish(beat, {"n": 1})
        assert await next_message(web) == (beat, {"n": 1})

        await web.publish(beat, {"forged": True})
        await web.publish(topics.SYNC_CHANGES, {"forged": True})
        await portal.publish(beat, {"marker": True})
        assert await next_message(web) == (beat, {"marker": True})

        own = topics.heartbeat("web", "web-1")
        await web.publish(own, {"id": "web-1"})
        assert await next_message(web) == (own, {"id": "web-1"})


@needs_mosquitto
async def test_status_reads_heartbeats_but_not_changes(processes: Processes, tmp_path: Path):
    port, data, _ = start_broker(processes, tmp_path)
    beat = topics.heartbeat("client-portal", "client-portal-1")
    async with (
        bus_for(
            login_url(port, data, "status"), "status", f"{topics.ROOT}/sync/#", topics.HEARTBEATS
        ) as status,
        bus_for(login_url(port, data, "client-portal-1"), "client-portal-1") as portal,
    ):
        await portal.publish(topics.SYNC_CHANGES, {"secret": True})
        await portal.publish(beat, {"id": "client-portal-1"})
        assert await next_message(status) == (beat, {"id": "client-portal-1"})

        await status.publish(beat, {"forged": True})
        await portal.publish(beat, {"marker": True})
        assert await next_message(status) == (beat, {"marker": True})


@needs_mosquitto
async def test_a_login_cannot_take_another_s_client_id_nor_read_its_topics(
    processes: Processes, tmp_path: Path
):
    """Each component logs in as itself, the broker takes the login as its client id,
    and the ACL lets a login read only what its own job needs."""
    port, data, _ = start_broker(processes, tmp_path, "--logins", "client-portal-7")
    by_hand = load_credentials(data)["client-portal-7"]  # for a portal started on another host
    assert probe_broker("127.0.0.1", port, "client-portal-7", by_hand) == CONNACK_ACCEPTED
    own_reply, other_reply = (
        topics.ring_reply("client-portal-1"),
        topics.ring_reply("client-portal-2"),
    )
    node_inbox = topics.ring_host("cache-node-1")
    portal_filters = (own_reply, other_reply, node_inbox)
    async with (
        bus_for(login_url(port, data, "cache-node-1"), "cache-node-1") as node,
        bus_for(
            login_url(port, data, "client-portal-1"), "client-portal-1", *portal_filters
        ) as portal,
        bus_for(login_url(port, data, "web-1"), "web-1", f"{topics.ROOT}/ring/#") as web,
    ):
        connects = []

        async def connected() -> None:
            connects.append(time.monotonic())

        portal.on_connect(connected)
        # `status` asking for the portal's client id gets its own: the portal stays on.
        async with bus_for(login_url(port, data, "status"), "client-portal-1"):
            await asyncio.sleep(1.0)
            await node.publish(own_reply, {"n": 1})
            assert await next_message(portal) == (own_reply, {"n": 1})
        await asyncio.sleep(0.5)
        assert connects == [], "the portal was disconnected and had to reconnect"

        # Nobody else's replies nor a cache node's inbox reach a portal, and the web
        # process reads nothing of the ring.
        await node.publish(other_reply, {"secret": 1})
        await node.publish(node_inbox, {"secret": 2})
        await node.publish(topics.RING_ANNOUNCE, {"secret": 3})
        await node.publish(own_reply, {"marker": True})
        assert await next_message(portal) == (own_reply, {"marker": True})
        await asyncio.sleep(0.2)
        assert web.received.empty()


@needs_mosquitto
async def test_request_reply_is_not_held_back_by_nagle(processes: Processes, tmp_path: Path):
    port, data, _ = start_broker(processes, tmp_path)
    reply_topic = topics.sync_snapshot_reply("client-portal-1")
    responder_url = login_url(port, data, "client-portal-2")
    responder = MqttBus(BrokerAddress.parse(responder_url), "client-portal-2")

    async def answer(topic: str, message: dict[str, Any]) -> None:
        await responder.publish(reply_topic, message)

    responder.subscribe(topics.SYNC_SNAPSHOT_REQUEST, answer)
    url = login_url(port, data, "client-portal-1")
    async with responder, bus_for(url, "client-portal-1", reply_topic) as requester:
        assert await responder.wait_connected(10)
        seconds = []
        for n in range(30):
            started = time.perf_counter()
            await requester.publish(topics.SYNC_SNAPSHOT_REQUEST, {"n": n})
            assert await next_message(requester) == (reply_topic, {"n": n})
            seconds.append(time.perf_counter() - started)
    # Without set_tcp_nodelay in mosquitto.conf this median is ~44 ms here (~88 ms elsewhere).
    assert statistics.median(seconds) < 0.02, seconds


@needs_mosquitto
async def test_a_subscription_made_while_connected_works_until_dropped(
    processes: Processes, tmp_path: Path
):
    port, data, _ = start_broker(processes, tmp_path)
    node_url = login_url(port, data, "cache-node-1")
    portal_url = login_url(port, data, "client-portal-1")
    events = topics.ring_events("cache-node-1")
    async with (
        bus_for(node_url, "cache-node-1") as owner,
        bus_for(portal_url, "client-portal-1") as watcher,
    ):
        seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def collect(_topic: str, message: dict[str, Any]) -> None:
            await seen.put(message)

        # Once subscribe_now returns, the very next message is delivered: no wait needed.
        await watcher.subscribe_now(topics.RING_EVENTS, collect)
        await owner.publish(events, {"n": 1})
        assert await asyncio.wait_for(seen.get(), 5) == {"n": 1}
        watcher.unsubscribe(topics.RING_EVENTS, collect)
        # The broker stops sending once the unsubscribe is through; a marker on another
        # subscription, published after, proves nothing more came in between.
        await watcher.subscribe_now(topics.RING_ANNOUNCE, collect)
        for n in range(2, 5):
            await owner.publish(events, {"n": n})
        await owner.publish(topics.RING_ANNOUNCE, {"marker": True})
        assert await asyncio.wait_for(seen.get(), 5) == {"marker": True}
        assert seen.empty()


@needs_mosquitto
async def test_sigterm_stops_broker_and_mosquitto(processes: Processes, tmp_path: Path):
    port, _, process = start_broker(processes, tmp_path)
    mosquitto_pids = wait_until(lambda: children_of(process.pid), "mosquitto to start")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    wait_until(lambda: not any(alive(pid) for pid in mosquitto_pids), "mosquitto to exit")
    assert not port_open(port)


@needs_mosquitto
def test_mosquitto_dies_with_a_killed_broker_command(processes: Processes, tmp_path: Path):
    port, _, process = start_broker(processes, tmp_path)
    mosquitto_pids = wait_until(lambda: children_of(process.pid), "mosquitto to start")
    process.kill()
    process.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in mosquitto_pids), "mosquitto to die too")
    wait_until(lambda: not port_open(port), "the port to close")


@needs_mosquitto
def test_a_taken_port_is_a_clear_error(processes: Processes, tmp_path: Path):
    port, _, _ = start_broker(processes, tmp_path)
    second = processes.taskring(
        "broker", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d2"), name="b2"
    )
    assert second.wait(20) != 0
    assert f"cannot listen on 127.0.0.1:{port}" in log_text(second)
    assert "Traceback" not in log_text(second)


def test_bad_listen_address_is_a_usage_error(processes: Processes, tmp_path: Path):
    process = processes.taskring("broker", "--listen", "127.0.0.1:http", name="bad")
    assert process.wait(20) == 2
    assert "--listen" in log_text(process)


def test_a_login_that_names_no_component_is_a_usage_error(processes: Processes, tmp_path: Path):
    args = ("--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"))
    process = processes.taskring("broker", *args, "--logins", "cache-node-5,portal", name="bad")
    assert process.wait(20) == 2
    assert "'portal' names no component" in log_text(process)
    assert not (tmp_path / "d" / "broker-credentials.json").exists()


async def test_embedded_broker_round_trip(processes: Processes, tmp_path: Path):
    port, data, process = start_broker(processes, tmp_path, "--embedded")
    url = f"mqtt://127.0.0.1:{port}"
    async with (
        bus_for(url, "portal-1", topics.SYNC_CHANGES) as subscriber,
        bus_for(url, "portal-2") as publisher,
    ):
        await publisher.publish(topics.SYNC_CHANGES, {"n": 1, "blob": b"\x00\xff"})
        assert await next_message(subscriber) == (
            topics.SYNC_CHANGES,
            {"n": 1, "blob": b"\x00\xff"},
        )
    assert "for a quick start only" in log_text(process)
    assert not (data / "broker-credentials.json").exists()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@needs_mosquitto
def test_broker_works_with_tmpdir_that_mosquitto_cannot_enter(processes: Processes, tmp_path: Path):
    """Started as root, the broker hands Mosquitto copies of its files in a private
    directory; a TMPDIR only root may enter must not be where that goes."""
    private_tmp = tmp_path / "root-only"
    private_tmp.mkdir(mode=0o700)
    data = tmp_path / "data"
    port, process = start_taskring_broker(processes, data, env={"TMPDIR": str(private_tmp)})
    password = load_credentials(data)["status"]
    assert probe_broker("127.0.0.1", port, "status", password) == CONNACK_ACCEPTED
    assert process.poll() is None, log_text(process)
    if os.geteuid() == 0:
        assert not list(private_tmp.iterdir())
        (private,) = Path("/tmp").glob(f"taskring-broker-{process.pid}-*")
        info = private.stat()
        assert info.st_mode & 0o777 == 0o700  # the password file stays between root and it
        assert info.st_uid == pwd.getpwnam("mosquitto").pw_uid
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
