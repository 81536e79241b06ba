"""Waiting inside the event loop for a condition, against a deadline, never sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

INTERVAL = 0.02


async def eventually(
    condition: Callable[[], Any], what: str, timeout: float, interval: float = INTERVAL
) -> Any:
    """Poll `condition()` (a value or an awaitable) until it is truthy and return it; an
    exception counts as "not yet". At `timeout` raise AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # the system refuses while it starts or recovers
            last_error = exc
        else:
            if result:
                return result
        await asyncio.sleep(interval)
    message = f"timed out after {timeout}s waiting for {what}"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    raise AssertionError(message)
