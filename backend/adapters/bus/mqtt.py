"""The MQTT transport: aiomqtt underneath, reconnecting forever, msgpack on the wire.

Use it as `async with MqttBus(address, client_id) as bus:`. It keeps one
connection, re-subscribes every filter after a reconnect and then runs the
`on_connect` hooks. Handlers run one at a time in arrival order, so a
component sees messages from one publisher in the order they were sent; a
handler or hook may publish but must not wait for another message, since
messages are read only between handlers. An optional last will (`LastWill`)
rides on every connect.

Nothing a peer sends can stop it: a payload that is not a msgpack map, or a
handler that raises on one, is dropped and counted (`drops`, logged
rate-limited), and any error of a session, not only the broker's, ends in a
reconnect after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Sequence
from typing import Any

import aiomqtt
from aiomqtt.client import ProtocolVersion

from backend.adapters.bus.dispatch import SessionFailures, dispatch
from backend.adapters.bus.transport import (
    BusUnavailable,
    ConnectHook,
    Handler,
    LastWill,
    Message,
    refused_filters,
)
from backend.adapters.critical_tasks import critical_task
from backend.adapters.settings import BrokerAddress
from backend.core.codec import pack
from backend.core.drops import Drops

log = logging.getLogger(__name__)

# Without TCP_NODELAY a QoS-1 round trip stalls on Nagle's algorithm (~88 ms).
_NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
# aiomqtt warns once more than 10 QoS-1 publishes await their PUBACK; components publish
# many at once on purpose (one task per message), so warn only at a real backlog.
PENDING_PUBLISH_WARNING = 1000
SHUTDOWN_WAIT = 0.5
SETTLE_WAIT = 3.0


class _DropCancelledSubscribeNoise(logging.Filter):
    """aiomqtt logs a traceback when a SUBACK arrives for a subscribe we cancelled on shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected message ID")


_paho_log = logging.getLogger("backend.adapters.bus.paho")
_paho_log.addFilter(_DropCancelledSubscribeNoise())


__all__ = ["LastWill", "MqttBus"]  # LastWill lives in transport; importable from here too


