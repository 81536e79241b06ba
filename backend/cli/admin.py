"""`taskring admin`: the administrator application, a gRPC client of the admin portal.

The admin token comes from --admin-token or TASKRING_ADMIN_TOKEN, else from
DATA_DIR/admin-token (what `taskring up` writes). Several portals may be
given; a portal that is unreachable or answers UNAVAILABLE (which promises
nothing was applied) is skipped for the next one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from rich.console import Console
from rich.table import Table
from rich.text import Text

from backend.adapters import settings
from backend.admin_pb import admin_pb2, admin_pb2_grpc
from backend.processes import options
from backend.processes.options import (
    EXIT_REFUSED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    json_flag,
)

DEFAULT_PORTALS = f"{settings.DEFAULT_HOST}:{settings.DEFAULT_ADMIN_PORTS[0]}"
EXIT_UNAUTHENTICATED = EXIT_UNAUTHORIZED
EXIT_BY_STATUS = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_UNAUTHENTICATED,
}
LIST_ALL_PAGE_SIZE = 1_000
DATA_COLUMN_CHARS = 40

console = Console()


def fail(code: int, message: str) -> NoReturn:
    # gRPC status messages may span lines; the error stays one line.
    options.fail(code, " ".join(message.split()))


@dataclass
class Session:
    """What every subcommand needs: where the portals are, the token, and the output form."""

    portals: list[str]
    token_flag: str | None
    data_dir: str | None
    as_json: bool
    timeout: float

    def admin_token(self) -> str:
        token = self.token_flag or settings.read_admin_token(settings.data_dir(self.data_dir))
        if not token:
            where = settings.data_dir(self.data_dir) / settings.ADMIN_TOKEN_FILE
            fail(
                EXIT_USAGE,
                "no admin token: give --admin-token or set TASKRING_ADMIN_TOKEN "
                f"({where} does not hold one; see --data-dir)",
            )
        if not token.isascii() or not token.isprintable():
            fail(EXIT_USAGE, "the admin token must be printable ASCII")
        return token

    def call(self, rpc: str, request: Any) -> Any:
        """Call one AdminService method, failing over to the next portal on UNAVAILABLE."""
        metadata = (("authorization", f"Bearer {self.admin_token()}"),)
        problems = []
        for portal in self.portals:
            with grpc.insecure_channel(portal) as channel:
                method = getattr(admin_pb2_grpc.AdminServiceStub(channel), rpc)
                try:
                    return method(request, metadata=metadata, timeout=self.timeout)
                except grpc.RpcError as exc:
                    status, details = exc.code(), exc.details() or ""
            if status != grpc.StatusCode.UNAVAILABLE:
                fail(EXIT_BY_STATUS.get(status, EXIT_REFUSED), f"{status.name.lower()}: {details}")
            problems.append(f"{portal} ({details})")
        fail(EXIT_UNREACHABLE, "no admin portal available: " + "; ".join(problems))


# ---- output --------------------------------------------------------------------------


def client_dict(client: admin_pb2.Client) -> dict[str, Any]:
    result = {
        "cid": client.cid,
        "name": client.name,
        "data": client.data,
        "created_at": client.created_at.ToJsonString(),
    }
    if client.token:
        result["token"] = client.token
    return result


def created_text(client: admin_pb2.Client, form: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return client.created_at.ToDatetime(tzinfo=UTC).strftime(form)


def emit_json(value: dict[str, Any]) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def show_client(session: Session, client: admin_pb2.Client, headline: str) -> None:
    if session.as_json:
        emit_json(client_dict(client))
        return
    click.echo(headline)
    click.echo(f"  cid      {client.cid}")
    click.echo(f"  name     {client.name}")
    click.echo(f"  created  {created_text(client)}")
    if client.token:
        click.echo(f"  token    {client.token}")
    click.echo("  data     " + (client.data.replace("\n", "\n           ") or "(empty)"))


def token_notice(client: admin_pb2.Client) -> str:
    return (
        "The token is shown only this once: hand it to the client now. "
        f"`taskring admin rotate-token {client.cid}` issues a new one."
    )


def short(text: str, limit: int = DATA_COLUMN_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def clients_table(clients: list[admin_pb2.Client]) -> Table:
    table = Table()
    table.add_column("CID", no_wrap=True)
    table.add_column("Name")
    table.add_column("Data")
    table.add_column("Created (UTC)", no_wrap=True)
    for client in clients:
        # Text cells: names and data are shown as typed, never read as rich markup.
        created = created_text(client, "%Y-%m-%d %H:%M")
        table.add_row(Text(client.cid), Text(client.name), Text(short(client.data)), created)
    return table


def read_data(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def request(message: type[Any], **fields: Any) -> Any:
    """Build a request message; text that is not valid UTF-8 is a usage error."""
    for name, value in fields.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                fail(EXIT_USAGE, f"{name} is not valid UTF-8")
    return message(**fields)


# ---- commands --------------------------------------------------------------------------


def parse_portals(text: str) -> list[str]:
    portals = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            host, port = settings.parse_host_port(part)
        except settings.ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--portal") from exc
        portals.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not portals:
        raise click.BadParameter("give at least one HOST:PORT", param_hint="--portal")
    return portals


@click.group(
    epilog="Exit codes: 0 ok; 1 the portal refused (not found, already exists, invalid "
    "argument); 2 usage error; 3 no admin portal reachable, unavailable or timed out; "
    "4 wrong or missing admin token."
)
@click.option(
    "--portal",
    envvar="TASKRING_ADMIN_PORTAL",
    default=DEFAULT_PORTALS,
    show_default=True,
    help="Admin portal(s), HOST:PORT, comma-separated; the next is tried when one is down.",
)
@click.option(
    "--admin-token",
    envvar="TASKRING_ADMIN_TOKEN",
    help="The admin token (default: DATA_DIR/admin-token).",
)
@click.option(
    "--data-dir",
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to find admin-token (default ./data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per result.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for each call.",
)
@click.pass_context
def admin(
    ctx: click.Context,
    portal: str,
    admin_token: str | None,
    data_dir: Path | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Manage clients through an admin portal (gRPC)."""
    directory = str(data_dir) if data_dir else None
    ctx.obj = Session(parse_portals(portal), admin_token, directory, as_json, timeout)


