"""`taskring bench --restart-tasks N`: how long a full restart of a durable ring takes
with N tasks stored, and what it costs in memory and disk.

Writes the data (restart_data.py), measures one replica's load in a process of
its own (replica_memory.py), starts `taskring up` on it and times the banner,
/readyz, complete and exact listings and an acknowledged insert, then reads
every process's peak memory and stops it all. The steps in full:
docs/operating.md, Measuring. A run never leaves a process behind, even when
interrupted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from backend.bench.channel import ChannelFailure
from backend.bench.replica_memory import memory_kb, status_field
from backend.bench.restart_data import Client, DataSpec, clients, expected_tasks, generate, reusable
from backend.bench.targets.peers import free_port
from backend.bench.targets.taskring import Channel, LineSession, error_code, read_response
from backend.bench.targets.taskring_admin import Credentials
from backend.core.model.identity import format_cid
from backend.processes.supervisor import PIDS_FILE, taskring_command

HOST = "127.0.0.1"
CLIENT_PORTALS = 2
ADMIN_PORTALS = 2
RESTART_DEADLINE = 180.0  # seconds for the restarted system to serve the sample and a write
REPLY_TIMEOUT = 10.0
RETRY_PAUSE = 0.05
SAMPLE_CONNECTIONS = 8
STOP_WAIT = 60.0  # `taskring up` gives each tier 10 s; three tiers, and slack
KILL_WAIT = 10.0
BANNER = "taskring is up."
# Lines of `taskring up`'s output that mark the replicas' progress (backend/processes/replica.py
# logs the first once its files are loaded, backend/core/replica/core.py the second).
REPLICA_LOADED = re.compile(r"^(replica-\S+)\s*\|.* replica \d+ of group \S+: term \d+, log")
LEADER_ELECTED = re.compile(r"^replica-\S+\s*\|.* group (\S+) member \d+: leader in term")
OUTPUT_TAIL = 200
OUTPUT_LINE_LIMIT = 1 << 20


class RestartFailed(Exception):
    """The run could not be done (the data, `taskring up`, or the memory probe failed)."""


@dataclass(frozen=True)
class RestartPlan:
    data: DataSpec
    sample: int = 100
    directory: Path | None = None  # keep (and reuse) the data here; None: a temporary one
    deadline: float = RESTART_DEADLINE


@dataclass
class Timeline:
    """Seconds from starting `taskring up` until each thing happened (None: it did not)."""

    replicas_loaded: float | None = None  # the last replica logged its recovered log
    leaders_elected: float | None = None  # a leader logged that it leads, in every group
    banner: float | None = None
    readyz: float | None = None
    first_listing: float | None = None
    sample: float | None = None
    write: float | None = None


@dataclass
class RestartResult:
    tasks: int
    clients: int
    sample: int
    generated_s: float | None  # None: the data was reused
    data_bytes: dict[str, int]  # replica directory -> bytes on disk
    replica_load: dict[str, Any]  # replica_memory.measure's figures
    timeline: Timeline = field(default_factory=Timeline)
    listed: int = 0  # sample clients whose full, correct listing came back
    mismatches: list[str] = field(default_factory=list)
    memory_kb: dict[str, dict[str, int]] = field(default_factory=dict)  # process -> rss, peak
    up_exit: int | None = None
    leftover: list[int] = field(default_factory=list)  # pids that outlived the stop
    output_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        timeline = self.timeline
        return (
            not self.mismatches
            and self.listed == self.sample
            and timeline.write is not None
            and timeline.readyz is not None
            and not self.leftover
        )

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["ok"] = self.ok
        document["data_bytes_total"] = sum(self.data_bytes.values())
        document["timeline_s"] = document.pop("timeline")
        return document


# ---- the data ----------------------------------------------------------------------------


def prepare_data(spec: DataSpec, directory: Path) -> float | None:
    """Generate the data into `directory`, unless it holds the same already; seconds taken."""
    if reusable(spec, directory) is not None:
        return None
    started = time.perf_counter()
    try:
        generate(spec, directory)
    except (ValueError, OSError) as exc:
        raise RestartFailed(f"cannot write the data into {directory}: {exc}") from exc
    return round(time.perf_counter() - started, 2)


def data_bytes(directory: Path) -> dict[str, int]:
    """Bytes of every file under each replica's directory."""
    found = {}
    for replica in sorted((directory / "replicas").iterdir()):
        if replica.is_dir():
            found[replica.name] = sum(
                path.stat().st_size for path in replica.rglob("*") if path.is_file()
            )
    return found


