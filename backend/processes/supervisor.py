"""`taskring up`: every component as its own OS process, watched and restarted.

The children are the same `taskring <component>` commands a person would run;
the broker URL (with the child's own login) and the admin token reach them
through the environment, never the command line. Each child runs in its own
process group and dies with this one (backend/adapters/child_processes.py).
Every component's port is checked first; a taken one gets PORT_WAIT seconds,
then `up` fails naming its holder (backend/adapters/port_holders.py). What it
starts, in which tiers, restarts, stopping, logs and pids.json:
docs/operating.md, One host; the decisions are in backend/processes/launch_plan.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click
import httpx

from backend.adapters import broker_logins as broker_auth
from backend.adapters import settings as config
from backend.adapters.bus.probe import probe_broker
from backend.adapters.child_processes import die_with_parent, signal_group
from backend.adapters.port_holders import who_holds
from backend.adapters.private_files import create_private, private_directory, write_private
from backend.processes import broker as broker_command
from backend.processes.launch_plan import (
    DEFAULT_BROKER_PORT,
    FAILPOINTS_DIR,
    FAILPOINTS_SWITCH,
    Backoff,
    BrokerPlan,
    ChildSpec,
    Settings,
    banner,
    broker_logins,
    choose_broker,
    groups_without_leader,
    plan_children,
    with_failpoint_files,
)
from backend.processes.options import count_option

log = logging.getLogger("taskring.up")

STARTUP_TIMEOUT = 60.0
STOP_GRACE = 10.0
PORT_WAIT = 5.0  # how long a taken port may take to come free before `up` gives up
PORT_POLL = 0.2
OUTPUT_LIMIT = 1 << 20  # longest output line kept whole
PIDS_FILE = "pids.json"
LOGS_DIR = "logs"
COLOURS = (36, 32, 33, 35, 34, 96, 92, 93)
SECRET_VARIABLES = ("TASKRING_BROKER", "TASKRING_ADMIN_TOKEN")
# The most `taskring cache-node` accepts: more would leave every cache node failing
# its usage check in a restart loop, so `up` refuses them at once.
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def taskring_command() -> list[str]:
    """How to start `taskring` from here: the script beside our Python, else `python -m`."""
    script = Path(sys.executable).with_name("taskring")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "backend.cli.main"]


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Output:
    """Child output: prefixed lines on our stdout, raw lines in DATA/logs/<name>.log."""

    def __init__(self, logs_dir: Path, names: list[str], stream: IO[str]) -> None:
        self.logs_dir = logs_dir
        self.stream = stream
        self.width = max(len(name) for name in names)
        coloured = stream.isatty() and not os.environ.get("NO_COLOR")
        self.prefixes = {
            name: self._prefix(name, COLOURS[i % len(COLOURS)] if coloured else None)
            for i, name in enumerate(names)
        }
        private_directory(logs_dir)

    def _prefix(self, name: str, colour: int | None) -> str:
        text = f"{name:<{self.width}} | "
        return f"\x1b[{colour}m{text}\x1b[0m" if colour else text

    def open_log(self, name: str) -> IO[bytes]:
        path = self.logs_dir / f"{name}.log"
        log_file = os.fdopen(create_private(path, os.O_WRONLY | os.O_APPEND), "ab")
        log_file.write(f"--- started {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        return log_file

    def line(self, name: str, raw: bytes, log_file: IO[bytes]) -> None:
        log_file.write(raw if raw.endswith(b"\n") else raw + b"\n")
        log_file.flush()
        text = raw.decode(errors="replace").rstrip("\r\n")
        with contextlib.suppress(OSError, ValueError):  # our stdout may be gone; keep the logs
            self.stream.write(f"{self.prefixes[name]}{text}\n")
            self.stream.flush()


class Child:
    """One supervised process: start it, copy its output, restart it when it dies."""

    def __init__(
        self, spec: ChildSpec, command: list[str], output: Output, changed: Callable[[], None]
    ) -> None:
        self.spec = spec
        self.command = command
        self.output = output
        self.changed = changed
        self.backoff = Backoff()
        self.process: asyncio.subprocess.Process | None = None
        self.pump: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process else None

    def environment(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        return {**inherited, "PYTHONUNBUFFERED": "1", **self.spec.env}

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            *self.spec.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
            preexec_fn=die_with_parent(),
            limit=OUTPUT_LIMIT,
        )
        assert self.process.stdout is not None
        self.pump = asyncio.create_task(self._copy_output(self.process.stdout))
        log.info("%s started (pid %s)", self.spec.name, self.process.pid)
        self.changed()

    async def _copy_output(self, stdout: asyncio.StreamReader) -> None:
        with self.output.open_log(self.spec.name) as log_file:
            while True:
                try:
                    raw = await stdout.readline()
                except ValueError:  # a line over OUTPUT_LIMIT; the stream skipped it
                    raw = b"[a line too long to show was left out]\n"
                if not raw:
                    return
                self.output.line(self.spec.name, raw, log_file)

    async def keep_running(self, stopping: asyncio.Event) -> None:
        """Start the child and restart it whenever it exits, until `stopping` is set."""
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            started = loop.time()
            try:
                await self.start()
                code = await self._exit_code_unless(stopping)
            except OSError as exc:
                log.error("%s could not be started: %s", self.spec.name, exc)
                code = 127
            if code is None:
                return
            await self.drain_output()
            self.changed()
            delay = self.backoff.after_exit(loop.time() - started)
            self.restarts += 1
            log.warning(
                "%s exited (%s); restarting in %.1f s", self.spec.name, describe_exit(code), delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def _exit_code_unless(self, stopping: asyncio.Event) -> int | None:
        assert self.process is not None
        exited = asyncio.ensure_future(self.process.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if exited.done():
            return exited.result()
        exited.cancel()
        return None

    async def drain_output(self) -> None:
        """Let the last lines of an exited child reach the log before we say it exited."""
        if self.pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pump), 1.0)

    def send(self, sig: signal.Signals) -> None:
        if self.running and self.process is not None:
            signal_group(self.process.pid, sig)

    async def wait_exit(self, timeout: float) -> bool:
        if self.process is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout)
        return not self.running


class Supervisor:
    """Runs the children tier by tier (broker, replicas, the rest); stops them in the
    opposite order."""

    def __init__(self, specs: list[ChildSpec], settings: Settings, stream: IO[str]) -> None:
        self.settings = settings
        self.stream = stream
        self.output = Output(settings.data_dir / LOGS_DIR, [s.name for s in specs], stream)
        command = taskring_command()
        self.children = [Child(spec, command, self.output, self.write_pids) for spec in specs]
        self.stopping = asyncio.Event()
        self.hurry = False
        self.runners: list[asyncio.Task[None]] = []

    @property
    def pids_path(self) -> Path:
        return self.settings.data_dir / PIDS_FILE

    def write_pids(self) -> None:
        children = {child.spec.name: child.pid for child in self.children if child.pid}
        text = json.dumps({"supervisor": os.getpid(), "children": children}, indent=2)
        write_private(self.pids_path, text + "\n")

    def request_stop(self) -> None:
        if self.stopping.is_set():
            log.warning("second signal: stopping now")
            self.hurry = True
            for child in self.children:
                child.send(signal.SIGKILL)
            return
        log.info("stopping every component (Ctrl-C again to kill them at once)")
        self.stopping.set()

    async def run(self, startup_timeout: float, ready_text: str) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.request_stop)
        deadline = loop.time() + startup_timeout
        try:
            for tier in self.tiers():
                for child in tier:
                    self.runners.append(asyncio.create_task(child.keep_running(self.stopping)))
                if not await self.wait_listening(tier, deadline):
                    return 1
            await self.wait_ready(deadline)
            with contextlib.suppress(OSError):
                self.stream.write(ready_text)
                self.stream.flush()
            await self.stopping.wait()
            return 0
        finally:
            await self.stop_all()

    def tiers(self) -> list[list[Child]]:
        """The children in start order: broker, replicas, everything else; empty tiers left out."""
        brokers = [child for child in self.children if child.spec.is_broker]
        replicas = [child for child in self.children if child.spec.is_replica]
        rest = [child for child in self.children if child not in brokers + replicas]
        return [tier for tier in (brokers, replicas, rest) if tier]

    async def wait_listening(self, children: list[Child], deadline: float) -> bool:
        """True once every child's port accepts connections; False on stop or deadline."""
        loop = asyncio.get_running_loop()
        waiting = [child for child in children if child.spec.port is not None]
        while waiting:
            if self.stopping.is_set():
                return False
            if loop.time() > deadline:
                for child in waiting:
                    log.error(
                        "%s is not listening on %s:%s after the startup deadline; see %s",
                        child.spec.name,
                        self.settings.host,
                        child.spec.port,
                        self.output.logs_dir / f"{child.spec.name}.log",
                    )
                return False
            waiting = [child for child in waiting if not await self.answers(child)]
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 0.1)
        return True

    async def wait_ready(self, deadline: float) -> None:
        """Wait until the web process says a write can commit end to end (the ring forms and
        each replica group elects a leader a moment after the ports open), so the banner's
        example commands work at once."""
        web = f"http://{self.settings.host}:{self.settings.web_port}"
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=web, timeout=2.0) as http:
            while loop.time() < deadline and not self.stopping.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if await self.ready(http):
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 0.2)
        if not self.stopping.is_set():
            log.warning(
                "not ready yet by the startup deadline; see %s/readyz for what is missing", web
            )

    async def ready(self, http: httpx.AsyncClient) -> bool:
        """/readyz says ready and /api/cluster shows a leader in every group we started."""
        if (await http.get("/readyz")).status_code != 200:
            return False
        if not self.settings.durable:
            return True
        return not groups_without_leader(self.settings, (await http.get("/api/cluster")).json())

    async def answers(self, child: Child) -> bool:
        if not child.running or child.spec.port is None:
            return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.settings.host, child.spec.port), 1.0
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def stop_all(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self.runners, return_exceptions=True)
        for tier in reversed(self.tiers()):
            await self.stop_group(tier)
        for child in self.children:
            await child.drain_output()
        with contextlib.suppress(FileNotFoundError):
            self.pids_path.unlink()

    async def stop_group(self, children: list[Child]) -> None:
        for child in children:
            child.send(signal.SIGKILL if self.hurry else signal.SIGTERM)
        grace = 0.0 if self.hurry else STOP_GRACE
        results = await asyncio.gather(*(child.wait_exit(grace) for child in children))
        for child, stopped in zip(children, results, strict=True):
            if not stopped:
                log.warning("%s did not stop within %.0f s; killing it", child.spec.name, grace)
                child.send(signal.SIGKILL)
                await child.wait_exit(STOP_GRACE)


