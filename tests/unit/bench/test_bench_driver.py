"""The bench driver against an in-process target whose answers take a known time.

These check the two loops' arithmetic on real asyncio timing, with loose
bounds so a busy machine does not make them fail.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.bench.driver import RunOptions, run
from backend.bench.targets.base import Session
from backend.bench.workload import Op, WorkloadSpec

SPEC = WorkloadSpec(workload="mixed", clients=10)


class SlowTarget:
    """Every operation takes `service` seconds; the first one after `stall_at` takes `stall`."""

    name = "slow"

    def __init__(self, service: float, stall_at: float | None = None, stall: float = 0.0) -> None:
        self.service = service
        self.stall_at = stall_at
        self.stall = stall
        self.began = asyncio.get_running_loop().time()
        self.stalled = False
        self.performed: list[Op] = []

    async def prepare(self) -> None:
        pass

    async def session(self, number: int) -> Session:
        return SlowSession(self)

    async def close(self) -> None:
        pass


class SlowSession:
    def __init__(self, target: SlowTarget) -> None:
        self.target = target

    async def perform(self, op: Op) -> str | None:
        target = self.target
        target.performed.append(op)
        elapsed = asyncio.get_running_loop().time() - target.began
        if target.stall_at is not None and elapsed >= target.stall_at and not target.stalled:
            target.stalled = True
            await asyncio.sleep(target.stall)
        await asyncio.sleep(target.service)
        return "not_found" if op.client == 9 else None

    async def close(self) -> None:
        pass


async def test_closed_loop_throughput_is_connections_over_service_time() -> None:
    target = SlowTarget(service=0.01)
    result = await run(target, SPEC, RunOptions(connections=4, warmup=0.1, duration=0.4))
    # 4 connections x 100 ops/s each, of which about a tenth hit client 9 and fail
    total = result.ok + result.error_count
    assert 80 <= total <= 170
    assert result.errors.keys() == {"not_found"}
    assert 0.01 <= result.latency.percentile(50) / 1e6 < 0.05
    assert result.missed == 0 and result.rate is None


async def test_pipelining_multiplies_the_streams() -> None:
    target = SlowTarget(service=0.01)
    options = RunOptions(connections=2, pipeline=3, warmup=0.05, duration=0.3)
    result = await run(target, SPEC, options)
    assert result.ok + result.error_count >= 2 * 3 * 0.3 / 0.01 * 0.5


async def test_open_loop_keeps_its_rate_when_the_target_keeps_up() -> None:
    target = SlowTarget(service=0.002)
    options = RunOptions(connections=4, rate=400, warmup=0.1, duration=0.5)
    result = await run(target, SPEC, options)
    # 200 due in the window; a starved event loop may fall a little behind, never ahead
    assert 120 <= result.ok + result.error_count <= 210
    assert result.missed <= 20
    assert result.rate == 400


@pytest.mark.slow
async def test_open_loop_counts_the_wait_behind_a_stall_as_latency() -> None:
    # One connection, 100 ops/s due; a 400 ms stall in the measured window delays the ~40
    # operations due during it (of ~100 measured). Measured from when they were due, they
    # are slow; a closed loop times only the one stalled request as slow. The margins are
    # wide so that a busy machine's scheduling delays cannot blur the two apart.
    target = SlowTarget(service=0.001, stall_at=0.3, stall=0.4)
    options = RunOptions(connections=1, rate=100, warmup=0.1, duration=1.0)
    result = await run(target, SPEC, options)
    assert result.latency.percentile(85) / 1e6 >= 0.15, "the wait behind the stall must show"
    assert result.latency.max / 1e6 >= 0.3

    closed = SlowTarget(service=0.001, stall_at=0.3, stall=0.4)
    closed_result = await run(closed, SPEC, RunOptions(connections=1, warmup=0.1, duration=1.0))
    assert closed_result.latency.percentile(85) / 1e6 < 0.15
    assert closed_result.latency.max / 1e6 >= 0.3


async def test_an_overloaded_open_loop_reports_its_backlog() -> None:
    target = SlowTarget(service=0.02)  # one connection manages about 50 ops/s
    options = RunOptions(connections=1, rate=500, warmup=0.1, duration=0.5)
    result = await run(target, SPEC, options)
    assert result.missed > 100
    assert result.latency.max / 1e6 > 0.2
