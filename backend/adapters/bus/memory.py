"""An in-process bus with the same interface as MqttBus, for unit tests.

Like MqttBus it drops (and counts, in `drops`) a payload that is not a msgpack
map; unlike it, it lets a handler's exception through, so a test sees it.
"""

from __future__ import annotations

import asyncio
import contextlib

from backend.adapters.bus.transport import BusUnavailable, ConnectHook, Handler, Message
from backend.core.codec import DecodeError, pack, unpack
from backend.core.drops import Drops
from backend.core.topics import matches


class MemoryHub:
    """The shared medium: every MemoryBus attached to one hub sees the others' messages."""

    def __init__(self) -> None:
        self.buses: list[MemoryBus] = []

    def attach(self) -> MemoryBus:
        bus = MemoryBus(self)
        self.buses.append(bus)
        return bus

    async def deliver(self, topic: str, payload: bytes) -> None:
        """Every attached bus receives `payload` (raw bytes: tests may send any)."""
        for bus in list(self.buses):
            await bus.receive(topic, payload)


class MemoryBus:
    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.handlers: list[tuple[str, Handler]] = []
        self.hooks: list[ConnectHook] = []
        self.drops = Drops("memory bus")
        self.refused: set[str] = set()  # a memory bus refuses no subscription
        self._connected = False
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True
        for hook in self.hooks:
            await hook()

    def disconnect(self) -> None:
        self._connected = False

    async def publish(self, topic: str, message: Message, *, qos: int = 1) -> None:
        if not self._connected:
            raise BusUnavailable("memory bus is disconnected")
        await self.hub.deliver(topic, pack(message))

    def send(self, topic: str, message: Message, qos: int = 0) -> None:
        if not self._connected:
            raise BusUnavailable("memory bus is disconnected")
        # Delivery runs the receivers' handlers: not inside the sender's call.
        task = asyncio.create_task(self._send(topic, message, qos))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, topic: str, message: Message, qos: int) -> None:
        with contextlib.suppress(BusUnavailable):  # disconnected since: dropped, as over MQTT
            await self.publish(topic, message, qos=qos)

    async def flush(self, timeout: float) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.handlers.append((topic_filter, handler))

    async def subscribe_now(self, topic_filter: str, handler: Handler) -> None:
        self.subscribe(topic_filter, handler)

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        if (topic_filter, handler) in self.handlers:
            self.handlers.remove((topic_filter, handler))

    def on_connect(self, hook: ConnectHook) -> None:
        self.hooks.append(hook)

    async def receive(self, topic: str, payload: bytes) -> None:
        if not self._connected:
            return
        try:
            unpack(payload)
        except DecodeError as exc:
            self.drops.drop("payload", "not a msgpack map", f"on {topic}: {exc}")
            return
        for topic_filter, handler in list(self.handlers):
            if matches(topic_filter, topic):
                await handler(topic, unpack(payload))  # a copy each, as over MQTT
