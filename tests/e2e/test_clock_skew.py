"""Cache nodes whose clocks drift, through the failpoint `clock.rate`, under load.

The stack and the load are tests/e2e/test_linearizable_faults.py's (three
cache nodes, two portals, one replica group of three, three clients recorded
and checked for linearizability); each component gets its own failpoint file
(docs/operating.md, "Failpoints"). A slow old owner measures its 0.6 s lease
on its slow clock, so it believes it for 0.6/rate real seconds, while a node
taking a key over waits 0.7 s (`LEASE` + `LEASE_MARGIN`) on its own clock
(docs/architecture.md, "Leases"). Two ways of making keys change hands under
slow clocks:

- a fourth cache node (its clock right) joins the ring while the three others
  run at `rate`, takes over part of their keys, then leaves and hands them back:
  within the drift the leases assume (rate 0.9: 0.67 s < 0.7 s) and past it
  (rate 0.25: 2.4 s);
- the owner of a client's key is paused (SIGSTOP, as a long GC pause or a
  stalled VM would) for 3.5 s, past its peers' 2 s timeout, so they take its keys;
  with its clock right, and with it at rate 0.1, so that after the pause a lease
  it renewed just before still looks valid to it.

Every history must be linearizable; what the runs found is written down in
docs/architecture.md, "Leases". Each test needs a whole stack (about 20 s), so
they run only with TASKRING_CLOCK_SKEW_TESTS=1, keeping the suite's end-to-end
time in bounds:

    TASKRING_CLOCK_SKEW_TESTS=1 .venv/bin/pytest tests/e2e/test_clock_skew.py -s
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from backend.chaos.roles import traced_owner
from tests.conftest import Processes
from tests.e2e import stack as stack_module
from tests.e2e.test_linearizable_faults import Fault, Scenario, scenario
from tests.support.waiting import eventually

pytestmark = pytest.mark.skipif(
    os.environ.get("TASKRING_CLOCK_SKEW_TESTS") != "1",
    reason="a whole stack per test: set TASKRING_CLOCK_SKEW_TESTS=1 to run",
)

JOINER = "cache-node-4"
JOINED_FOR = 2.5  # seconds the fourth node stays in the ring
PAUSE = 3.5  # seconds a paused owner is stopped: past the peers' 2 s timeout


def set_failpoints(directory: Path, name: str, text: str) -> None:
    path = directory / name
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


@pytest.fixture
def failpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every component the stack starts reads its own failpoint file in this directory."""
    directory = tmp_path / "failpoints"
    directory.mkdir(mode=0o700)
    plain = stack_module.Stack.env_for

    def env_for(self: stack_module.Stack, name: str) -> dict[str, str]:
        return {**plain(self, name), "TASKRING_FAILPOINTS_FILE": str(directory / name)}

    monkeypatch.setattr(stack_module.Stack, "env_for", env_for)
    return directory


def keys_change_hands_under_slow_clocks(directory: Path, rate: float) -> Fault:
    async def fault(run: Scenario) -> None:
        for name in run.stack.cache_nodes:
            set_failpoints(directory, name, f"clock.rate={rate}\n")
        await asyncio.sleep(0.3)  # seen by every node
        args = (*run.stack.commands["cache-node-2"][:1], "--id", JOINER)
        args += tuple(run.stack.commands["cache-node-2"][3:])  # its replica flags
        run.stack.commands[JOINER] = args
        run.stack.cache_nodes[JOINER] = run.processes.taskring(
            *args, name=JOINER, env=run.stack.env_for(JOINER)
        )
        run.note(f"cache nodes 1-3 at clock rate {rate}; {JOINER} joining")
        await asyncio.sleep(JOINED_FOR)
        os.killpg(run.stack.cache_nodes[JOINER].pid, signal.SIGTERM)  # SIGTERM: leaves, hands back
        await asyncio.to_thread(run.stack.cache_nodes[JOINER].wait, 15)
        run.note(f"{JOINER} left after {JOINED_FOR}s")

    return fault


async def test_clock_drift_within_the_lease_margin_is_linearizable(
    processes: Processes, tmp_path: Path, failpoints: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(keys_change_hands_under_slow_clocks(failpoints, 0.9))


async def test_clock_drift_past_the_lease_margin_is_linearizable(
    processes: Processes, tmp_path: Path, failpoints: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(keys_change_hands_under_slow_clocks(failpoints, 0.25))


def owner_paused(directory: Path, rate: float) -> Fault:
    """The owner of the first client's key runs at clock rate `rate` and is paused
    (SIGSTOP, as a long GC pause or a stalled VM would) for PAUSE seconds: past the peers'
    2 s timeout, so they take it for dead and claim its keys. When it runs again, its
    clock has counted only `rate` x PAUSE of the pause, so a lease it renewed just before
    still looks valid to it."""

    async def fault(run: Scenario) -> None:
        account = run.accounts[0]
        owner = await eventually(
            lambda: traced_owner(run.stack.client_ports[0], account),
            f"a traced answer naming the owner of {account.cid}",
            10,
        )
        set_failpoints(directory, owner, f"clock.rate={rate}\n")
        await asyncio.sleep(0.5)  # seen
        process = run.stack.cache_nodes[owner]
        os.killpg(process.pid, signal.SIGSTOP)
        await asyncio.sleep(PAUSE)
        os.killpg(process.pid, signal.SIGCONT)
        run.note(f"{owner}, owner of {account.cid}, at clock rate {rate}, paused {PAUSE}s")
        await asyncio.sleep(2.0)
        set_failpoints(directory, owner, "")

    return fault


async def test_a_paused_owner_with_a_right_clock_is_linearizable(
    processes: Processes, tmp_path: Path, failpoints: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(owner_paused(failpoints, 1.0))


async def test_a_paused_owner_with_a_slow_clock_is_linearizable(
    processes: Processes, tmp_path: Path, failpoints: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(owner_paused(failpoints, 0.1))
