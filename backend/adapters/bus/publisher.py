"""Publishing many messages without waiting for each acknowledgement in turn.

Cache nodes and replicas produce batches of messages from their pure cores;
waiting for each QoS-1 acknowledgement before the next would serialise them
on the broker's round trip. Each publish is its own task; tasks start in
creation order and hand the message to the MQTT client before their first
pause, so the broker still receives them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from backend.adapters.bus.transport import Bus, BusUnavailable

log = logging.getLogger(__name__)


class Outgoing(Protocol):
    """What a core asks to publish; read-only, so frozen dataclasses fit."""

    @property
    def topic(self) -> str: ...
    @property
    def message(self) -> dict[str, Any]: ...
    @property
    def qos(self) -> int: ...


class Publisher:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, items: Iterable[Outgoing]) -> None:
        for item in items:
            task = asyncio.create_task(self._publish(item))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def flush(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what was sent to reach the broker."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    async def _publish(self, item: Outgoing) -> None:
        try:
            await self.bus.publish(item.topic, item.message, qos=item.qos)
        except BusUnavailable as exc:
            log.debug("not sent: %s", exc)  # the protocols above retry what matters
        except Exception as exc:  # e.g. a topic the broker client refuses
            log.warning("could not publish to %r: %r", item.topic, exc)
