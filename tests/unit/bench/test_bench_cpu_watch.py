"""The CPU watch's own I/O: finding a local broker's process, reading /proc, and turning
heartbeats that arrive around a window into CPU per operation."""

from __future__ import annotations

import asyncio
import os
import socket

from backend.adapters.heartbeats import heartbeat_message
from backend.adapters.settings import BrokerAddress
from backend.bench.cpu_cost import CpuCost
from backend.bench.cpu_watch import CpuWatch, find_broker, is_local_address, read_process_cpu
from backend.bench.schedule import Window


async def test_a_broker_listening_on_this_host_is_found_by_its_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert await find_broker(BrokerAddress("127.0.0.1", port)) == (os.getpid(), None)


async def test_a_broker_on_another_host_is_not_measured() -> None:
    pid, why = await find_broker(BrokerAddress("192.0.2.7", 1883))  # TEST-NET-1: not ours
    assert pid is None
    assert why == "not measured: it runs on another host (192.0.2.7)"


async def test_a_local_port_nobody_listens_on_finds_no_broker() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening
        pid, why = await find_broker(BrokerAddress("127.0.0.1", port))
    assert pid is None
    assert why is not None and f"listening on port {port}" in why


def test_local_addresses() -> None:
    assert is_local_address("127.0.0.1")
    assert is_local_address("::1")
    assert not is_local_address("192.0.2.7")
    assert not is_local_address("not an address")


def test_this_process_cpu_is_read_from_proc() -> None:
    sample = read_process_cpu(os.getpid(), 1.0, os.sysconf("SC_CLK_TCK"))
    assert sample is not None and sample.cpu_seconds > 0 and sample.at == 1.0
    assert read_process_cpu(2**22 + 12345, 1.0, 100) is None  # above any pid_max


def beat(cpu: float) -> dict[str, object]:
    message = heartbeat_message(
        "client-portal-1", "client-portal", "127.0.0.1:7001", 1.0, None, None
    )
    message["cpu_seconds"] = cpu
    return message


TOPIC = "taskring/v1/heartbeat/client-portal/client-portal-1"


async def test_heartbeats_around_the_window_give_the_cpu_used_in_it() -> None:
    watch = CpuWatch(BrokerAddress("127.0.0.1", 1))
    loop = asyncio.get_running_loop()
    await watch.on_heartbeat(TOPIC, beat(1.0))
    window = Window(loop.time() + 0.05, 0.0, 0.1)
    await asyncio.sleep(0.2)
    await watch.on_heartbeat(TOPIC, beat(2.0))
    cost = await watch.cost(window, ops=100)
    assert isinstance(cost, CpuCost)
    (portals,) = cost.kinds
    assert portals.kind == "client-portal" and portals.processes == 1
    # a tenth of a second of the about 0.2 s between the heartbeats, whose CPU grew by 1 s
    assert 0.2 < portals.cpu_seconds < 0.8
    # each edge is off by at most the 1 s between the two readings
    assert 0 < portals.error_seconds <= 2.0


async def test_a_heartbeat_without_the_cpu_field_is_named_as_unmeasured() -> None:
    watch = CpuWatch(BrokerAddress("127.0.0.1", 1))
    old = beat(0.0)
    del old["cpu_seconds"]
    await watch.on_heartbeat(TOPIC, old)
    loop = asyncio.get_running_loop()
    cost = await watch.cost(Window(loop.time() - 1.0, 0.0, 0.5), ops=10)
    assert isinstance(cost, CpuCost)
    assert cost.kinds == ()
    assert dict(cost.unmeasured) == {
        "client-portal client-portal-1": "its heartbeats carry no CPU figure (an older version)"
    }


async def test_nothing_heard_says_why_cpu_is_not_shown() -> None:
    watch = CpuWatch(BrokerAddress("127.0.0.1", 1))
    loop = asyncio.get_running_loop()
    why = await watch.cost(Window(loop.time() - 1.0, 0.0, 0.5), ops=10)
    assert why == "cannot reach the MQTT broker at mqtt://127.0.0.1:1"
