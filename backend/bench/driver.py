"""Runs a workload against a target: C connections, closed loop or open loop, warm-up first.

Each connection carries `pipeline` streams; a stream issues one operation
at a time. Closed loop: a stream starts its next operation when the last one
answered. Open loop: a stream starts each operation when the schedule says it
is due (schedule.py) and latency counts from that due time. When the
measured window ends no new operation starts; those still in flight are
waited for (each at most the operation timeout) but not counted, since only
operations that finish inside the window are (schedule.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from backend.bench.results import Live, Recorder, RunResult
from backend.bench.schedule import OpenLoopSchedule, Window
from backend.bench.targets.base import Session, Target
from backend.bench.workload import OpStream, WorkloadSpec, key_chooser

RECONNECT_PAUSE = 0.1  # seconds a stream waits after its connection broke
START_DELAY = 0.05  # lets every stream be scheduled before the clock starts
# An open-loop operation due this close to the end may be cut off by timer slack;
# only operations due earlier than that and never started count as missed.
LATE_TOLERANCE = 0.02


@dataclass(frozen=True)
class RunOptions:
    connections: int = 64
    pipeline: int = 1
    rate: float | None = None  # operations per second in total; None is closed loop
    warmup: float = 2.0
    duration: float = 10.0

    @property
    def streams(self) -> int:
        return self.connections * self.pipeline


async def run(
    target: Target, spec: WorkloadSpec, options: RunOptions, live: Live | None = None
) -> RunResult:
    """Open the connections, drive the workload through them, and return what was measured."""
    live = live or Live()
    sessions = await asyncio.gather(*(target.session(n) for n in range(options.connections)))
    try:
        loop = asyncio.get_running_loop()
        window = Window(loop.time() + START_DELAY, options.warmup, options.duration)
        recorder = Recorder(window, live=live)
        live.phase = "warm-up" if options.warmup else "measuring"
        schedule = (
            OpenLoopSchedule(options.rate, options.streams, window.start) if options.rate else None
        )
        keys = key_chooser(spec)
        streams = [
            _stream(
                sessions[n // options.pipeline],
                OpStream(spec, n, keys),
                n,
                window,
                recorder,
                schedule,
            )
            for n in range(options.streams)
        ]
        phases = asyncio.create_task(_follow_phases(window, live))
        issued = await asyncio.gather(*streams)
        phases.cancel()
        live.phase = "done"
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    missed = _missed(schedule, window, issued) if schedule else 0
    return RunResult.of(target.name, recorder, options.rate, missed)


async def _stream(
    session: Session,
    ops: OpStream,
    number: int,
    window: Window,
    recorder: Recorder,
    schedule: OpenLoopSchedule | None,
) -> int:
    """One stream's loop; returns how many operations it started."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, window.start - loop.time()))
    k = 0
    while True:
        now = loop.time()
        if schedule is None:
            started = now
        else:
            started = schedule.due(number, k)
            if started > now:
                await asyncio.sleep(started - now)
        if loop.time() >= window.end:
            return k
        k += 1
        error = await session.perform(ops.next())
        recorder.record(started, loop.time(), error)
        if error == "disconnected":
            await asyncio.sleep(RECONNECT_PAUSE)


def _missed(schedule: OpenLoopSchedule, window: Window, issued: list[int]) -> int:
    """Operations due before the end that their stream had not started when it came."""
    cutoff = window.end - LATE_TOLERANCE
    return sum(
        max(0, schedule.count_before(n, cutoff) - started) for n, started in enumerate(issued)
    )


async def _follow_phases(window: Window, live: Live) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, window.measure_from - loop.time()))
    live.phase = "measuring"
    await asyncio.sleep(max(0.0, window.end - loop.time()))
    live.phase = "finishing"
