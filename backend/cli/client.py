"""`taskring client`: the client application, speaking the TCP line protocol to a portal.

Credentials come from --cid/--token or TASKRING_CID/TASKRING_TOKEN. Several
portals may be given; the first that accepts a connection is used.

Exit codes: 0 success, 1 the portal refused the operation (not found,
exists, bad request), 2 usage error, 3 no portal reachable / unavailable /
timeout, 4 unauthorized.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from backend.adapters.settings import ConfigError, parse_host_port
from backend.processes.options import (
    EXIT_REFUSED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    fail,
    json_flag,
)

DEFAULT_PORTALS = "127.0.0.1:7001,127.0.0.1:7002"
EXIT_BY_CODE = {
    "unreachable": EXIT_UNREACHABLE,
    "unavailable": EXIT_UNREACHABLE,
    "timeout": EXIT_UNREACHABLE,
    "unauthorized": EXIT_UNAUTHORIZED,
}

console = Console()


class PortalError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PortalConnection:
    """One TCP connection to a client portal: send request lines, read response lines."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.reader = sock.makefile("rb")
        self.next_id = 0

    @classmethod
    def open(cls, portals: list[tuple[str, int]], timeout: float) -> PortalConnection:
        problems = []
        for host, port in portals:
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                problems.append(f"{host}:{port} ({exc.strerror or exc})")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return cls(sock, f"{host}:{port}")
        raise PortalError("unreachable", "no client portal answered: " + ", ".join(problems))

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """Send one request and return its result; raise PortalError on failure."""
        self.next_id += 1
        request = {"id": self.next_id, "op": op, **arguments}
        self.sock.sendall(json.dumps(request, ensure_ascii=False).encode() + b"\n")
        for line in self.lines():
            if "event" in line and "ok" not in line:
                continue  # an event on a watching connection; not our answer
            if not line.get("ok"):
                error = line.get("error") or {}
                raise PortalError(error.get("code", "internal"), error.get("message", str(line)))
            return line
        raise PortalError("unreachable", f"portal {self.address} closed the connection")

    def lines(self) -> Iterator[dict[str, Any]]:
        try:
            for raw in self.reader:
                yield json.loads(raw)
        except TimeoutError as exc:
            raise PortalError("timeout", f"portal {self.address} did not answer in time") from exc
        except (OSError, ValueError) as exc:
            raise PortalError("unreachable", f"portal {self.address}: {exc}") from exc

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class Session:
    portals: list[tuple[str, int]]
    cid: str | None
    token: str | None
    as_json: bool
    timeout: float

    def connect(self, authenticate: bool = True) -> PortalConnection:
        connection = PortalConnection.open(self.portals, self.timeout)
        if authenticate:
            if not self.cid or not self.token:
                fail(EXIT_USAGE, "give --cid and --token (or TASKRING_CID and TASKRING_TOKEN)")
            connection.call("auth", cid=self.cid, token=self.token)
        return connection

    def run(self, op: str, authenticate: bool = True, **arguments: Any) -> dict[str, Any]:
        try:
            connection = self.connect(authenticate)
            try:
                cid = {"cid": self.cid} if authenticate else {}
                return connection.call(op, **cid, **arguments)
            finally:
                connection.close()
        except PortalError as exc:
            fail(exit_code_for(exc.code), f"{exc.code}: {exc.message}")


def exit_code_for(code: str) -> int:
    return EXIT_BY_CODE.get(code, EXIT_REFUSED)


def parse_portals(text: str) -> list[tuple[str, int]]:
    try:
        return [parse_host_port(part.strip()) for part in text.split(",") if part.strip()]
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--portal") from exc


def emit(session: Session, result: dict[str, Any], human: str) -> None:
    if session.as_json:
        payload = {k: v for k, v in result.items() if k not in ("id", "ok")}
        click.echo(json.dumps(payload, ensure_ascii=False))
    else:
        console.print(human, highlight=False)


