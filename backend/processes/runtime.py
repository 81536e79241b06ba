"""What every component process does the same way: stop on a signal, heartbeat while
serving (a critical task: backend/adapters/critical_tasks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from backend.adapters.bus.transport import Bus
from backend.adapters.critical_tasks import critical_task
from backend.adapters.heartbeats import run_heartbeat
from backend.core.metrics import RequestMetrics

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop's event loop when it is installed (it moves MQTT and TCP
    messages markedly faster than the default loop), else on the default one."""
    # What exists before the component starts (modules, classes, functions) lives as long
    # as the process: keep it out of the cyclic collector's full passes, which would
    # otherwise walk it again every few seconds under load.
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so the process can shut down in its own order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


@contextlib.asynccontextmanager
async def heartbeating(
    bus: Bus,
    kind: str,
    component_id: str,
    address: str,
    readiness: Callable[[], str | None],
    metrics: RequestMetrics,
) -> AsyncIterator[None]:
    """Publish heartbeats for as long as the block runs."""
    task = critical_task(
        run_heartbeat(bus, kind, component_id, address, readiness, metrics),
        f"{kind} {component_id} heartbeat",
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
