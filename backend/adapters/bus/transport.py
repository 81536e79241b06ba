"""The one small interface between taskring's components and the message bus.

Components publish maps to topics and register handlers for topic filters.
`LeanMqttBus` (taskring's own MQTT 3.1.1 client, the default) or `MqttBus`
(aiomqtt; pick with TASKRING_BUS_CLIENT, see `open_bus`) carries them over a
real broker; `MemoryBus` delivers them in one process for unit tests. `send`
is the fire-and-forget way to publish: no waiting, nothing reported but
BusUnavailable while disconnected.
Subscriptions survive reconnects: the transport re-subscribes and then calls
every `on_connect` hook, which is where a component catches up on what it missed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, Any]
Handler = Callable[[str, Message], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]


class BusUnavailable(ConnectionError):
    """The broker cannot be reached right now; the message was not sent."""


SUBACK_FAILURE = 0x80  # the return code of a filter the broker refused


@dataclass(frozen=True, slots=True)
class LastWill:
    """What the broker publishes for this client when its connection drops without a
    clean goodbye (a crash closes the socket at once; a lost network after 1.5 x
    keepalive). Set again on every reconnect."""

    topic: str
    message: Message
    qos: int = 1


def refused_filters(filters: Sequence[str], codes: Sequence[int]) -> list[str]:
    """The filters a SUBACK's return codes refuse; a missing code counts as refused."""
    return [f for i, f in enumerate(filters) if i >= len(codes) or codes[i] >= SUBACK_FAILURE]


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    async def publish(self, topic: str, message: Message, *, qos: int = 1) -> None:
        """Send one message; raise BusUnavailable while disconnected."""

    def send(self, topic: str, message: Message, qos: int = 0) -> None:
        """Send one message without waiting for it (fire and forget); raise BusUnavailable
        while disconnected. What cannot be sent later is dropped: the protocols above
        retry what matters."""

    async def flush(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what `send` took to reach the broker."""

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Call `handler(topic, message)` for every message matching the filter, in order."""

    async def subscribe_now(self, topic_filter: str, handler: Handler) -> None:
        """`subscribe`, and return once the broker sends matching messages (if connected)."""

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        """Stop calling `handler` for the filter; the broker stops sending it once no
        handler is left for it."""

    def on_connect(self, hook: ConnectHook) -> None:
        """Call `hook()` after every (re)connection, once subscriptions are in place."""
