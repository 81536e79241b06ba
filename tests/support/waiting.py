"""The one way tests wait: poll a condition against a deadline, never sleep and hope.

`wait_until` blocks (plain test functions, fixtures, threads); `eventually` is its
twin for code inside the event loop, where blocking would stall the very system the
test waits for. Both take the same arguments and fail with the same messages:

- `condition` is called every `interval` seconds; it may return a value or an
  awaitable (`eventually` awaits it; `wait_until` takes plain callables only);
  the first truthy result is returned.
- An exception from `condition` counts as "not yet": systems under test refuse
  connections while they start. The last one is named if the deadline passes.
- At `timeout` seconds they fail naming `what`; if one of the `alive` processes
  exits first they fail at once with the end of its log, instead of waiting out
  a deadline that can no longer be met.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.processes import LoggedProcess

TIMEOUT = 10.0
INTERVAL = 0.02
LOG_TAIL = 3000  # characters of a dead process's log worth showing


def log_text(process: subprocess.Popen[bytes]) -> str:
    """The log of a process started by the `processes` fixture."""
    assert isinstance(process, LoggedProcess), f"{process.args!r} was not started by `processes`"
    return process.log_path.read_text(errors="replace")


def wait_until(
    condition: Callable[[], Any],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    alive: Iterable[subprocess.Popen[bytes]] = (),
) -> Any:
    """Poll `condition()` until it returns something truthy; fail naming `what` at the
    deadline, or at once, with its log, if one of the `alive` processes exits meanwhile."""
    deadline = time.monotonic() + timeout
    watched = list(alive)
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        _check_alive(watched, what)
        try:
            result = condition()
        except Exception as exc:  # the condition may fail until the system is up
            last_error = exc
        else:
            _refuse_awaitable(result)
            if result:
                return result
        time.sleep(interval)
    raise _timed_out(what, timeout, last_error)


async def eventually(
    condition: Callable[[], Any],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    alive: Iterable[subprocess.Popen[bytes]] = (),
) -> Any:
    """`wait_until` for code inside the event loop: `condition` may also return an
    awaitable, and the loop keeps running (the load, the servers) between polls."""
    deadline = time.monotonic() + timeout
    watched = list(alive)
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        _check_alive(watched, what)
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # the condition may fail until the system is up
            last_error = exc
        else:
            if result:
                return result
        await asyncio.sleep(interval)
    raise _timed_out(what, timeout, last_error)


def _check_alive(watched: list[subprocess.Popen[bytes]], what: str) -> None:
    for process in watched:
        if process.poll() is not None:
            raise AssertionError(
                f"{process.args!r} exited with {process.returncode} while waiting for "
                f"{what}; its log ends:\n{log_text(process)[-LOG_TAIL:]}"
            )


def _timed_out(what: str, timeout: float, last_error: BaseException | None) -> AssertionError:
    message = f"timed out after {timeout}s waiting for {what}"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    return AssertionError(message)


def _refuse_awaitable(result: Any) -> None:
    """A coroutine is truthy: taken as a result it would end the wait before it began."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited, and Python need not warn about it
        raise TypeError(f"wait_until got an awaitable; use `await eventually(...)`: {result!r}")