class MqttBus:
    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        keepalive: int = 10,
        will: LastWill | None = None,
        drops: Drops | None = None,
    ) -> None:
        self.address = address
        self.drops = drops or Drops(f"bus {client_id}", log)
        self._failures = SessionFailures(client_id, log)  # errors other than the broker's
        self.client_id = client_id
        self.keepalive = keepalive
        self.will = will
        self.handlers: list[tuple[str, Handler]] = []
        self.hooks: list[ConnectHook] = []
        self.last_error: str | None = None
        self._client: aiomqtt.Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()
        # Set while no connection attempt is in flight: the only safe moment to cancel aiomqtt.
        self._settled = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()  # what `send` has not yet handed over

    @property
    def connected(self) -> bool:
        return self._client is not None

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.handlers.append((topic_filter, handler))

    async def subscribe_now(self, topic_filter: str, handler: Handler) -> None:
        self.subscribe(topic_filter, handler)
        client = self._client
        if client is None:
            return  # subscribed with the others once connected
        try:
            codes = await client.subscribe(topic_filter, qos=0)
        except aiomqtt.MqttError as exc:
            raise BusUnavailable(f"subscribe to {topic_filter} failed: {exc}") from exc
        if refused := self._refused([topic_filter], codes):
            raise BusUnavailable(f"the broker refused the subscription to {refused[0]}")

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        if (topic_filter, handler) not in self.handlers:
            return
        self.handlers.remove((topic_filter, handler))
        if self._client is not None and not self._wanted(topic_filter):
            task = asyncio.create_task(self._unsubscribe(topic_filter))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _wanted(self, topic_filter: str) -> bool:
        return any(f == topic_filter for f, _ in self.handlers)

    async def _unsubscribe(self, topic_filter: str) -> None:
        client = self._client
        # Checked again here: a subscribe_now for the same filter since the call above has
        # already gone out, and an unsubscribe sent after it would undo it.
        if client is None or self._wanted(topic_filter):
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(topic_filter)

    def on_connect(self, hook: ConnectHook) -> None:
        self.hooks.append(hook)

    def send(self, topic: str, message: Message, qos: int = 0) -> None:
        if self._client is None:
            raise BusUnavailable(f"not connected to the broker at {self.address.redacted()}")
        # aiomqtt takes a message only in a coroutine: one task each, started in order.
        task = asyncio.create_task(self._send(topic, message, qos))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, topic: str, message: Message, qos: int) -> None:
        try:
            await self.publish(topic, message, qos=qos)
        except BusUnavailable as exc:
            log.debug("not sent: %s", exc)  # the protocols above retry what matters
        except Exception as exc:  # e.g. a topic the broker client refuses
            log.warning("could not publish to %r: %r", topic, exc)

    async def flush(self, timeout: float) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)

    async def publish(self, topic: str, message: Message, *, qos: int = 1) -> None:
        client = self._client
        if client is None:
            raise BusUnavailable(f"not connected to the broker at {self.address.redacted()}")
        try:
            await client.publish(topic, pack(message), qos=qos)
        except aiomqtt.MqttError as exc:
            raise BusUnavailable(f"publish to {topic} failed: {exc}") from exc

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        return self.connected

    async def __aenter__(self) -> MqttBus:
        # Without this loop the component is deaf: should it ever end, the process exits.
        self._runner = critical_task(self._run(), f"bus {self.client_id}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        runner = self._runner
        if runner is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), SETTLE_WAIT)
            # aiomqtt waits without limit for the broker's goodbye when cancelled mid-connect
            # or mid-subscribe; cancelling again interrupts that wait.
            for _ in range(5):
                runner.cancel()
                done, _ = await asyncio.wait({runner}, timeout=SHUTDOWN_WAIT)
                if done:
                    break
        # paho's client sits in reference cycles; collect it while the event loop still runs,
        # or its __del__ touches a closed loop at exit and prints a traceback.
        gc.collect()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except aiomqtt.MqttError as exc:
                if self.last_error != str(exc):
                    log.warning("broker %s: %s; reconnecting", self.address.redacted(), exc)
                self.last_error = str(exc)
            except Exception as exc:
                # A bug here must not leave the component deaf for good: reconnect.
                self.last_error = self._failures.record(exc)
            finally:
                self._client = None
                self._connected_event.clear()
                self._settled.set()
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _session(self) -> None:
        self._settled.clear()
        will = self.will
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            protocol=ProtocolVersion.V311,
            clean_session=True,
            keepalive=self.keepalive,
            will=None if will is None else aiomqtt.Will(will.topic, pack(will.message), will.qos),
            tls_context=self.address.tls_context(),
            socket_options=_NODELAY,
            timeout=5,
            logger=_paho_log,
        )
        client.pending_calls_threshold = PENDING_PUBLISH_WARNING
        async with client:
            await self._subscribe_all(client)
            self._client = client
            self._connected_event.set()
            if self.last_error is not None:
                log.info("broker %s: connected again", self.address.redacted())
            self.last_error = None
            for hook in self.hooks:
                await hook()
            self._settled.set()
            async for message in client.messages:
                await self._dispatch(str(message.topic), message.payload)

    async def _subscribe_all(self, client: aiomqtt.Client) -> None:
        # Filters added while this runs (subscribe_now sees no client yet) are taken too.
        done: set[str] = set()
        while pending := [f for f in dict.fromkeys(f for f, _ in self.handlers) if f not in done]:
            for topic_filter in pending:
                # QoS 0: every message is published at QoS 0, so a higher grant buys nothing.
                codes = await client.subscribe(topic_filter, qos=0)
                self._refused([topic_filter], codes)
                done.add(topic_filter)

    def _refused(self, filters: list[str], codes: Sequence[Any]) -> list[str]:
        """The filters the broker refused (e.g. by its ACL), each logged."""
        refused = refused_filters(filters, [int(getattr(code, "value", code)) for code in codes])
        for topic_filter in refused:
            log.error(
                "broker %s refused the subscription to %s", self.address.redacted(), topic_filter
            )
        return refused

    async def _dispatch(self, topic: str, payload: Any) -> None:
        """Hand one message to every matching handler; nothing raised gets out."""
        if not isinstance(payload, bytes):
            try:
                payload = bytes(payload)
            except (TypeError, ValueError) as exc:
                self.drops.drop("payload", "not a msgpack map", f"on {topic}: {exc}")
                return
        await dispatch(self.handlers, self.drops, topic, payload)