def admin_token(data_dir: Path) -> tuple[str, str]:
    """The admin token and where it came from: TASKRING_ADMIN_TOKEN, else DATA/admin-token."""
    token = config.env("ADMIN_TOKEN")
    if token:
        return token, "from TASKRING_ADMIN_TOKEN"
    path = data_dir / config.ADMIN_TOKEN_FILE
    stored = config.read_admin_token(data_dir)
    if stored:
        return stored, f"kept in {path}"
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token, f"new; kept in {path}"


def parse_ports(text: str, option: str) -> tuple[int, ...]:
    """`7001,7002` -> (7001, 7002); a clear usage error otherwise."""
    try:
        ports = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of ports", param_hint=option
        ) from exc
    if not ports or not all(1 <= port <= 65535 for port in ports):
        raise click.BadParameter(
            f"{text!r}: give one or more ports from 1 to 65535", param_hint=option
        )
    return ports


def port_taken(host: str, port: int) -> str | None:
    """Why nothing of ours could listen on host:port, or None if it is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_ports(specs: list[ChildSpec], host: str, wait: float = PORT_WAIT) -> None:
    """Fail clearly if a component's port is taken. A taken port is given `wait` seconds
    to come free: ports like 50051 lie in the kernel's ephemeral range, where any
    program's outgoing connection may hold one for a moment."""
    ports = [spec.port for spec in specs if spec.port is not None]
    duplicates = sorted({port for port in ports if ports.count(port) > 1})
    if duplicates:
        raise click.UsageError(f"port {duplicates[0]} is given to two components")
    deadline = time.monotonic() + wait
    for spec in specs:
        if spec.port is not None:
            _wait_for_port(spec.name, host, spec.port, deadline)


