"""The nemesis runner: each fault at its time on whoever plays its role, skips reported."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from backend.chaos.injectors import FaultEvent, FaultSkipped
from backend.chaos.nemesis import run_plan
from backend.chaos.schedule import PlannedFault
from backend.chaos.system import Target


class FakeRoles:
    async def find(self, role: str) -> tuple[Target | None, str]:
        if role == "leader":
            return None, "no replica group has a leader"
        return Target("cache-node-1", "cache-node", 4242), ""


@dataclass
class FakeInjectors:
    struck: list[tuple[str, int]] = field(default_factory=list)

    async def inject(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        if fault.kind == "disk":
            raise FaultSkipped("the system was not started with failpoints")
        self.struck.append((fault.kind, target.pid))
        event.began()
        await asyncio.sleep(fault.seconds)
        event.healed()


async def test_faults_strike_at_their_times_and_skips_say_why() -> None:
    plan = [
        PlannedFault(0.05, "pause", "owner", 0.05),
        PlannedFault(0.0, "kill", "leader", 1.0),
        PlannedFault(0.0, "disk", "owner", 1.0, "wal.fsync=error"),
    ]
    events = [FaultEvent(f) for f in plan]
    injectors = FakeInjectors()
    said: list[str] = []
    origin = time.monotonic()
    await run_plan(events, origin, FakeRoles(), injectors, said.append)  # type: ignore[arg-type]
    pause, kill, disk = events
    assert injectors.struck == [("pause", 4242)]
    assert pause.target == "cache-node-1" and pause.start is not None and pause.heal is not None
    assert pause.start - origin >= 0.05 and pause.heal - pause.start >= 0.05
    assert not kill.injected and kill.notes == ["skipped: no replica group has a leader"]
    assert not disk.injected and "failpoints" in disk.notes[0]
    assert len(said) == 3


async def test_a_cancelled_run_still_heals_what_it_struck() -> None:
    healed: list[str] = []

    class Slow(FakeInjectors):
        async def inject(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
            event.began()
            try:
                await asyncio.sleep(10)
            finally:
                healed.append(fault.kind)
                event.healed()

    events = [FaultEvent(PlannedFault(0.0, "pause", "owner", 10))]
    run = asyncio.create_task(
        run_plan(events, time.monotonic(), FakeRoles(), Slow(), lambda _: None)  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.1)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert healed == ["pause"] and events[0].heal is not None
