"""Fault notices on the bus, for the cluster page: each fault as it strikes, heals or is
skipped, published on topics.CHAOS_EVENTS as the `chaos` login (backend/core/chaos_notices.py
has the message). Best effort: a run whose notices cannot be sent still runs and is
judged the same; it says once why the page will not show its faults.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable

from backend.adapters.broker_logins import CHAOS_LOGIN, load_credentials, login_url
from backend.adapters.bus import BrokerBus, open_bus
from backend.adapters.bus.transport import BusUnavailable
from backend.adapters.settings import BrokerAddress, ConfigError
from backend.chaos.injectors import FaultEvent
from backend.chaos.system import HOST, System
from backend.core import topics
from backend.core.chaos_notices import Notice

CONNECT_WAIT = 3.0  # seconds; the run does not wait longer for the page's sake
FLUSH_WAIT = 1.0


class Announcer:
    """Publishes each fault event's changes; does nothing without a bus."""

    def __init__(self, bus: BrokerBus | None, say: Callable[[str], None]) -> None:
        self.bus, self.say = bus, say
        self.run_id = secrets.token_hex(4)
        self._complained = False

    @classmethod
    async def open(cls, system: System, say: Callable[[str], None]) -> Announcer:
        """Connected to the system's broker as `chaos`, or one that publishes nothing (and
        says why) when the data directory holds no such login or no broker answers."""
        try:
            password = load_credentials(system.data_dir).get(CHAOS_LOGIN)
        except ConfigError as exc:
            password, why = None, str(exc)
        else:
            why = f"{system.data_dir} holds no broker login `{CHAOS_LOGIN}`"
        found = system.broker()
        if password is None or found is None or not found[1]:
            why = why if password is None else "no broker started by `taskring up` was found"
            say(f"the cluster page will not show the faults: {why}")
            return cls(None, say)
        try:
            address = BrokerAddress.parse(login_url(CHAOS_LOGIN, password, HOST, min(found[1])))
            bus = open_bus(address, CHAOS_LOGIN)
            await bus.__aenter__()
        except (ConfigError, OSError) as exc:
            say(f"the cluster page will not show the faults: {exc}")
            return cls(None, say)
        if not await bus.wait_connected(CONNECT_WAIT):
            say(f"the cluster page will not show the faults: the broker: {bus.last_error}")
        return cls(bus, say)

    def listen(self, events: list[FaultEvent]) -> None:
        for number, event in enumerate(events):
            event.listener = lambda e, state, reason, n=number: self.publish(e, n, state, reason)

    def publish(self, event: FaultEvent, number: int, state: str, reason: str = "") -> None:
        if self.bus is None:
            return
        fault = event.planned
        notice = Notice(
            id=f"{self.run_id}-{number}",
            state=state,
            kind=fault.kind,
            role=fault.role,
            target=event.target,
            option=fault.option,
            at=time.time(),
            reason=reason,
        )
        try:
            self.bus.send(topics.CHAOS_EVENTS, notice.to_wire())
        except BusUnavailable as exc:
            if not self._complained:
                self._complained = True
                self.say(f"the cluster page may miss faults: the broker is not reachable ({exc})")

    async def close(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.flush(FLUSH_WAIT)
            await self.bus.__aexit__(None, None, None)