def _wait_for_port(name: str, host: str, port: int, deadline: float) -> None:
    problem = port_taken(host, port)
    if problem:
        log.info("%s: %s:%d is taken (%s); waiting for it to come free", name, host, port, problem)
    while problem and time.monotonic() < deadline:
        time.sleep(PORT_POLL)
        problem = port_taken(host, port)
    if problem:
        holders = who_holds(port)
        held = "; held by " + "; ".join(holders) if holders else ""
        raise click.ClickException(
            f"{name} cannot listen on {host}:{port}: {problem}{held}"
            " (is another taskring running? else choose other ports)"
        )


def choose(broker_flag: str | None, settings: Settings) -> BrokerPlan:
    with_logins = broker_command.uses_authentication(embedded=False, no_auth=False)
    if broker_flag or not with_logins:
        passwords = broker_auth.load_credentials(settings.data_dir)
    else:
        logins = broker_logins(settings)
        passwords = broker_auth.ensure_credentials(settings.data_dir, logins)
    return choose_broker(
        broker_flag,
        settings,
        lambda host, port, user, password: probe_broker(host, port, user, password),
        passwords,
        with_logins,
    )


def port_option(name: str, default: int, what: str) -> Decorator:
    return click.option(
        name,
        type=click.IntRange(1, 65535),
        default=default,
        show_default=True,
        envvar=f"TASKRING_{name[2:].replace('-', '_').upper()}",
        help=what,
    )