@admin.command()
@click.argument("name")
@click.option("--data", default="", help="Free text about the client; '-' reads standard input.")
@json_flag
@click.pass_obj
def create(session: Session, name: str, data: str) -> None:
    """Create a client named NAME and print its CID and token."""
    message = request(admin_pb2.CreateClientRequest, name=name, data=read_data(data))
    client = session.call("CreateClient", message)
    show_client(session, client, f"Created client {client.name}.")
    if not session.as_json:
        click.echo(token_notice(client))


@admin.command()
@click.argument("cid")
@json_flag
@click.pass_obj
def get(session: Session, cid: str) -> None:
    """Show one client."""
    client = session.call("GetClient", request(admin_pb2.GetClientRequest, cid=cid))
    show_client(session, client, f"Client {client.cid}:")


@admin.command()
@click.argument("cid")
@click.option("--data", required=True, help="The new data; '-' reads standard input.")
@json_flag
@click.pass_obj
def update(session: Session, cid: str, data: str) -> None:
    """Replace a client's data."""
    message = request(admin_pb2.UpdateClientRequest, cid=cid, data=read_data(data))
    client = session.call("UpdateClient", message)
    show_client(session, client, f"Updated client {client.cid}.")


@admin.command()
@click.argument("cid")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_flag
@click.pass_obj
def delete(session: Session, cid: str, yes: bool) -> None:
    """Delete a client and all its tasks; its token stops working."""
    if not yes:
        if not sys.stdin.isatty():
            fail(EXIT_USAGE, "delete removes the client and all its tasks; pass --yes to confirm")
        click.confirm(f"Delete client {cid} and all its tasks?", abort=True)
    session.call("DeleteClient", request(admin_pb2.DeleteClientRequest, cid=cid))
    if session.as_json:
        emit_json({"cid": cid, "deleted": True})
    else:
        click.echo(f"Deleted client {cid} and its tasks.")


@admin.command("rotate-token")
@click.argument("cid")
@json_flag
@click.pass_obj
def rotate_token(session: Session, cid: str) -> None:
    """Give a client a new token; the old one stops working at once."""
    client = session.call("RotateToken", request(admin_pb2.RotateTokenRequest, cid=cid))
    show_client(session, client, f"New token for client {client.cid}; the old one no longer works.")
    if not session.as_json:
        click.echo(token_notice(client))


def pages(session: Session, size: int, token: str, every: bool) -> Iterator[Any]:
    while True:
        message = request(admin_pb2.ListClientsRequest, page_size=size, page_token=token)
        page = session.call("ListClients", message)
        yield page
        token = page.next_page_token
        if not every or not token:
            return


@admin.command("list")
@click.option(
    "--page-size",
    type=click.IntRange(min=1, max=2**31 - 1),
    help="Clients per page (default 50; 1,000 with --all).",
)
@click.option("--page-token", default="", help="Continue where an earlier list stopped.")
@click.option("--all", "every", is_flag=True, help="Fetch every page.")
@json_flag
@click.pass_obj
def list_clients(session: Session, page_size: int | None, page_token: str, every: bool) -> None:
    """List clients in CID order."""
    size = page_size or (LIST_ALL_PAGE_SIZE if every else 0)
    clients: list[admin_pb2.Client] = []
    next_token = ""
    for page in pages(session, size, page_token, every):
        clients.extend(page.clients)
        next_token = page.next_page_token
    if session.as_json:
        emit_json({"clients": [client_dict(c) for c in clients], "next_page_token": next_token})
        return
    if not clients:
        click.echo("No clients yet. Create one with: taskring admin create NAME")
        return
    console.print(clients_table(clients))
    if next_token:
        click.echo(f"More clients: taskring admin list --page-token {next_token} (or --all)")
