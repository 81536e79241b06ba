"""`taskring client-portal` as a real process against a real Mosquitto.

The unit tests check the protocol in depth; these check what only a process
shows: the command line, heartbeats on the broker, changes flowing between
two portal processes to a watcher, and a clean exit on SIGTERM and SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.bus.transport import Message
from backend.adapters.settings import BrokerAddress
from backend.adapters.store.local_store import LocalStore
from backend.core import topics
from backend.core.model.identity import cid_for_name, format_cid
from tests.conftest import TASKRING, Processes, free_port, port_open
from tests.support.waiting import eventually, log_text, wait_until

DEADLINE = 15.0
TOKEN = "e2e-token-0123456789abcdefghij"


def start_portal(processes: Processes, broker: str, number: int = 1) -> tuple[Any, int]:
    port = free_port()
    process = processes.taskring(
        "client-portal", "--id", f"client-portal-{number}", "--listen", f"127.0.0.1:{port}",
        name=f"client-portal-{number}", env={"TASKRING_BROKER": broker},
    )  # fmt: skip
    wait_until(lambda: port_open(port), f"client-portal-{number} on port {port}", timeout=20)
    return process, port


class Line:
    """A connection to a portal process, one JSON line at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Line:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, **request: Any) -> dict[str, Any]:
        self.writer.write(json.dumps(request).encode() + b"\n")
        return await self.recv()

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            return json.loads(await self.reader.readline())


@contextlib.asynccontextmanager
async def broker_store(url: str, store_id: str) -> AsyncIterator[LocalStore]:
    """A local store in this process on the same broker: how the test creates a client."""
    bus = MqttBus(BrokerAddress.parse(url), store_id)
    store = LocalStore(bus, store_id)
    async with bus:
        assert await bus.wait_connected(DEADLINE)
        yield store


async def test_a_portal_process_answers_and_publishes_heartbeats(
    processes: Processes, mosquitto: str
) -> None:
    _, port = start_portal(processes, mosquitto)
    heartbeats: list[Message] = []

    async def on_heartbeat(_topic: str, message: Message) -> None:
        heartbeats.append(message)

    bus = MqttBus(BrokerAddress.parse(mosquitto), "e2e-heartbeat-listener")
    bus.subscribe(topics.heartbeat("client-portal", "client-portal-1"), on_heartbeat)
    async with bus:
        line = await Line.open(port)
        assert await line.call(id="a", op="ping") == {"id": "a", "ok": True, "pong": True}
        traced = await line.call(id=2, op="ping", trace=True)
        assert traced["trace"]["route"] == ["client-portal-1"]
        denied = await line.call(id=3, op="auth", cid="0123456789abcdef", token="x")
        assert denied["error"]["code"] == "unauthorized"

        def pings_counted() -> bool:
            assert any(["ping", "ok", 2] in h["metrics"]["requests"] for h in heartbeats), (
                f"no heartbeat counting the pings: {heartbeats}"
            )
            return True

        await eventually(pings_counted, "a heartbeat counting the pings", DEADLINE, 0.05)
        beat = heartbeats[-1]
        assert beat["kind"] == "client-portal" and beat["address"] == f"127.0.0.1:{port}"
        assert beat["ready"] is True and beat["problem"] is None
        line.writer.close()


async def authenticated(line: Line, cid: str) -> bool:
    return (await line.call(op="auth", cid=cid, token=TOKEN))["ok"]


async def test_a_change_through_one_portal_process_reaches_a_watcher_on_another(
    processes: Processes, mosquitto: str
) -> None:
    _, port_one = start_portal(processes, mosquitto, 1)
    _, port_two = start_portal(processes, mosquitto, 2)
    cid = format_cid(cid_for_name("erin"))
    async with broker_store(mosquitto, "e2e-admin") as store:
        await store.create_client(cid_for_name("erin"), "erin", "", TOKEN)
    one, two = await Line.open(port_one), await Line.open(port_two)
    for line in (one, two):
        await eventually(
            functools.partial(authenticated, line, cid),
            "the new client to reach the portal",
            DEADLINE,
            0.05,
        )
    assert (await two.call(id=1, op="watch", cid=cid))["ok"]
    inserted = await one.call(id=1, op="insert_task", cid=cid, title="café", description="☕")
    assert inserted == {"id": 1, "ok": True}
    event = await two.recv()
    assert event == {"event": "task_inserted", "cid": cid, "title": "café", "description": "☕"}
    listed = await two.call(id=2, op="list_tasks", cid=cid)
    assert listed["tasks"] == [{"title": "café", "description": "☕"}]
    one.writer.close()
    two.writer.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_portal_cleanly_with_exit_0(
    processes: Processes, mosquitto: str, signum: signal.Signals
) -> None:
    process, port = start_portal(processes, mosquitto)
    os.kill(process.pid, signum)
    assert process.wait(timeout=DEADLINE) == 0, log_text(process)
    assert "stopping" in log_text(process)
    assert "Traceback" not in log_text(process)
    assert not port_open(port)


def run_portal(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    return subprocess.run(
        [TASKRING, "client-portal", *args],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_bad_listen_address_is_a_usage_error() -> None:
    result = run_portal("--listen", "127.0.0.1:notaport")
    assert result.returncode == 2
    assert "--listen" in result.stderr and "notaport" in result.stderr


def test_a_port_in_use_is_reported_and_exits_1(processes: Processes, mosquitto: str) -> None:
    _, port = start_portal(processes, mosquitto, 1)
    result = run_portal("--id", "client-portal-2", "--listen", f"127.0.0.1:{port}",
                        "--broker", mosquitto)  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
