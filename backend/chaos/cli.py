"""`taskring chaos`: inject faults into a running system under a recorded workload, check the
history, print a verdict and write an HTML report.

Exit codes: 0 PASS; 1 FAIL (the history is not linearizable, an acknowledged write was
lost, or an answer no correct system gives); 2 usage error, or the run could not be set
up; 3 the system is not reachable; 130 interrupted (every fault healed first).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import click

from backend.adapters import settings
from backend.bench.cli import Duration
from backend.bench.targets.base import TargetUnreachable
from backend.chaos import schedule
from backend.chaos.run import RunOptions, SetupFailed, chaos_run
from backend.chaos.system import Started, StartFailed, System, SystemUnreachable
from backend.processes.options import EXIT_UNREACHABLE, EXIT_USAGE, fail

EXIT_FAIL, EXIT_INTERRUPTED = 1, 130
DEFAULT_FAULTS = "pause,partition,kill,netem"
DEFAULT_WEB = f"http://{settings.DEFAULT_HOST}:{settings.DEFAULT_WEB_PORT}"


def say(message: str) -> None:
    click.echo(message, err=True)


@click.command("chaos")
@click.option(
    "--duration",
    type=Duration(),
    default="60s",
    show_default=True,
    help="How long the workload runs, faults included (10s, 2m).",
)
@click.option(
    "--faults",
    default=DEFAULT_FAULTS,
    show_default=True,
    help=f"Which faults to inject, comma-separated: {', '.join(schedule.KINDS)}.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the fault schedule and the workload (default: random, printed).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default="chaos-reports",
    show_default=True,
    help="Directory for the HTML report.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the result as JSON to this file: verdict, each fault with its "
    "target, start, heal or skip reason, and counts.",
)
@click.option(
    "--start",
    is_flag=True,
    help="Start a system of our own in a temporary data directory on free ports "
    "(with failpoints on), and stop it afterwards.",
)
@click.option(
    "--web",
    default=DEFAULT_WEB,
    show_default=True,
    envvar="TASKRING_WEB",
    help="The web process of the running system (ignored with --start).",
)
@click.option(
    "--data-dir",
    default=settings.DEFAULT_DATA_DIR,
    show_default=True,
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False),
    help="The running system's data directory: admin token, pids.json, failpoints.",
)
@click.option(
    "--admin-token",
    envvar="TASKRING_ADMIN_TOKEN",
    help="The admin token (default: DATA_DIR/admin-token).",
)
@click.option(
    "--clients",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Clients the workload acts for (created afresh).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Concurrent connections per client.",
)
def chaos(
    duration: float,
    faults: str,
    seed: int | None,
    report_dir: str,
    json_path: str | None,
    start: bool,
    web: str,
    data_dir: str,
    admin_token: str | None,
    clients: int,
    workers: int,
) -> None:
    """Inject faults (kill, pause, partition, netem, disk, clock) into a running system under
    a recorded workload; check the histories, print PASS or FAIL and write an HTML report."""
    try:
        kinds = schedule.parse_kinds(faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    if duration < schedule.QUIET_START + schedule.QUIET_END + 1:
        raise click.BadParameter("give at least 6s", param_hint="--duration")
    options = RunOptions(
        duration=duration,
        kinds=kinds,
        seed=seed if seed is not None else secrets.randbelow(1 << 31),
        report_dir=Path(report_dir),
        clients=clients,
        workers=workers,
        admin_token=admin_token,
        json_path=Path(json_path) if json_path else None,
    )
    try:
        code = asyncio.run(main(options, start, web, Path(data_dir)))
    except KeyboardInterrupt:
        say("interrupted: every fault was healed")
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def main(options: RunOptions, start: bool, web: str, data_dir: Path) -> int:
    started: Started | None = None
    try:
        if start:
            say("starting a system of our own (`taskring up` in a temporary directory)")
            started = await Started.start()
            web, data_dir = started.web, started.data_dir
        system = System(web, data_dir)
        try:
            outcome = await chaos_run(system, options, say)
        finally:
            await system.close()
    except (SystemUnreachable, TargetUnreachable) as exc:
        fail(EXIT_UNREACHABLE, f"the system is not reachable: {exc}")
    except SetupFailed as exc:
        fail(EXIT_USAGE, str(exc))
    except StartFailed as exc:
        fail(EXIT_USAGE, f"could not start a system: {exc}")
    finally:
        if started is not None:
            say("stopping the system we started")
            await started.stop()
    click.echo(outcome.verdict.line())
    click.echo(f"report: {outcome.report_path}")
    if outcome.json_path is not None:
        click.echo(f"json: {outcome.json_path}")
    return 0 if outcome.verdict.passed else EXIT_FAIL
