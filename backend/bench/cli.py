"""`taskring bench`: load-test a running system through its portals, and compare with peers.

Exit codes: 0 measured; 1 the run could not be done or measured nothing
(setup failed, no operation succeeded); 2 usage error (bad flag, no admin
token); 3 the system is not reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from backend.adapters import settings
from backend.adapters.broker_logins import STATUS_LOGIN, local_broker_url
from backend.bench import environment, report, restart_cli
from backend.bench.cpu_watch import CpuWatch
from backend.bench.driver import RunOptions, run
from backend.bench.progress import live_progress
from backend.bench.results import Live, RunResult
from backend.bench.targets.base import Target, TargetUnreachable, TargetUnusable
from backend.bench.targets.etcd import EtcdTarget
from backend.bench.targets.redis import RedisTarget
from backend.bench.targets.taskring import TaskringTarget
from backend.bench.targets.taskring_admin import AdminPortals, grpc_target
from backend.bench.workload import KEY_DISTRIBUTIONS, WORKLOADS, WorkloadSpec
from backend.cli.client import DEFAULT_PORTALS as DEFAULT_CLIENT_PORTALS
from backend.processes.options import EXIT_UNREACHABLE, EXIT_USAGE, fail
from backend.processes.runtime import run as run_loop

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
DEFAULT_ADMIN_PORTALS = ",".join(
    f"{settings.DEFAULT_HOST}:{port}" for port in settings.DEFAULT_ADMIN_PORTS
)
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}
WIDE = 160

out = Console()
err = Console(stderr=True)


class Duration(click.ParamType):
    """Seconds, written `10`, `10s`, `500ms` or `2m`."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 10s, 500ms or 2m", param, ctx)
        return float(match.group(1)) * DURATION_UNITS[match.group(2) or ""]


def say(message: str) -> None:
    click.echo(message, err=True)


def host_ports(text: str, flag: str) -> list[tuple[str, int]]:
    try:
        found = [settings.parse_host_port(part.strip()) for part in text.split(",") if part.strip()]
    except settings.ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if not found:
        raise click.BadParameter("give at least one HOST:PORT", param_hint=flag)
    return found


@dataclass(frozen=True)
class Plan:
    """The workload and run options every target gets, and how to show progress."""

    spec: WorkloadSpec
    options: RunOptions
    timeout: float
    progress: bool

    def label(self) -> str:
        loop = (
            f"open loop at {self.options.rate:,.0f} ops/s" if self.options.rate else "closed loop"
        )
        reads = f", {self.spec.reads:.0%} reads" if self.spec.workload in ("mixed", "admin") else ""
        return (
            f"{self.spec.workload}{reads}, {self.options.connections} connections, {loop}, "
            f"{self.spec.clients} clients ({self.spec.keys}), {self.options.duration:g} s"
        )


async def measure(
    target: Target, plan: Plan, broker: settings.BrokerAddresses | None = None
) -> RunResult:
    """Prepare one target, run the workload on it, and always clean up what it started.
    With the `broker` of the system's heartbeats, also find the CPU it used per operation."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            # listening from the start, so every component has a heartbeat before the window
            watch = await stack.enter_async_context(CpuWatch(broker)) if broker else None
            say(f"{target.name}: setting up")
            await target.prepare()
            if watch is not None:
                await watch.hear_everyone(lead=plan.options.warmup)
            live = Live()
            seconds = plan.options.warmup + plan.options.duration
            async with live_progress(err, target.name, live, seconds, plan.progress):
                result = await run(target, plan.spec, plan.options, live)
            if watch is not None:
                await add_cpu(result, watch)
            return result
    finally:
        await target.close()


async def add_cpu(result: RunResult, watch: CpuWatch) -> None:
    """Put what the system's processes used in the measured window into `result`."""
    if result.window is None:
        return
    cost = await watch.cost(result.window, result.ok)
    if isinstance(cost, str):
        result.cpu_not_shown = cost
    else:
        result.cpu = cost


async def measure_all(
    factories: list[Callable[[], Target]],
    plan: Plan,
    broker: settings.BrokerAddresses | None = None,
) -> tuple[list[RunResult], dict[str, str]]:
    # SIGTERM stops a run like Ctrl-C does: the peers started here are stopped on the way out.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    results: list[RunResult] = []
    skipped: dict[str, str] = {}
    for factory in factories:
        target = factory()
        try:
            system = isinstance(target, TaskringTarget)
            results.append(await measure(target, plan, broker if system else None))
        except TargetUnusable as exc:
            if isinstance(target, TaskringTarget):
                raise  # the system under test itself: nothing to measure
            say(f"skipping {target.name}: {exc}")
            skipped[target.name] = str(exc)
    return results, skipped


