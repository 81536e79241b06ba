"""Pieces the command-line applications share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from backend.adapters.settings import (
    DEFAULT_BROKER,
    DEFAULT_STORAGE,
    STORAGE_MODES,
    BrokerAddresses,
    ConfigError,
    broker_url,
    parse_host_port,
)

F = TypeVar("F", bound=Callable[..., Any])

# The exit codes every command-line application shares (the README lists them).
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED = 1, 2, 3, 4


def fail(code: int, message: str) -> NoReturn:
    """One line on standard error, no traceback, and an exit code saying what kind of failure."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def count_option(
    name: str,
    default: int,
    what: str,
    minimum: int = 1,
    maximum: int | None = None,
    from_env: bool = True,
) -> Callable[[F], F]:
    """A whole-number option in [minimum, maximum]; with `from_env`, TASKRING_<NAME> sets it."""
    envvar = f"TASKRING_{name[2:].replace('-', '_').upper()}" if from_env else None
    return click.option(
        name,
        type=click.IntRange(min=minimum, max=maximum),
        default=default,
        show_default=True,
        envvar=envvar,
        help=f"{what}.",
    )


def json_flag(command: F) -> F:
    """Accept --json after the subcommand as well (`taskring client list --json`)."""

    def turn_on(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and ctx.obj is not None:
            ctx.obj.as_json = True

    return click.option(
        "--json",
        "json_here",
        is_flag=True,
        expose_value=False,
        callback=turn_on,
        help="Print JSON for scripts.",
    )(command)


# ---- options every component process shares --------------------------------------


def component_id_option(default: str) -> Callable[[F], F]:
    return click.option(
        "--id",
        "component_id",
        default=default,
        show_default=True,
        help="This component's id, unique in the cluster.",
    )


def listen_option(default: str, what: str, envvar: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--listen",
        default=default,
        show_default=True,
        envvar=envvar,
        callback=_parse_listen,
        help=f"HOST:PORT to {what} on.",
    )


broker_option = click.option(
    "--broker",
    envvar="TASKRING_BROKER",
    callback=lambda _ctx, _param, value: _parse_broker(value),
    help=f"MQTT broker URL, or a comma-separated list of the nodes of one clustered broker "
    f"(default {DEFAULT_BROKER}).",
)

storage_option = click.option(
    "--storage",
    type=click.Choice(STORAGE_MODES),
    default=DEFAULT_STORAGE,
    envvar="TASKRING_STORAGE",
    show_default=True,
    help="Where the data lives.",
)


def _parse_listen(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_host_port(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc


def _parse_broker(value: str | None) -> BrokerAddresses:
    try:
        return BrokerAddresses.parse(broker_url(value))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from exc