@click.command("up")
@click.option(
    "--storage",
    type=click.Choice(config.STORAGE_MODES),
    default=config.DEFAULT_STORAGE,
    show_default=True,
    envvar="TASKRING_STORAGE",
    help="ring: a Chord ring of cache nodes serves each key from its owner's memory and "
    "writes it through the key's replica group (Raft, fsynced by a majority), so it is "
    "durable; local: every portal keeps the tables in memory and they converge over MQTT, "
    "not durable.",
)
@count_option("--cache-nodes", config.DEFAULT_CACHE_NODES, "Cache nodes on the Chord ring")
@count_option(
    "--replica-groups",
    config.DEFAULT_REPLICA_GROUPS,
    "Replica groups g1..gG holding the ring's keys durably (ring storage only); 0 starts "
    "no replicas and the cache nodes keep keys in memory only, lost when a node is killed",
    minimum=0,
    maximum=config.MAX_REPLICA_GROUPS,
)
@count_option(
    "--replicas",
    config.DEFAULT_REPLICAS,
    "Replicas per group, each its own process with its files in DATA/replicas/; a write "
    "commits once a majority of its group has it on disk",
    maximum=config.MAX_REPLICAS,
)
@click.option(
    "--broker",
    "broker_flag",
    envvar="TASKRING_BROKER",
    help="Use this MQTT broker (mqtt://user:password@host:port, or a comma-separated list of "
    "the nodes of one clustered broker) and start none. URLs without a login, for a broker "
    "that refuses anonymous logins but takes this data directory's, get each component's "
    "own login, each component's list starting at another node.",
)
@click.option(
    "--data-dir",
    default=config.DEFAULT_DATA_DIR,
    show_default=True,
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False),
    help="Admin token, broker logins, logs; the replicas' write-ahead logs and snapshots "
    "in DIR/replicas/.",
)
@port_option("--web-port", config.DEFAULT_WEB_PORT, "HTTP port of the web process.")
@click.option(
    "--client-ports",
    default=",".join(map(str, config.DEFAULT_CLIENT_PORTS)),
    show_default=True,
    envvar="TASKRING_CLIENT_PORTS",
    help="TCP ports of the client portals, one portal per port.",
)
@click.option(
    "--admin-ports",
    default=",".join(map(str, config.DEFAULT_ADMIN_PORTS)),
    show_default=True,
    envvar="TASKRING_ADMIN_PORTS",
    help="gRPC ports of the admin portals, one portal per port.",
)
@port_option("--broker-port", DEFAULT_BROKER_PORT, "Where to find, or else start, the broker.")
@click.option(
    "--startup-timeout",
    type=click.FloatRange(min=1),
    default=STARTUP_TIMEOUT,
    envvar="TASKRING_STARTUP_TIMEOUT",
    hidden=True,
)
def up(
    storage: str,
    cache_nodes: int,
    replica_groups: int,
    replicas: int,
    broker_flag: str | None,
    data_dir: str,
    web_port: int,
    client_ports: str,
    admin_ports: str,
    broker_port: int,
    startup_timeout: float,
) -> None:
    """Start every component as its own OS process and keep them running; Ctrl-C stops all.

    Uses --broker if given, else a broker already answering on --broker-port that
    takes this data directory's logins (never one that lets anyone in), else starts
    `taskring broker` there (Mosquitto with a login per component when installed,
    else an embedded broker for a quick start). Each child's output
    is shown here prefixed with its name and kept in DATA/logs/.
    """
    data = Path(data_dir).resolve()
    settings = Settings(
        data_dir=data,
        storage=storage,
        web_port=web_port,
        client_ports=parse_ports(client_ports, "--client-ports"),
        admin_ports=parse_ports(admin_ports, "--admin-ports"),
        broker_port=broker_port,
        cache_nodes=cache_nodes,
        replica_groups=replica_groups,
        replicas=replicas,
    )
    try:
        private_directory(data)
        private_directory(data / "replicas")
        token, token_source = admin_token(data)
        broker = choose(broker_flag, settings)
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    specs = plan_children(settings, broker, token)
    if os.environ.get(FAILPOINTS_SWITCH) == "1":
        specs = arm_failpoints(specs, data / FAILPOINTS_DIR)
    check_ports(specs, settings.host)
    ready = banner(settings, broker, token, token_source)
    supervisor = Supervisor(specs, settings, sys.stdout)
    sys.exit(asyncio.run(supervisor.run(startup_timeout, ready)))


def arm_failpoints(specs: list[ChildSpec], directory: Path) -> list[ChildSpec]:
    """For fault testing: an empty failpoint file per child in `directory` (0700), named
    in the child's TASKRING_FAILPOINTS_FILE; faults are set by writing to it."""
    private_directory(directory)
    for spec in specs:
        os.close(create_private(directory / spec.name, os.O_WRONLY | os.O_TRUNC))
    return with_failpoint_files(specs, directory)
