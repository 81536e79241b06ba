"""Stage-1 convergence: portals' local stores over a real Mosquitto.

The stores run in this process, each with its own MQTT connection, so the
test can also inject duplicated and reordered change messages and restart
the broker underneath them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.settings import BrokerAddress
from backend.adapters.store.local_store import LocalStore
from backend.core import topics
from backend.core.model.records import Task
from tests.conftest import start_mosquitto, stop_process
from tests.support.waiting import eventually

CID = 0x1234
DEADLINE = 10.0


@contextlib.asynccontextmanager
async def portal(url: str, portal_id: str) -> AsyncIterator[LocalStore]:
    bus = MqttBus(BrokerAddress.parse(url), portal_id)
    store = LocalStore(bus, portal_id)
    async with bus:
        assert await bus.wait_connected(DEADLINE), f"{portal_id} could not connect"
        yield store


async def same_tasks(stores: list[LocalStore]) -> bool:
    lists = [await s.list_tasks(CID) for s in stores]
    return all(tasks == lists[0] for tasks in lists)


async def test_a_change_on_one_portal_shows_on_the_other(mosquitto: str) -> None:
    async with portal(mosquitto, "p1") as one, portal(mosquitto, "p2") as two:
        await one.create_client(CID, "alice", "", "secret")
        await eventually(lambda: two.authenticate(CID, "secret"), "the client on p2", DEADLINE)
        await one.insert_task(CID, "buy milk", "2 litres")
        await two.insert_task(CID, "walk dog", "")
        await two.update_task(CID, "buy milk", "3 litres")
        expected = [Task("buy milk", "3 litres"), Task("walk dog", "")]

        async def converged() -> bool:
            return await one.list_tasks(CID) == expected and await same_tasks([one, two])

        await eventually(converged, "both portals to list the same tasks", DEADLINE)


async def test_duplicated_and_reordered_changes_converge_to_the_same_state(mosquitto: str) -> None:
    captured: list[dict] = []

    async def capture(_topic: str, message: dict) -> None:
        if message.get("origin") == "p1":
            captured.append(message)

    chaos = MqttBus(BrokerAddress.parse(mosquitto), "chaos")
    chaos.subscribe(topics.SYNC_CHANGES, capture)
    async with chaos, portal(mosquitto, "p1") as one, portal(mosquitto, "p2") as two:
        assert await chaos.wait_connected(DEADLINE)
        await one.create_client(CID, "alice", "", "secret")
        for n in range(20):
            await one.insert_task(CID, f"t{n}", "first")
        for n in range(0, 20, 2):
            await one.update_task(CID, f"t{n}", "second")
        for n in range(0, 20, 5):
            await one.delete_task(CID, f"t{n}")
        await eventually(lambda: same_tasks([one, two]), "p2 to converge", DEADLINE)
        await eventually(
            lambda: _true(len(captured) >= 35), "the chaos client to see every change", DEADLINE
        )
        # Replay everything backwards, twice: old versions and duplicates must change nothing.
        for message in list(reversed(captured)) * 2:
            await chaos.publish(topics.SYNC_CHANGES, message)
        # Messages from one publisher arrive in order, so once p2 shows this marker task
        # it has merged every replay before it.
        version = [time.time_ns() // 1_000_000, 0, "chaos"]
        marker = {"origin": "chaos", "entries": [[["task", CID, "marker"], ["", version], version]]}
        await chaos.publish(topics.SYNC_CHANGES, marker)
        await eventually(
            lambda: _has(two, "marker"), "p2 to merge the replays and the marker", DEADLINE
        )
        await eventually(lambda: same_tasks([one, two]), "p1 to merge the marker too", DEADLINE)
        titles = [t.title for t in await two.list_tasks(CID)]
        assert "t0" not in titles and "t1" in titles
        assert (await two.list_tasks(CID))[0] == Task("t1", "first")
        assert (await two.list_tasks(CID))[1] == Task("t2", "second")


async def test_a_portal_that_starts_late_catches_up(mosquitto: str) -> None:
    async with portal(mosquitto, "early") as early:
        await early.create_client(CID, "alice", "", "secret")
        for n in range(50):
            await early.insert_task(CID, f"task {n}", "")
        async with portal(mosquitto, "late") as late:
            await eventually(
                lambda: same_tasks([early, late]), "the late portal to catch up", DEADLINE
            )
            assert len(await late.list_tasks(CID)) == 50


async def test_portals_catch_up_after_the_broker_restarts(processes, tmp_path) -> None:
    url = start_mosquitto(processes, tmp_path)
    port = int(url.rsplit(":", 1)[1])
    async with portal(url, "p1") as one, portal(url, "p2") as two:
        await one.create_client(CID, "alice", "", "secret")
        await eventually(lambda: two.authenticate(CID, "secret"), "the client on p2", DEADLINE)
        stop_process(processes.started[0])
        await eventually(
            lambda: _true(not one.bus.connected), "p1 to notice the broker is gone", DEADLINE
        )
        assert one.readiness() is not None
        await one.insert_task(CID, "written while the broker was down", "")
        start_mosquitto(processes, tmp_path, port)
        await eventually(
            lambda: _has(two, "written while the broker was down"),
            "the write to reach p2 after the broker came back",
            DEADLINE,
        )
        assert one.readiness() is None


async def _true(value: bool) -> bool:
    return value


async def _has(store: LocalStore, title: str) -> bool:
    return any(t.title == title for t in await store.list_tasks(CID))
