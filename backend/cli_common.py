"""Pieces the command-line applications share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


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