def replica_load(directory: Path) -> dict[str, Any]:
    """replica_memory's figures for the first replica of the first group."""
    replica = sorted((directory / "replicas").iterdir())[0]
    done = subprocess.run(
        [sys.executable, "-m", "backend.bench.replica_memory", str(replica)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RestartFailed(f"loading {replica} failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout))


# ---- the processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    broker: int
    web: int
    client: list[int]
    admin: list[int]

    @classmethod
    def pick(cls) -> Ports:
        ports: set[int] = set()
        while len(ports) < 2 + CLIENT_PORTALS + ADMIN_PORTALS:
            ports.add(free_port())
        chosen = sorted(ports)
        return cls(
            chosen[0], chosen[1], chosen[2 : 2 + CLIENT_PORTALS], chosen[2 + CLIENT_PORTALS :]
        )


def up_command(spec: DataSpec, directory: Path, ports: Ports) -> list[str]:
    return [
        *taskring_command(),
        "up",
        "--data-dir",
        str(directory),
        "--broker-port",
        str(ports.broker),
        "--web-port",
        str(ports.web),
        "--client-ports",
        ",".join(map(str, ports.client)),
        "--admin-ports",
        ",".join(map(str, ports.admin)),
        "--cache-nodes",
        str(spec.cache_nodes),
        "--replica-groups",
        str(spec.replica_groups),
        "--replicas",
        str(spec.replicas),
    ]


def clean_environment() -> dict[str, str]:
    """Ours without TASKRING_*: the deployment must not inherit a broker, token or storage."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}


def process_status(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None


def alive(pid: int) -> bool:
    status = process_status(pid)
    return status is not None and "\nState:\tZ" not in status


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from the parent links in /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        status = process_status(int(entry.name))
        if status is None:
            continue
        with contextlib.suppress(ValueError):
            children[status_field(status, "PPid")].append(int(entry.name))
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def component_memory(directory: Path) -> dict[str, dict[str, int]]:
    """Resident and peak memory (kB) of each replica and cache node `taskring up` runs."""
    try:
        children = json.loads((directory / PIDS_FILE).read_text())["children"]
    except (OSError, ValueError, KeyError):
        return {}
    found = {}
    for name, pid in sorted(children.items()):
        if not name.startswith(("replica-", "cache-node-")):
            continue
        status = process_status(int(pid))
        if status is None:
            continue
        with contextlib.suppress(ValueError):
            found[name] = {
                "rss_kb": memory_kb("VmRSS", status),
                "peak_kb": memory_kb("VmHWM", status),
            }
    return found


class Deployment:
    """`taskring up` on the generated data directory, its output, and how to stop it."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        started: float,
        spec: DataSpec,
        timeline: Timeline,
    ) -> None:
        self.process = process
        self.started = started  # the loop's clock just before the process was made
        self.spec = spec
        self.timeline = timeline
        self.loaded: set[str] = set()  # replicas that logged their recovered log
        self.led: set[str] = set()  # groups a leader logged it leads
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        self.banner = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read_output())
        self.family: set[int] = set()

    @classmethod
    async def start(cls, command: list[str], spec: DataSpec, timeline: Timeline) -> Deployment:
        started = asyncio.get_running_loop().time()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=clean_environment(),
            limit=OUTPUT_LINE_LIMIT,
            start_new_session=True,  # its own process group: a last resort can kill it whole
        )
        return cls(process, started, spec, timeline)

    def elapsed(self) -> float:
        return round(asyncio.get_running_loop().time() - self.started, 3)

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        while True:
            try:
                line = await self.process.stdout.readline()
            except ValueError:  # a line beyond the limit: its rest comes as the next one
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            self._note(text)

    def _note(self, text: str) -> None:
        if BANNER in text and not self.banner.done():
            self.banner.set_result(self.elapsed())
        loaded = REPLICA_LOADED.match(text)
        if loaded and loaded[1] not in self.loaded:
            self.loaded.add(loaded[1])
            if len(self.loaded) == self.spec.replica_groups * self.spec.replicas:
                self.timeline.replicas_loaded = self.elapsed()
        led = LEADER_ELECTED.match(text)
        if led and led[1] not in self.led:
            self.led.add(led[1])
            if len(self.led) == self.spec.replica_groups:
                self.timeline.leaders_elected = self.elapsed()

    def remember_family(self) -> None:
        """Note every process below `taskring up` now, to check after the stop."""
        self.family |= descendants(self.process.pid)

    async def stop(self) -> tuple[int | None, list[int]]:
        """SIGINT, then a second SIGINT, then SIGKILL of the process group; the exit code
        and the pids that outlived it all (killed too, so nothing is left)."""
        self.remember_family()
        code = await self._signal_and_wait(signal.SIGINT, STOP_WAIT)
        if code is None:
            code = await self._signal_and_wait(signal.SIGINT, KILL_WAIT)
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            code = await self._signal_and_wait(None, KILL_WAIT)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.reader, 5)
        leftover = await self._leftover()
        return code, leftover

    async def _signal_and_wait(self, sig: signal.Signals | None, wait: float) -> int | None:
        if sig is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), wait)
        except TimeoutError:
            return None

    async def _leftover(self) -> list[int]:
        """Children still alive a moment after `taskring up` exited; they are killed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            left = sorted(pid for pid in self.family if alive(pid))
            if not left:
                return []
            await asyncio.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


# ---- what the restarted system answers -------------------------------------------------------


def credentials(client: Client) -> Credentials:
    return Credentials(format_cid(client.cid), client.token)


def choose_sample(spec: DataSpec, everyone: list[Client], size: int) -> list[Client]:
    holders = [c for c in everyone if c.number < spec.clients]
    return random.Random(spec.seed).sample(holders, min(size, len(holders)))


def session(port: int) -> LineSession:
    return LineSession(Channel(HOST, port, read_response, REPLY_TIMEOUT), [])


async def list_until_right(
    spec: DataSpec, client: Client, portal: LineSession, deployment: Deployment
) -> tuple[float, str | None]:
    """List `client`'s tasks until an answer comes: the time it came, and what was wrong
    with it (None: exactly the tasks it was given, in order)."""
    expected = [{"title": t, "description": d} for t, d in expected_tasks(spec, client)]
    request = {"op": "list_tasks", "cid": format_cid(client.cid)}
    while True:
        try:
            responses = await portal.exchange(credentials(client), [request])
        except ChannelFailure:
            await asyncio.sleep(RETRY_PAUSE)
            continue
        listing = responses[-1]
        if any(error_code(r) is not None for r in responses):
            await asyncio.sleep(RETRY_PAUSE)  # not served yet: unauthorized, unavailable, ...
            continue
        if listing.get("tasks") == expected:
            return deployment.elapsed(), None
        got = listing.get("tasks")
        count = len(got) if isinstance(got, list) else got
        return deployment.elapsed(), (
            f"client {format_cid(client.cid)} listed {count} tasks, not its {len(expected)}"
            if count != len(expected)
            else f"client {format_cid(client.cid)} listed other tasks than it was given"
        )


async def check_sample(
    spec: DataSpec,
    sample: list[Client],
    ports: Ports,
    deployment: Deployment,
    result: RestartResult,
) -> None:
    queue = collections.deque(sample)
    times: list[float] = []

    async def worker(number: int) -> None:
        portal = session(ports.client[number % len(ports.client)])
        try:
            while queue:
                client = queue.popleft()
                at, problem = await list_until_right(spec, client, portal, deployment)
                if problem is None:
                    times.append(at)
                    result.listed += 1
                else:
                    result.mismatches.append(problem)
        finally:
            await portal.close()

    await asyncio.gather(*(worker(n) for n in range(min(SAMPLE_CONNECTIONS, len(sample)))))
    if times:
        result.timeline.first_listing = min(times)
    if result.listed == len(sample):
        result.timeline.sample = max(times, default=deployment.elapsed())


async def write_once(probe: Client, ports: Ports, deployment: Deployment) -> float:
    """Insert a task for the probe client until one insert is acknowledged. Each attempt
    has a new title: an attempt that timed out may have been applied."""
    portal = session(ports.client[0])
    attempt = 0
    try:
        while True:
            attempt += 1
            request = {
                "op": "insert_task",
                "cid": format_cid(probe.cid),
                "title": f"after-restart-{time.time_ns()}-{attempt}",
                "description": "written after a full restart",
            }
            try:
                responses = await portal.exchange(credentials(probe), [request])
            except ChannelFailure:
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if all(error_code(r) is None for r in responses):
                return deployment.elapsed()
            await asyncio.sleep(RETRY_PAUSE)
    finally:
        await portal.close()


async def wait_readyz(ports: Ports, deployment: Deployment) -> float:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{ports.web}", timeout=2.0) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return deployment.elapsed()
            await asyncio.sleep(0.1)


async def watch(
    spec: DataSpec, plan: RestartPlan, ports: Ports, deployment: Deployment, result: RestartResult
) -> None:
    """Everything measured after the start, in parallel, until done or the deadline."""
    everyone = clients(spec)
    sample = choose_sample(spec, everyone, plan.sample)
    probe = everyone[-1]
    timeline = result.timeline

    async def readyz() -> None:
        timeline.readyz = await wait_readyz(ports, deployment)

    async def write() -> None:
        timeline.write = await write_once(probe, ports, deployment)

    async def banner() -> None:
        timeline.banner = await deployment.banner

    tasks = [
        asyncio.create_task(readyz()),
        asyncio.create_task(write()),
        asyncio.create_task(banner()),
        asyncio.create_task(check_sample(spec, sample, ports, deployment, result)),
    ]
    exited = asyncio.create_task(deployment.process.wait())
    try:
        async with asyncio.timeout(plan.deadline):
            pending: set[asyncio.Task[Any]] = set(tasks)
            while pending and not exited.done():
                _, pending = await asyncio.wait(
                    pending | {exited}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(exited)
                deployment.remember_family()
    except TimeoutError:
        pass
    finally:
        for task in [*tasks, exited]:
            task.cancel()
        await asyncio.gather(*tasks, exited, return_exceptions=True)


async def measure_restart(
    spec: DataSpec, plan: RestartPlan, directory: Path, result: RestartResult
) -> None:
    ports = Ports.pick()
    deployment = await Deployment.start(up_command(spec, directory, ports), spec, result.timeline)
    try:
        await watch(spec, plan, ports, deployment, result)
        result.memory_kb = component_memory(directory)
    finally:
        # shielded: an interrupted run still stops what it started
        result.up_exit, result.leftover = await asyncio.shield(deployment.stop())
        result.output_tail = list(deployment.tail)[-40:]


def run_restart(plan: RestartPlan, say: Any = print) -> RestartResult:
    """The whole measurement; RestartFailed when it cannot be done.

    With `plan.directory` the generated data stays there untouched: each run starts
    `taskring up` on a copy (a restart writes to the log), so runs stay comparable."""
    spec = plan.data
    scratch = Path(tempfile.mkdtemp(prefix="taskring-restart-"))
    source = plan.directory or scratch / "data"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per /readyz poll
    try:
        say(f"writing {spec.tasks:,} tasks over {spec.clients:,} clients into {source}")
        generated = prepare_data(spec, source)
        if generated is None:
            say(f"{source} holds this data already: reusing it")
        say("loading one replica's files in a process of its own")
        result = RestartResult(
            spec.tasks,
            spec.clients,
            min(plan.sample, spec.clients),
            generated,
            data_bytes(source),
            replica_load(source),
        )
        directory = source
        if plan.directory is not None:
            directory = scratch / "data"
            shutil.copytree(source, directory)
        say(f"starting `taskring up` on {directory}")
        asyncio.run(measure_restart(spec, plan, directory, result))
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- what it prints -----------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _megabytes(kilobytes: int) -> str:
    return f"{kilobytes / 1024:,.0f} MB"


def table(result: RestartResult) -> Table:
    timeline, load = result.timeline, result.replica_load
    title = (
        f"full restart with {result.tasks:,} tasks over {result.clients:,} clients "
        f"({'generated in ' + _seconds(result.generated_s) if result.generated_s else 'reused'})"
    )
    rows = Table(title=title, title_justify="left")
    rows.add_column("measure")
    rows.add_column("value", justify="right")
    rows.add_row("every replica loaded its files", _seconds(timeline.replicas_loaded))
    rows.add_row("a leader elected in every group", _seconds(timeline.leaders_elected))
    rows.add_row("banner printed", _seconds(timeline.banner))
    rows.add_row("/readyz first answered 200", _seconds(timeline.readyz))
    rows.add_row("first sample client listed", _seconds(timeline.first_listing))
    rows.add_row(f"all {result.sample} sample clients listed, exactly", _seconds(timeline.sample))
    rows.add_row("first write acknowledged", _seconds(timeline.write))
    for name, memory in result.memory_kb.items():
        rows.add_row(
            f"{name} memory (now / peak)",
            f"{_megabytes(memory['rss_kb'])} / {_megabytes(memory['peak_kb'])}",
        )
    total = sum(result.data_bytes.values())
    each = max(result.data_bytes.values(), default=0)
    rows.add_row(
        "data on disk (all replicas / one)", f"{total / 2**20:,.0f} MB / {each / 2**20:,.0f} MB"
    )
    rows.add_row(
        f"one replica's load ({load['replica']}): open / restore / replay",
        f"{load['open_s']:.2f} / {load['restore_s']:.2f} / {load['replay_s']:.2f} s",
    )
    per_task = load.get("bytes_per_task")
    rows.add_row(
        "replica memory per stored task",
        "n/a" if per_task is None else f"{per_task:,.0f} bytes",
    )
    return rows


def problems(result: RestartResult) -> list[str]:
    """What went wrong, one line each; empty when the restart served everything."""
    found = list(result.mismatches)
    if result.listed + len(result.mismatches) < result.sample:
        found.append(f"only {result.listed} of {result.sample} sample clients were served in time")
    if result.timeline.write is None:
        found.append("no write was acknowledged in time")
    if result.timeline.readyz is None:
        found.append("/readyz never said ready")
    if result.leftover:
        found.append(f"processes outlived `taskring up` (killed): {result.leftover}")
    if result.up_exit != 0:
        how = "did not stop" if result.up_exit is None else f"exited with {result.up_exit}"
        found.append(f"`taskring up` {how} after SIGINT")
    return found
