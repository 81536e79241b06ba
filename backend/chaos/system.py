"""The system under test: found through its web process, or started here and stopped again.

`taskring up` runs a web process whose GET /api/components lists every component
(id, kind, pid, address) and GET /api/cluster the replica groups and their
leaders; its data directory holds pids.json (every child's pid by name, the broker's
too), the admin token, and with TASKRING_FAILPOINTS=1 the failpoint files
DATA/failpoints/<child-name>. `Started` runs `taskring up` in a temporary data
directory on free ports, with failpoints on, and stops it whole afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backend.adapters import settings
from backend.bench.restart import alive, descendants
from backend.bench.targets.peers import free_port
from backend.chaos import network
from backend.processes.supervisor import PIDS_FILE, taskring_command

HOST = "127.0.0.1"
HTTP_TIMEOUT = 3.0
FAILPOINTS_DIR = "failpoints"
BANNER = "taskring is up."
START_DEADLINE = 90.0
STOP_WAIT = 40.0
KILL_WAIT = 10.0
OUTPUT_TAIL = 60


class SystemUnreachable(Exception):
    """The web process did not answer, or said nothing usable."""


class StartFailed(Exception):
    """`taskring up` exited before it said it was up."""


@dataclass(frozen=True)
class Component:
    id: str
    kind: str
    pid: int
    address: str
    alive: bool


@dataclass(frozen=True)
class Target:
    """One process a fault strikes: its component id, kind and pid, and its child name
    under `taskring up` (logs, pids.json, failpoint file)."""

    id: str
    kind: str
    pid: int

    @property
    def child_name(self) -> str:
        return f"replica-{self.id}" if self.kind == "replica" else self.id

    def describe(self) -> str:
        return f"{self.id} (pid {self.pid})"


class System:
    """What the web process and the data directory tell about a running system."""

    def __init__(self, web: str, data_dir: Path) -> None:
        self.web = web.rstrip("/")
        self.data_dir = data_dir
        self.http = httpx.AsyncClient(base_url=self.web, timeout=HTTP_TIMEOUT)

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str) -> Any:
        try:
            response = await self.http.get(path)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SystemUnreachable(f"{self.web}{path}: {exc!r}") from exc

    async def components(self) -> list[Component]:
        listed = await self._get("/api/components")
        return [
            Component(
                str(c.get("id")),
                str(c.get("kind")),
                int(c.get("pid") or 0),
                str(c.get("address") or ""),
                bool(c.get("alive", True)),
            )
            for c in listed
            if isinstance(c, dict)
        ]

    async def replica_groups(self) -> list[dict[str, Any]]:
        cluster = await self._get("/api/cluster")
        return [g for g in cluster.get("replica_groups", []) if isinstance(g, dict)]

    async def ready(self) -> bool | None:
        """Whether /readyz says a write can commit end to end; None: no answer at all."""
        with contextlib.suppress(httpx.HTTPError):
            return (await self.http.get("/readyz")).status_code == 200
        return None

    async def ports(self, kind: str) -> list[int]:
        """The ports of the live portals of `kind` (`client-portal`, `admin-portal`)."""
        found = []
        for c in await self.components():
            if c.kind == kind and c.alive and c.address.rpartition(":")[2].isdigit():
                found.append(int(c.address.rpartition(":")[2]))
        return sorted(found)

    async def target(self, kind: str, component_id: str) -> Target | None:
        for c in await self.components():
            if c.kind == kind and c.id == component_id and c.alive and c.pid:
                return Target(c.id, c.kind, c.pid)
        return None

    def children(self) -> dict[str, int]:
        """Child name -> pid, as `taskring up` last wrote them; {} when not found."""
        try:
            listed = json.loads((self.data_dir / PIDS_FILE).read_text())["children"]
            return {str(name): int(pid) for name, pid in listed.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def broker(self) -> tuple[int, set[int]] | None:
        """The broker's pid and listening ports: the process `taskring up` started as its
        broker child, or the one below it that listens (`taskring broker` may run Mosquitto
        as its own child); None when none is found."""
        child = self.children().get("broker")
        if not child:
            return None
        sockets = network.tcp_sockets()
        for pid in [child, *sorted(descendants(child))]:
            ports = network.listening_ports(sockets, network.socket_inodes(pid))
            if ports:
                return pid, ports
        return None

    def failpoints(self) -> Path | None:
        """DATA/failpoints when the system runs with failpoints on, else None."""
        directory = self.data_dir / FAILPOINTS_DIR
        return directory if directory.is_dir() else None

    def admin_token(self) -> str | None:
        return settings.read_admin_token(self.data_dir)


@dataclass(frozen=True)
class Layout:
    broker: int
    web: int
    client: tuple[int, ...]
    admin: tuple[int, ...]

    @classmethod
    def pick(cls, client_portals: int = 2, admin_portals: int = 1) -> Layout:
        ports: list[int] = []
        while len(ports) < 2 + client_portals + admin_portals:
            port = free_port()
            if port not in ports:
                ports.append(port)
        client = tuple(ports[2 : 2 + client_portals])
        return cls(ports[0], ports[1], client, tuple(ports[2 + client_portals :]))


def up_command(data_dir: Path, layout: Layout, cache_nodes: int, replica_groups: int) -> list[str]:
    return [
        *taskring_command(),
        "up",
        "--data-dir",
        str(data_dir),
        "--broker-port",
        str(layout.broker),
        "--web-port",
        str(layout.web),
        "--client-ports",
        ",".join(map(str, layout.client)),
        "--admin-ports",
        ",".join(map(str, layout.admin)),
        "--cache-nodes",
        str(cache_nodes),
        "--replica-groups",
        str(replica_groups),
        "--replicas",
        "3",
    ]


def started_environment() -> dict[str, str]:
    """Ours without TASKRING_* (the system must not inherit a broker or token), with
    failpoints on so the disk and clock faults can reach every child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    env["TASKRING_FAILPOINTS"] = "1"
    return env


