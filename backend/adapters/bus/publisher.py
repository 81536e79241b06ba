"""Publishing many messages without waiting for each acknowledgement in turn.

Cache nodes and replicas produce batches of messages from their pure cores;
waiting for each QoS-1 acknowledgement before the next would serialise them
on the broker's round trip. Each message goes to the bus's fire-and-forget
`send`, in order, so the broker receives them in order; how it travels is the
bus's business (a task per message on MqttBus, one write per event-loop turn
on LeanMqttBus).
"""

from __future__ import annotations

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

    def send(self, items: Iterable[Outgoing]) -> None:
        for item in items:
            try:
                self.bus.send(item.topic, item.message, item.qos)
            except BusUnavailable as exc:
                log.debug("not sent: %s", exc)  # the protocols above retry what matters
            except Exception as exc:  # e.g. a topic the broker client refuses
                log.warning("could not publish to %r: %r", item.topic, exc)

    async def flush(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what was sent to reach the broker."""
        await self.bus.flush(timeout)
