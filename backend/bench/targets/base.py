"""What the driver needs from a system under test, and how a target says it cannot run.

A target is set up once (`prepare`: start peers, create clients, load the
initial tasks), then opens one `Session` per connection; a session performs
operations and answers None for success or an error code. `close` stops
whatever `prepare` started.
"""

from __future__ import annotations

from typing import Protocol

from backend.bench.workload import Op


class TargetUnreachable(Exception):
    """The system to drive does not answer (exit code 3)."""


class TargetUnusable(Exception):
    """The target cannot be used as asked: missing credentials, a peer that cannot be had."""


class Session(Protocol):
    async def perform(self, op: Op) -> str | None:
        """Do one operation; None on success, else a short error code."""
        ...

    async def close(self) -> None: ...


class Target(Protocol):
    name: str

    async def prepare(self) -> None: ...

    async def session(self, number: int) -> Session:
        """Open connection `number` (spread over the target's endpoints by number)."""
        ...

    async def close(self) -> None: ...
