"""The `--restart-*` flags of `taskring bench`, and what the command does with them.

    taskring bench --restart-tasks 1000000 --restart-clients 10000 [--restart-sample 100]
                   [--restart-dir DIR] [--restart-groups G] [--restart-replicas R]
                   [--restart-cache-nodes C] [--seed S] [--description-bytes B] [--json FILE]

See restart.py for what is measured. The workload flags do not apply; --seed and
--description-bytes shape the generated data, and --json writes the figures.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from backend.adapters import settings
from backend.bench import environment
from backend.bench.restart import (
    RestartFailed,
    RestartPlan,
    RestartResult,
    problems,
    run_restart,
    table,
)
from backend.bench.restart_data import DataSpec
from backend.processes.options import count_option, fail

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
TASKS_PER_CLIENT = 100  # the default spread: N / 100 clients

F = Callable[..., Any]

_OPTIONS = [
    click.option(
        "--restart-tasks",
        type=click.IntRange(0, 100_000_000),
        help="Measure a full restart with N tasks stored instead of running a workload.",
    ),
    click.option(
        "--restart-clients",
        type=click.IntRange(1, 10_000_000),
        help="Clients the restart's tasks spread over.  [default: N/100]",
    ),
    click.option(
        "--restart-sample",
        type=click.IntRange(1, 1_000_000),
        default=100,
        show_default=True,
        help="Clients (chosen with --seed) that must list all their tasks after the restart.",
    ),
    click.option(
        "--restart-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Keep the restart's data directory here, and reuse it if it holds the same data. "
        "[default: a temporary directory, removed after]",
    ),
    count_option(
        "--restart-groups",
        settings.DEFAULT_REPLICA_GROUPS,
        "Replica groups of the restarted deployment",
        maximum=settings.MAX_REPLICA_GROUPS,
        from_env=False,
    ),
    count_option(
        "--restart-replicas",
        settings.DEFAULT_REPLICAS,
        "Replicas per group of the restarted deployment",
        maximum=settings.MAX_REPLICAS,
        from_env=False,
    ),
    count_option(
        "--restart-cache-nodes",
        settings.DEFAULT_CACHE_NODES,
        "Cache nodes of the restarted deployment",
        maximum=64,
        from_env=False,
    ),
]


def options(command: F) -> F:
    """Add the --restart-* flags to a command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def make_plan(flags: dict[str, Any]) -> RestartPlan:
    if flags["compare"] or flags["compare_only"]:
        raise click.UsageError("--restart-tasks measures taskring alone; drop --compare")
    tasks = flags["restart_tasks"]
    clients = flags["restart_clients"] or max(1, tasks // TASKS_PER_CLIENT)
    try:
        spec = DataSpec(
            tasks=tasks,
            clients=clients,
            replica_groups=flags["restart_groups"],
            replicas=flags["restart_replicas"],
            cache_nodes=flags["restart_cache_nodes"],
            description_bytes=flags["description_bytes"],
            seed=flags["seed"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return RestartPlan(spec, flags["restart_sample"], flags["restart_dir"])


def main(flags: dict[str, Any]) -> None:
    plan = make_plan(flags)
    json_path: Path | None = flags["json_path"]
    if json_path is not None and not json_path.parent.is_dir():
        raise click.BadParameter(f"{json_path.parent} is not a directory", param_hint="--json")
    machine = environment.machine()
    try:
        result = run_restart(plan, say=lambda text: click.echo(text, err=True))
    except RestartFailed as exc:
        fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        fail(EXIT_INTERRUPTED, "interrupted")
    Console().print(table(result))
    found = problems(result)
    if found and result.output_tail:
        click.echo("last lines of `taskring up`:\n" + "\n".join(result.output_tail), err=True)
    if json_path is not None:
        write_json(json_path, plan, result, machine)
    if found:
        fail(EXIT_FAILED, "; ".join(found))


def write_json(
    path: Path, plan: RestartPlan, result: RestartResult, machine: dict[str, Any]
) -> None:
    parameters = {
        **plan.data.__dict__,
        "sample": plan.sample,
        "directory": str(plan.directory) if plan.directory else None,
    }
    document = {
        "command": shlex.join(["taskring", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "commit": environment.git_commit(),
        "parameters": parameters,
        "restart": result.to_dict(),
    }
    try:
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        fail(EXIT_FAILED, f"cannot write {path}: {exc.strerror or exc}")
    click.echo(f"results written to {path}", err=True)