class Started:
    """`taskring up` in a temporary data directory, until `stop()`."""

    def __init__(self, process: asyncio.subprocess.Process, data_dir: Path, layout: Layout):
        self.process, self.data_dir, self.layout = process, data_dir, layout
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
        self.up = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, cache_nodes: int = 3, replica_groups: int = 1) -> Started:
        data_dir = Path(tempfile.mkdtemp(prefix="taskring-chaos-"))
        layout = Layout.pick()
        process = await asyncio.create_subprocess_exec(
            *up_command(data_dir, layout, cache_nodes, replica_groups),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=started_environment(),
            limit=1 << 20,
            start_new_session=True,  # its own process group: a last resort kills it whole
        )
        started = cls(process, data_dir, layout)
        try:
            await asyncio.wait_for(asyncio.shield(started.up), START_DEADLINE)
        except TimeoutError:
            await started.stop()
            shown = "\n".join(started.tail)
            raise StartFailed(
                f"not up within {START_DEADLINE:.0f}s; its output ends:\n{shown}"
            ) from None
        except BaseException:
            await started.stop()
            raise
        return started

    @property
    def web(self) -> str:
        return f"http://{HOST}:{self.layout.web}"

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while True:
            try:
                line = await self.process.stdout.readline()
            except ValueError:
                continue
            if not line:
                break
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            if BANNER in text and not self.up.done():
                self.up.set_result(True)
        if not self.up.done():
            shown = "\n".join(self.tail)
            self.up.set_exception(StartFailed(f"`taskring up` exited before it was up:\n{shown}"))

    async def stop(self) -> None:
        """SIGINT (a clean stop), then SIGKILL of the whole group; the data directory goes."""
        family = descendants(self.process.pid)
        try:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGINT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), STOP_WAIT)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), KILL_WAIT)
            for pid in family:  # children in process groups of their own that outlived it
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.reader, 5)
            if not self.up.done():
                self.up.cancel()
            elif not self.up.cancelled():
                self.up.exception()  # retrieved: no "never retrieved" warning
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