def admin_token(flag: str | None, data_dir: str | None) -> str:
    token = flag or settings.read_admin_token(settings.data_dir(data_dir))
    if not token:
        where = settings.data_dir(data_dir) / settings.ADMIN_TOKEN_FILE
        fail(
            EXIT_USAGE,
            "no admin token (the bench creates its clients through the admin portal): give "
            f"--admin-token or set TASKRING_ADMIN_TOKEN ({where} does not hold one; "
            "see --data-dir)",
        )
    if not token.isascii() or not token.isprintable():
        fail(EXIT_USAGE, "the admin token must be printable ASCII")
    return token


@click.command(
    epilog="Exit codes: 0 measured; 1 setup failed or nothing succeeded; 2 usage error; "
    "3 the system is not reachable."
)
@click.option(
    "--workload",
    type=click.Choice(WORKLOADS),
    default="write",
    show_default=True,
    help="write: update_task; read: list_tasks; mixed: both; admin: Get/UpdateClient.",
)
@click.option(
    "--read-ratio",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Share of reads in the mixed and admin workloads.",
)
@click.option(
    "--connections",
    "-c",
    type=click.IntRange(1, 10_000),
    default=64,
    show_default=True,
    help="Connections, spread over the portals.",
)
@click.option(
    "--pipeline",
    type=click.IntRange(1, 1_000),
    default=1,
    show_default=True,
    help="Requests in flight per connection.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0, min_open=True),
    help="Open loop: this many operations per second in total, latency counted from "
    "when each was due. Without it: closed loop, as fast as answers come.",
)
@click.option(
    "--duration", type=Duration(), default="10s", show_default=True, help="How long to measure."
)
@click.option(
    "--warmup",
    type=Duration(),
    default="2s",
    show_default=True,
    help="How long to run before measuring.",
)
@click.option(
    "--clients",
    type=click.IntRange(1, 1_000_000),
    default=100,
    show_default=True,
    help="K: how many clients the operations spread over.",
)
@click.option(
    "--tasks",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Tasks per client (what a read returns; what writes update).",
)
@click.option(
    "--keys",
    type=click.Choice(KEY_DISTRIBUTIONS),
    default="uniform",
    show_default=True,
    help="How operations choose their client.",
)
@click.option(
    "--zipf-s",
    type=click.FloatRange(0, min_open=True),
    default=0.99,
    show_default=True,
    help="Zipf exponent for --keys zipfian.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the workload.")
