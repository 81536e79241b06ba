"""Reads the CPU every process of the system uses while the bench drives it.

A component says its CPU seconds so far in every heartbeat (`cpu_seconds`,
backend/adapters/heartbeats.py), so the watch listens to the heartbeats on the
broker, as `taskring status` does, wherever the components run. Mosquitto sends
none: when it listens on this host and its process can be found (its port's
listening socket, backend/adapters/port_holders.py), its CPU is read from
/proc/<pid>/stat, and so is the bench's own, a few times a second. After the
run, cpu_cost.py turns the readings around the measured window into CPU per
operation by component kind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from backend.adapters.bus import BrokerBus, open_bus
from backend.adapters.port_holders import listening_pids
from backend.adapters.settings import BrokerAddress, BrokerAddresses
from backend.bench.cpu_cost import (
    BENCH,
    BROKER,
    CpuCost,
    CpuSample,
    ProcessKey,
    cost_by_kind,
    proc_stat_cpu,
    snapshot,
)
from backend.bench.schedule import Window
from backend.core import topics
from backend.core.cluster_view import ClusterView, HeartbeatError

LOCAL_EVERY = 0.25  # seconds between readings of the broker's and the bench's own CPU
# After the window, how many heartbeat intervals to wait for each component's next one.
WAIT_INTERVALS = 2.5
MAX_INTERVAL = 5.0  # a component announcing a longer interval is waited for this long at most
# Every component has sent a heartbeat this many intervals after the first one was heard.
HEARD_EVERYONE = 1.2
WILDCARDS = ("0.0.0.0", "::")
NO_CPU_FIELD = "its heartbeats carry no CPU figure (an older version)"


class CpuWatch:
    """Collects CPU readings of the system's processes while it is used as `async with`."""

    def __init__(self, address: BrokerAddress | BrokerAddresses) -> None:
        self.addresses = BrokerAddresses.of(address)
        self.address = self.addresses.first  # where the broker's own CPU is looked for
        self._view = ClusterView()
        self._series: dict[ProcessKey, list[CpuSample]] = {}
        self._without_cpu: set[ProcessKey] = set()
        self._heartbeats = 0
        self._first_heard: float | None = None
        self._interval = 1.0
        self._broker_note: str | None = None
        self._bus: BrokerBus | None = None
        self._local: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuWatch:
        _quiet_bus_logs()
        # Logged in, the broker takes the login as the client id; anonymous, a random one.
        client_id = self.address.username or f"taskring-bench-{os.getpid()}-{secrets.token_hex(3)}"
        self._bus = open_bus(self.addresses, client_id)
        self._bus.subscribe(topics.HEARTBEATS, self.on_heartbeat)
        await self._bus.__aenter__()
        broker_pid, self._broker_note = await find_broker(self.address)
        self._local = asyncio.create_task(self._read_local(broker_pid))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._local is not None:
            self._local.cancel()
            await asyncio.gather(self._local, return_exceptions=True)
        if self._bus is not None:
            await self._bus.__aexit__(*exc_info)

    async def on_heartbeat(self, topic: str, message: Any) -> None:
        received = asyncio.get_running_loop().time()
        try:
            beat = self._view.observe(topic, message, received).heartbeat
        except HeartbeatError:
            return  # a malformed heartbeat says nothing we could count
        self._heartbeats += 1
        if self._first_heard is None:
            self._first_heard = received
        self._interval = max(self._interval, min(beat.interval, MAX_INTERVAL))
        key = (beat.kind, beat.id)
        if beat.cpu_seconds is None:
            self._without_cpu.add(key)
            return
        sample = CpuSample(received, beat.cpu_seconds, (beat.pid, beat.started))
        self._series.setdefault(key, []).append(sample)

    async def _read_local(self, broker_pid: int | None) -> None:
        """Read the bench's own CPU, and the broker's when it was found, until cancelled."""
        loop = asyncio.get_running_loop()
        me = (os.getpid(), 0.0)
        ticks = os.sysconf("SC_CLK_TCK")
        while True:
            now = loop.time()
            self._series.setdefault((BENCH, "this process"), []).append(
                CpuSample(now, time.process_time(), me)
            )
            sample = read_process_cpu(broker_pid, now, ticks) if broker_pid else None
            if sample is not None:
                self._series.setdefault((BROKER, f"pid {broker_pid}"), []).append(sample)
            await asyncio.sleep(LOCAL_EVERY)

    async def hear_everyone(self, lead: float) -> None:
        """Wait until every component will have sent a heartbeat when the window begins,
        `lead` seconds from now, so each has a reading before it. Returns at once when
        the broker cannot be reached, and waits one interval at most for a first heartbeat."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + HEARD_EVERYONE * self._interval
        while self._bus is not None and self._bus.connected:
            first = self._first_heard
            if first is None and loop.time() >= give_up:
                return
            if first is not None:
                await asyncio.sleep(first + HEARD_EVERYONE * self._interval - lead - loop.time())
                return
            await asyncio.sleep(0.05)

    async def cost(self, window: Window, ops: int) -> CpuCost | str:
        """The CPU used in `window` (on this event loop's clock) per operation, or why it
        cannot be shown. Waits for each component's first heartbeat after the window."""
        if not self._heartbeats:
            return self._why_nothing_heard()
        await self._wait_for_readings_after(window.end)
        unmeasured = [(f"{kind} {name}", NO_CPU_FIELD) for kind, name in sorted(self._without_cpu)]
        if self._broker_note:
            unmeasured.append((BROKER, self._broker_note))
        start = snapshot(self._series, window.measure_from)
        end = snapshot(self._series, window.end)
        return cost_by_kind(start, end, ops, window.duration, unmeasured)

    def _why_nothing_heard(self) -> str:
        where = self.address.redacted()
        bus = self._bus
        if bus is not None and bus.connected:
            return f"no component's heartbeat was heard on the MQTT broker at {where}"
        error = bus.last_error if bus is not None else None
        return f"cannot reach the MQTT broker at {where}" + (f": {error}" if error else "")

    async def _wait_for_readings_after(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = end + WAIT_INTERVALS * self._interval
        recent = end - WAIT_INTERVALS * self._interval  # older series are of stopped processes
        while loop.time() < deadline:
            waiting = [s for s in self._series.values() if recent <= s[-1].at < end]
            if not waiting:
                return
            await asyncio.sleep(0.05)


def read_process_cpu(pid: int, now: float, ticks_per_second: int) -> CpuSample | None:
    """Process `pid`'s CPU from /proc (a file the kernel fills at once), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cpu, started = proc_stat_cpu(stat, ticks_per_second)
    except (OSError, ValueError, IndexError):
        return None
    return CpuSample(now, cpu, (pid, float(started)))


async def find_broker(address: BrokerAddress) -> tuple[int | None, str | None]:
    """The pid of the broker's process when it listens on this host and may be looked
    into, else (None, why its CPU is not measured)."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return None, f"not measured: cannot resolve {address.host}: {exc}"
    addresses = {str(info[4][0]).partition("%")[0] for info in found}
    if not any(is_local_address(ip) for ip in addresses):
        return None, f"not measured: it runs on another host ({address.host})"
    listeners = await asyncio.to_thread(listening_pids, address.port)
    pids = {pid for local, pid in listeners.items() if local in addresses or local in WILDCARDS}
    if len(pids) != 1:
        return None, (
            f"not measured: no process of this user listening on port {address.port} was found"
            if not pids
            else f"not measured: several processes listen on port {address.port}"
        )
    return pids.pop(), None


def is_local_address(ip: str) -> bool:
    """Whether `ip` is an address of this host: loopback, or one a socket can bind to."""
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return True
    except ValueError:
        return False
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def _quiet_bus_logs() -> None:
    """The bus logs every failed connection attempt; the report says it once."""
    for name in ("backend.adapters.bus.mqtt", "backend.adapters.bus.lean"):
        logging.getLogger(name).setLevel(logging.ERROR)
