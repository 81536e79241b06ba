"""The disk and clock faults: a failpoint line in DATA/failpoints/<child-name>, emptied after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backend.chaos.injectors import FaultEvent, FaultSkipped, Injectors
from backend.chaos.schedule import PlannedFault
from backend.chaos.system import System, Target

LEADER = Target("g1-2", "replica", 4242)


async def test_the_line_is_written_for_the_fault_and_emptied_when_it_heals(
    tmp_path: Path,
) -> None:
    (tmp_path / "failpoints").mkdir()
    system = System("http://127.0.0.1:9", tmp_path)
    injectors = Injectors(system, set())
    fault = PlannedFault(0.0, "disk", "leader", 0.2, "wal.fsync=error")
    event = FaultEvent(fault)
    path = tmp_path / "failpoints" / "replica-g1-2"
    strike = asyncio.create_task(injectors.inject(fault, LEADER, event))
    await asyncio.sleep(0.1)
    assert path.read_text() == "wal.fsync=error\n"
    await strike
    assert path.read_text() == ""
    assert event.start is not None and event.heal is not None
    await system.close()


async def test_a_system_without_failpoints_is_named_as_such(tmp_path: Path) -> None:
    system = System("http://127.0.0.1:9", tmp_path)
    fault = PlannedFault(0.0, "clock", "owner", 0.1, "clock.rate=1.5")
    owner = Target("cache-node-1", "cache-node", 4242)
    with pytest.raises(FaultSkipped, match="TASKRING_FAILPOINTS=1"):
        await Injectors(system, set()).inject(fault, owner, FaultEvent(fault))
    assert not (tmp_path / "failpoints").exists()
    await system.close()