@click.option(
    "--description-bytes",
    type=click.IntRange(0, 16_384),
    default=100,
    show_default=True,
    help="Size of each written description.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="10s",
    show_default=True,
    help="How long to wait for one reply before counting a timeout.",
)
@click.option(
    "--portal",
    envvar="TASKRING_PORTAL",
    default=DEFAULT_CLIENT_PORTALS,
    show_default=True,
    help="Client portals, HOST:PORT, comma-separated; all are used.",
)
@click.option(
    "--admin-portal",
    envvar="TASKRING_ADMIN_PORTAL",
    default=DEFAULT_ADMIN_PORTALS,
    show_default=True,
    help="Admin portals, HOST:PORT, comma-separated.",
)
@click.option(
    "--admin-token",
    envvar="TASKRING_ADMIN_TOKEN",
    help="The admin token (default: DATA_DIR/admin-token).",
)
@click.option(
    "--data-dir",
    envvar="TASKRING_DATA_DIR",
    help="Where `taskring up` keeps the admin token.  [default: ./data]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the results as JSON to this file.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Also run the same workload against Redis and a 3-member etcd cluster.",
)
@click.option("--compare-only", is_flag=True, help="Run only against Redis and etcd.")
@click.option(
    "--no-install",
    is_flag=True,
    help="Skip a comparison peer that is not installed instead of installing it.",
)
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
@click.option(
    "--broker",
    envvar="TASKRING_BROKER",
    help="The system's MQTT broker, to read each process's CPU from the heartbeats "
    "(default: as `taskring status` finds it).",
)
@restart_cli.options
def bench(**flags: Any) -> None:
    """Load-test a running system through its real portals and print latency, throughput
    and the CPU its processes spent per operation.

    Creates (or reuses) K clients `bench-client-NNNNNN` through an admin portal,
    gives each T tasks, then drives the workload through every client portal.

    With --restart-tasks N it measures a full restart instead: it writes N tasks
    straight into a new data directory, starts `taskring up` on it, and reports
    how long until the system serves them again, and the memory and disk it uses.
    """
    if flags["restart_tasks"] is not None:
        restart_cli.main(flags)
        return
    plan = make_plan(flags)
    json_path = flags["json_path"]
    if json_path is not None and not json_path.parent.is_dir():
        # found out now rather than after a long run
        raise click.BadParameter(f"{json_path.parent} is not a directory", param_hint="--json")
    factories = target_factories(flags, plan)
    broker = None if flags["compare_only"] else broker_address(flags["broker"], flags["data_dir"])
    machine = environment.machine()  # before the run, so the load average is other work's
    try:
        results, skipped = run_loop(measure_all(factories, plan, broker))
    except TargetUnreachable as exc:
        fail(EXIT_UNREACHABLE, str(exc))
    except TargetUnusable as exc:
        fail(EXIT_FAILED, str(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        fail(EXIT_INTERRUPTED, "interrupted")
    show(results, plan)
    if flags["json_path"]:
        write_json(flags["json_path"], flags, plan, results, skipped, machine)
    if not results:
        fail(EXIT_FAILED, "nothing was measured")
    for result in results:
        if result.ok == 0:
            fail(EXIT_FAILED, f"no operation on {result.target} succeeded")


def broker_address(flag: str | None, data_dir: str | None) -> settings.BrokerAddresses:
    """The broker the heartbeats come through, logged in as the read-only `status` when
    the data directory has its login."""
    try:
        url = local_broker_url(STATUS_LOGIN, flag, settings.data_dir(data_dir))
        return settings.BrokerAddresses.parse(url)
    except settings.ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from exc


def make_plan(flags: dict[str, Any]) -> Plan:
    if flags["duration"] <= 0:
        raise click.BadParameter("must be above zero", param_hint="--duration")
    if flags["timeout"] <= 0:
        raise click.BadParameter("must be above zero", param_hint="--timeout")
    spec = WorkloadSpec(
        workload=flags["workload"],
        read_ratio=flags["read_ratio"],
        clients=flags["clients"],
        tasks=flags["tasks"],
        keys=flags["keys"],
        zipf_s=flags["zipf_s"],
        description_bytes=flags["description_bytes"],
        seed=flags["seed"],
    )
    options = RunOptions(
        connections=flags["connections"],
        pipeline=flags["pipeline"],
        rate=flags["rate"],
        warmup=flags["warmup"],
        duration=flags["duration"],
    )
    progress = not flags["no_progress"] and err.is_terminal
    return Plan(spec, options, flags["timeout"], progress)


def target_factories(flags: dict[str, Any], plan: Plan) -> list[Callable[[], Target]]:
    factories: list[Callable[[], Target]] = []
    install = not flags["no_install"]
    if not flags["compare_only"]:
        portals = host_ports(flags["portal"], "--portal")
        admin_addresses = [
            grpc_target(*hp) for hp in host_ports(flags["admin_portal"], "--admin-portal")
        ]
        token = admin_token(flags["admin_token"], flags["data_dir"])
        factories.append(
            lambda: TaskringTarget(
                portals, AdminPortals(admin_addresses, token, plan.timeout), plan.spec, plan.timeout
            )
        )
    if flags["compare"] or flags["compare_only"]:
        factories.append(lambda: RedisTarget(plan.spec, plan.timeout, install, say))
        factories.append(lambda: EtcdTarget(plan.spec, plan.timeout, install, say))
    return factories


def show(results: list[RunResult], plan: Plan) -> None:
    if not results:
        return
    if not out.is_terminal:
        out.width = max(out.width, WIDE)  # a pipe or a file: never cut a column short
    out.print(report.results_table(results, plan.label()))
    for line in report.error_lines(results):
        out.print(line)
    for result in results:
        if result.cpu is not None:
            out.print(report.cpu_table(result.target, result.cpu))
        for line in report.cpu_lines(result):
            out.print(line)
    rows = report.ratios(results)
    if rows:
        out.print(report.ratios_table(rows))


def write_json(
    path: Path,
    flags: dict[str, Any],
    plan: Plan,
    results: list[RunResult],
    skipped: dict[str, str],
    machine: dict[str, Any],
) -> None:
    parameters = {**asdict(plan.spec), **asdict(plan.options), "timeout": plan.timeout}
    parameters["reads"] = plan.spec.reads
    if not flags["compare_only"]:
        parameters["portals"] = flags["portal"]
        parameters["admin_portals"] = flags["admin_portal"]
    command = shlex.join(["taskring", *sys.argv[1:]])
    document = report.document(
        command, parameters, results, machine, environment.git_commit(), skipped
    )
    try:
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        fail(EXIT_FAILED, f"cannot write {path}: {exc.strerror or exc}")
    say(f"results written to {path}")