def read_description(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


@click.group(
    epilog="Exit codes: 0 ok, 1 refused (not found, exists, bad request), 2 usage, "
    "3 no portal reachable or unavailable, 4 unauthorized."
)
@click.option(
    "--portal",
    envvar="TASKRING_PORTAL",
    default=DEFAULT_PORTALS,
    show_default=True,
    help="Client portal(s), HOST:PORT, comma-separated; the first that answers is used.",
)
@click.option("--cid", envvar="TASKRING_CID", help="Your client id (16 hex digits).")
@click.option("--token", envvar="TASKRING_TOKEN", help="Your client token.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a reply.")
@click.pass_context
def client(
    ctx: click.Context,
    portal: str,
    cid: str | None,
    token: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Manage your tasks through a client portal."""
    ctx.obj = Session(parse_portals(portal), cid, token, as_json, timeout)


@client.command()
@json_flag
@click.pass_obj
def ping(session: Session) -> None:
    """Check that a portal answers (no credentials needed)."""
    result = session.run("ping", authenticate=False)
    emit(session, result, "pong")


@client.command("list")
@json_flag
@click.pass_obj
def list_tasks(session: Session) -> None:
    """List your tasks in the order they were added."""
    result = session.run("list_tasks")
    tasks = result.get("tasks", [])
    if session.as_json:
        emit(session, result, "")
        return
    if not tasks:
        console.print("No tasks yet. Add one with: taskring client add TITLE DESCRIPTION")
        return
    table = Table("#", "Title", "Description", show_lines=False)
    for number, task in enumerate(tasks, 1):
        table.add_row(str(number), task["title"], task["description"])
    console.print(table)


@client.command()
@click.argument("title")
@click.argument("description", default="")
@json_flag
@click.pass_obj
def add(session: Session, title: str, description: str) -> None:
    """Add a task. DESCRIPTION '-' reads it from standard input."""
    result = session.run("insert_task", title=title, description=read_description(description))
    emit(session, result, f"Added [bold]{title}[/bold].")


@client.command()
@click.argument("title")
@click.argument("description")
@json_flag
@click.pass_obj
def update(session: Session, title: str, description: str) -> None:
    """Replace a task's description. DESCRIPTION '-' reads it from standard input."""
    result = session.run("update_task", title=title, description=read_description(description))
    emit(session, result, f"Updated [bold]{title}[/bold].")


@client.command()
@click.argument("title")
@json_flag
@click.pass_obj
def delete(session: Session, title: str) -> None:
    """Delete one task."""
    result = session.run("delete_task", title=title)
    emit(session, result, f"Deleted [bold]{title}[/bold].")


@client.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_flag
@click.pass_obj
def clear(session: Session, yes: bool) -> None:
    """Delete all your tasks."""
    if not yes:
        if not sys.stdin.isatty():
            fail(EXIT_USAGE, "clear deletes every task; pass --yes to confirm")
        click.confirm("Delete ALL your tasks?", abort=True)
    result = session.run("delete_tasks")
    emit(session, result, f"Deleted {result.get('deleted', 0)} task(s).")


@client.command()
@json_flag
@click.pass_obj
def watch(session: Session) -> None:
    """Print every change to your tasks as it happens, until Ctrl-C."""
    try:
        connection = session.connect()
        connection.call("watch", cid=session.cid)
        connection.sock.settimeout(None)
        if not session.as_json:
            console.print(f"Watching {session.cid} on {connection.address}; Ctrl-C to stop.")
        for line in connection.lines():
            if session.as_json:
                click.echo(json.dumps(line, ensure_ascii=False))
            else:
                console.print(describe_event(line), highlight=False)
    except PortalError as exc:
        fail(exit_code_for(exc.code), f"{exc.code}: {exc.message}")
    except KeyboardInterrupt:
        return
    fail(EXIT_UNREACHABLE, "the portal closed the connection")


def describe_event(event: dict[str, Any]) -> str:
    kind, title = event.get("event"), event.get("title")
    descriptions = {
        "task_inserted": f"+ {title}: {event.get('description', '')}",
        "task_updated": f"~ {title}: {event.get('description', '')}",
        "task_deleted": f"- {title}",
        "tasks_cleared": "all tasks deleted",
        "client_deleted": "this client was deleted",
    }
    return descriptions.get(str(kind), json.dumps(event, ensure_ascii=False))
