"""The live progress bar: how far the run is, operations per second now, errors so far."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from backend.bench.results import Live

TICK = 0.25  # seconds between refreshes
RATE_WINDOW = 4  # ticks the ops/s figure averages over


@contextlib.asynccontextmanager
async def live_progress(
    console: Console, label: str, live: Live, seconds: float, enabled: bool
) -> AsyncIterator[None]:
    """Show a bar for `seconds` (warm-up plus measuring) while the block runs."""
    if not enabled:
        yield
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[phase]:<10}"),
        TextColumn("{task.fields[rate]:>10} ops/s"),
        TextColumn("errors {task.fields[errors]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(label, total=seconds, phase=live.phase, rate="-", errors=0)
    with progress:
        ticker = asyncio.create_task(_tick(progress, task, live))
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _tick(progress: Progress, task: TaskID, live: Live) -> None:
    loop = asyncio.get_running_loop()
    history: collections.deque[tuple[float, int]] = collections.deque(maxlen=RATE_WINDOW + 1)
    started: float | None = None
    while True:
        now = loop.time()
        if started is None and live.phase != "connecting":
            started = now
        history.append((now, live.done))
        (then, done_then), (_, done_now) = history[0], history[-1]
        rate = (done_now - done_then) / (now - then) if now > then else 0.0
        progress.update(
            task,
            completed=0.0 if started is None else now - started,
            phase=live.phase,
            rate=f"{rate:,.0f}",
            errors=live.errors,
        )
        await asyncio.sleep(TICK)
