"""The faults on real OS processes, by pid, each healed when its time is up, also when the
run is interrupted (every injector heals in a `finally`).

- kill: SIGKILL; `taskring up`'s supervisor starts the component again. Healed when the
  web process lists the component with a new pid.
- pause: SIGSTOP, then SIGCONT.
- partition: the process's connections to the broker dropped by nftables (a table of our
  own, deleted afterwards), both ways or one; the rules follow the connections it opens
  meanwhile.
- netem: delay and jitter on the process's broker connections with tc on `lo`.
- disk, clock: a failpoint line written into DATA/failpoints/<child-name>, emptied after;
  only when the system runs with failpoints (TASKRING_FAILPOINTS=1 under `taskring up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.chaos import network
from backend.chaos.schedule import CLOCK, DISK, KILL, NETEM, PARTITION, PAUSE, PlannedFault
from backend.chaos.system import System, SystemUnreachable, Target
from backend.core.chaos_notices import HEALED, INJECTED, SKIPPED

KILL_RECOVERY = 20.0  # seconds to wait for a killed component's successor
POLL = 0.2
PARTITION_REFRESH = 0.2  # how often a partition looks for connections the process opened


class FaultSkipped(Exception):
    """The fault could not be injected here; the reason is for the report."""


@dataclass
class FaultEvent:
    """What became of one planned fault: whom it struck, when it started and healed."""

    planned: PlannedFault
    target: str = ""
    start: float | None = None  # time.monotonic()
    heal: float | None = None
    notes: list[str] = field(default_factory=list)
    # told of each change as it happens (state, reason), for the cluster page
    listener: Callable[[FaultEvent, str, str], None] | None = None

    @property
    def injected(self) -> bool:
        return self.start is not None

    def began(self) -> None:
        self.start = time.monotonic()
        self._tell(INJECTED)

    def healed(self) -> None:
        self.heal = time.monotonic()
        self._tell(HEALED)

    def skipped(self, reason: str) -> None:
        self.notes.append(f"skipped: {reason}")
        self._tell(SKIPPED, reason)

    def _tell(self, state: str, reason: str = "") -> None:
        if self.listener is not None:
            self.listener(self, state, reason)


@dataclass
class Injectors:
    system: System
    broker_ports: set[int]

    async def inject(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        """Strike `target` with `fault`, wait its time and heal it, noting times on `event`."""
        injector = {
            KILL: self.kill,
            PAUSE: self.pause,
            PARTITION: self.partition,
            NETEM: self.netem,
            DISK: self.failpoint,
            CLOCK: self.failpoint,
        }[fault.kind]
        await injector(fault, target, event)

    async def kill(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        event.began()
        os.kill(target.pid, signal.SIGKILL)
        waited = max(fault.seconds, KILL_RECOVERY)
        deadline = time.monotonic() + waited
        while time.monotonic() < deadline:
            with contextlib.suppress(SystemUnreachable):
                again = await self.system.target(target.kind, target.id)
                if again is not None and again.pid != target.pid:
                    event.healed()
                    event.notes.append(f"back as pid {again.pid}")
                    return
            await asyncio.sleep(POLL)
        event.healed()
        event.notes.append(f"not back within {waited:.0f}s")

    async def pause(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        os.kill(target.pid, signal.SIGSTOP)
        event.began()
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGCONT)
            event.healed()

    async def partition(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        if not self.broker_ports:
            raise FaultSkipped("the broker's port is not known")
        table = f"taskring_chaos_{os.getpid()}_{secrets.token_hex(3)}"
        local = network.connections_of(target.pid, self.broker_ports)
        if not local:
            raise FaultSkipped(f"{target.describe()} has no connection to the broker")
        rules = network.partition_rules(local, self.broker_ports, fault.option)
        network.run(["nft", "-f", "-"], network.partition_script(table, rules, create=True))
        event.began()
        try:
            until = time.monotonic() + fault.seconds
            while (left := until - time.monotonic()) > 0:
                await asyncio.sleep(min(PARTITION_REFRESH, left))
                now_local = network.connections_of(target.pid, self.broker_ports)
                if now_local - local:
                    local |= now_local
                    rules = network.partition_rules(local, self.broker_ports, fault.option)
                    script = network.partition_script(table, rules, create=False)
                    network.run(["nft", "-f", "-"], script)
        finally:
            network.run(["nft", "-f", "-"], network.delete_table_script(table))
            event.healed()
        event.notes.append(f"connections on local ports {sorted(local)} cut {fault.option}")

    async def netem(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        if not self.broker_ports:
            raise FaultSkipped("the broker's port is not known")
        local = network.connections_of(target.pid, self.broker_ports)
        if not local:
            raise FaultSkipped(f"{target.describe()} has no connection to the broker")
        if not network.lo_root_free(network.run(["tc", "qdisc", "show", "dev", "lo"])):
            raise FaultSkipped("lo already has a queueing discipline that is not ours")
        delay, jitter = network.parse_delay(fault.option)
        try:
            for command in network.netem_commands(local, delay, jitter):
                network.run(command)
            event.began()
            await asyncio.sleep(fault.seconds)
        finally:
            with contextlib.suppress(RuntimeError, network.NetworkToolMissing):
                if network.ours_on_lo(network.run(["tc", "qdisc", "show", "dev", "lo"])):
                    network.run(network.netem_remove_command())
            if event.injected:
                event.healed()
        event.notes.append(f"{delay} ± {jitter} on local ports {sorted(local)}")

    async def failpoint(self, fault: PlannedFault, target: Target, event: FaultEvent) -> None:
        directory = self.system.failpoints()
        if directory is None:
            raise FaultSkipped(
                f"the system runs without failpoints ({self.system.data_dir}/failpoints is "
                "missing): start `taskring up` with TASKRING_FAILPOINTS=1, on a build that "
                "has them"
            )
        path = directory / target.child_name
        path.write_text(fault.option + "\n")
        event.began()
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            path.write_text("")
            event.healed()
        event.notes.append(f"{fault.option} in {path}")
