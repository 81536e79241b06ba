"""docs/deploy: every command the compose file and the systemd units run is one taskring takes.

The commands are parsed by the real command line (click), so a renamed
subcommand or option, or a value of the wrong type, fails here rather than on
a newcomer's machine. compose.yaml writes each command as a JSON-style flow
list, which this test reads without a YAML parser (PyYAML is no dependency of
taskring's); where PyYAML happens to be installed, the whole file is parsed too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from backend.cli.main import main

DEPLOY = Path(__file__).resolve().parents[3] / "docs" / "deploy"
SERVICE = re.compile(r"^  ([a-z0-9-]+):\s*$")
COMMAND = re.compile(r"^\s+command:\s*(\[.*\])\s*$")
# What the units' environment files set, for the ${VAR} and $VAR in ExecStart.
UNIT_ENVIRONMENT = {
    "REPLICA_GROUPS": "1",
    "REPLICAS": "3",
    "CACHE_NODE_FLAGS": "--bootstrap",
    "GROUP": "g1",
    "MEMBER": "2",
    "LISTEN": "10.0.0.3:7001",
    "ALLOW_PORTALS": "10.0.0.3:7001,10.0.0.2:50051",
}
SUBCOMMANDS = ("cache-node", "replica", "client-portal", "admin-portal", "web")


def compose_commands() -> dict[str, list[str]]:
    """Each service's command in compose.yaml, by service name."""
    commands: dict[str, list[str]] = {}
    section = service = ""
    for line in (DEPLOY / "compose.yaml").read_text().splitlines():
        if line and not line[0].isspace():
            section = line.rstrip(":")
        elif section == "services" and (named := SERVICE.match(line)):
            service = named.group(1)
        elif section == "services" and (command := COMMAND.match(line)):
            commands[service] = json.loads(command.group(1))
    return commands


def unit_command(path: Path) -> list[str]:
    """A unit's ExecStart, with %i and its environment's variables filled in."""
    (line,) = [line for line in path.read_text().splitlines() if line.startswith("ExecStart=")]
    command = line.removeprefix("ExecStart=").replace("%i", "1")
    words = []
    for word in command.split():
        name = word.removeprefix("$").strip("{}")
        words += UNIT_ENVIRONMENT[name].split() if word.startswith("$") else [word]
    return words


def parse(args: list[str]) -> click.Context:
    """What `taskring <args>` would run with; click's error if it refuses them."""
    root = click.Context(main)
    command = main.get_command(root, args[0])
    assert command is not None, f"taskring has no command {args[0]!r}"
    return command.make_context(args[0], args[1:], parent=root)


def test_compose_runs_every_component_and_a_nats_node_per_host():
    commands = compose_commands()
    nats = [name for name, command in commands.items() if command[0] == "nats-server"]
    taskring = {name: command for name, command in commands.items() if command[0] == "taskring"}
    assert nats == ["nats-1", "nats-2", "nats-3"]
    assert set(nats) | set(taskring) == set(commands)
    assert {command[1] for command in taskring.values()} == set(SUBCOMMANDS)


@pytest.mark.parametrize("service", sorted(name for name in compose_commands()))
def test_each_compose_command_is_one_taskring_takes(service: str):
    command = compose_commands()[service]
    if command[0] == "nats-server":
        assert command[1:] == ["-c", "/etc/nats/taskring.conf"]
        return
    assert command[0] == "taskring"
    parse(command[1:])
    assert (DEPLOY / "compose.yaml").read_text().count(f"env_file: env/{service}.env") == 1, (
        f"{service} must log in as itself"
    )


def test_compose_parses_as_yaml_to_the_same_services():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {name: service["command"] for name, service in services.items()} == compose_commands()
    for name, service in services.items():
        if service["command"][0] == "taskring":
            assert service["env_file"] == f"env/{name}.env"
            assert service["image"] == "taskring:local"  # from the anchor, merged in


def test_a_compose_service_is_named_after_its_login():
    for service, command in compose_commands().items():
        if command[0] == "taskring" and "--id" in command:
            assert command[command.index("--id") + 1] == service


@pytest.mark.parametrize(
    "unit", sorted(path.name for path in (DEPLOY / "systemd").glob("taskring-*.service"))
)
def test_each_unit_runs_a_command_its_program_takes(unit: str):
    path = DEPLOY / "systemd" / unit
    text = path.read_text()
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert hardening in text.splitlines(), f"{unit} lacks {hardening}"
    assert re.search(r"^User=\w+$", text, re.MULTILINE)
    command = unit_command(path)
    if command[0].endswith("nats-server"):
        assert "ReadWritePaths=/var/lib/nats" in text
        return
    assert command[0] == "/opt/taskring/bin/taskring"
    assert "ReadWritePaths=/var/lib/taskring" in text
    assert re.search(r"^EnvironmentFile=/etc/taskring/.*\.env$", text, re.MULTILINE)
    parse(command[1:])


def test_the_units_cover_every_component():
    units = {path.name for path in (DEPLOY / "systemd").glob("*.service")}
    assert units == {
        "taskring-nats.service",
        "taskring-cache-node@.service",
        "taskring-replica@.service",
        "taskring-client-portal@.service",
        "taskring-admin-portal@.service",
        "taskring-web.service",
    }
