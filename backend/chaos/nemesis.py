"""Runs a plan (schedule.py) against the live system: each fault at its time, on whoever
plays its role then (roles.py), by its injector (injectors.py). A fault that cannot strike
here is skipped with the reason, never silently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from backend.chaos.injectors import FaultEvent, FaultSkipped, Injectors
from backend.chaos.network import NetworkToolMissing
from backend.chaos.roles import Roles


async def run_plan(
    events: Sequence[FaultEvent],
    origin: float,
    roles: Roles,
    injectors: Injectors,
    say: Callable[[str], None],
) -> None:
    """Every event's planned fault at `origin + at` (time.monotonic()); the events are
    filled in as they run, so an interrupted run still reports what it did."""
    runs = [asyncio.create_task(_strike(e, origin, roles, injectors, say)) for e in events]
    try:
        await asyncio.gather(*runs)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)  # every heal has run


async def _strike(
    event: FaultEvent,
    origin: float,
    roles: Roles,
    injectors: Injectors,
    say: Callable[[str], None],
) -> None:
    fault = event.planned
    await asyncio.sleep(max(0.0, origin + fault.at - time.monotonic()))
    target, why_not = await roles.find(fault.role)
    if target is None:
        event.skipped(why_not)
        say(f"  {fault.kind} {fault.role}: skipped ({why_not})")
        return
    event.target = target.id
    option = f" ({fault.option})" if fault.option else ""
    try:
        await injectors.inject(fault, target, event)
    except (FaultSkipped, NetworkToolMissing) as exc:
        event.skipped(str(exc))
        say(f"  {fault.kind} {fault.role} {target.describe()}{option}: skipped ({exc})")
        return
    except (OSError, RuntimeError) as exc:
        event.notes.append(f"failed: {exc}")
        say(f"  {fault.kind} {fault.role} {target.describe()}{option}: failed ({exc})")
        return
    lasted = (event.heal or 0.0) - (event.start or 0.0)
    notes = f"; {'; '.join(event.notes)}" if event.notes else ""
    say(
        f"  {fault.kind} {fault.role} {target.describe()}{option} at "
        f"{(event.start or origin) - origin:.1f}s, healed after {lasted:.1f}s{notes}"
    )
