"""`taskring`: the one command-line entry point.

Each subcommand lives in the module that owns it and is imported only when
used, so `taskring client list` does not pay for gRPC or FastAPI imports.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from backend.adapters.private_files import PRIVATE_UMASK

# name -> "module:attribute" of a click command
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "backend.processes.supervisor:up",
        "Start every component as its own supervised process.",
    ),
    "broker": ("backend.processes.broker:broker", "Run an MQTT broker (Mosquitto, else embedded)."),
    "client-portal": ("backend.processes.client_portal:command", "Run one client portal (TCP)."),
    "admin-portal": ("backend.processes.admin_portal:command", "Run one admin portal (gRPC)."),
    "cache-node": ("backend.processes.cache_node:command", "Run one cache node of the Chord ring."),
    "replica": ("backend.processes.replica:command", "Run one replica of a replica group (Raft)."),
    "web": ("web.server:command", "Run the web process (health, metrics, UI)."),
    "client": ("backend.cli.client:client", "The client application: manage your tasks."),
    "admin": ("backend.cli.admin:admin", "The administrator application: manage clients."),
    "status": ("backend.cli.status:status", "Show the cluster: components, health, storage."),
    "bench": ("backend.bench.cli:bench", "Load-test a running system through its portals."),
    "chaos": ("backend.chaos.cli:chaos", "Inject faults under a recorded load; check; report."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskring")
def main() -> None:
    """taskring: a task store on a Chord ring of caches and replicated logs, over MQTT."""
    # Logs, write-ahead logs, snapshots and logins hold clients' data and secrets: whatever
    # any taskring process creates is its owner's alone (backend/adapters/private_files.py).
    os.umask(PRIVATE_UMASK)
    level = os.environ.get("TASKRING_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)
    # httpx logs every request at INFO: `taskring up` polling /readyz printed a line each
    logging.getLogger("httpx").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
