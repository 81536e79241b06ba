"""The MQTT transport: aiomqtt underneath, reconnecting forever, msgpack on the wire.

Use it as `async with MqttBus(address, client_id) as bus:`, `address` one
broker or the list of a clustered broker's nodes. It keeps one connection,
re-subscribes every filter after a reconnect (to the next node, if any) and
then runs the `on_connect` hooks (all of this is BrokerSession's, shared with
LeanMqttBus: backend/adapters/bus/session.py). Handlers run one at a time in arrival order, so a
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
from typing import Any, cast

import aiomqtt
from aiomqtt.client import ProtocolVersion

from backend.adapters.bus.dispatch import dispatch
from backend.adapters.bus.session import RECONNECT_DELAYS, BrokerSession
from backend.adapters.bus.transport import SUBACK_FAILURE, BusUnavailable, LastWill, Message
from backend.adapters.settings import BrokerAddress, BrokerAddresses
from backend.core.codec import pack
from backend.core.drops import Drops

log = logging.getLogger(__name__)

# Without TCP_NODELAY a QoS-1 round trip stalls on Nagle's algorithm (~88 ms).
_NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
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


# LastWill lives in transport; importable from here too. RECONNECT_DELAYS: failover's.
__all__ = ["RECONNECT_DELAYS", "LastWill", "MqttBus"]


class MqttBus(BrokerSession[aiomqtt.Client]):
    broker_errors = (aiomqtt.MqttError, BusUnavailable)

    def __init__(
        self,
        address: BrokerAddress | BrokerAddresses,
        client_id: str,
        *,
        keepalive: int = 10,
        will: LastWill | None = None,
        drops: Drops | None = None,
    ) -> None:
        super().__init__(address, client_id, keepalive=keepalive, will=will, drops=drops, log=log)
        self._client: aiomqtt.Client | None = None
        # Set while no connection attempt is in flight: the only safe moment to cancel aiomqtt.
        self._settled = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()  # what `send` has not yet handed over

    @property
    def connected(self) -> bool:
        return self._client is not None

    # Subscribing (the bookkeeping is BrokerSession's)

    def _link(self) -> aiomqtt.Client | None:
        return self._client

    def _attach(self, link: aiomqtt.Client | None) -> None:
        self._client = link
        if link is None:
            self._settled.set()  # the session is over: no attempt in flight

    async def _request_subscription(self, link: aiomqtt.Client, filters: list[str]) -> list[int]:
        codes: list[int] = []
        for topic_filter in filters:  # one SUBSCRIBE each (filters_per_subscribe)
            try:
                # QoS 0: every message is published at QoS 0, so a higher grant buys nothing.
                granted = await link.subscribe(topic_filter, qos=0)
            except aiomqtt.MqttError as exc:
                raise BusUnavailable(f"subscribe to {topic_filter} failed: {exc}") from exc
            values = [int(getattr(code, "value", code)) for code in cast(list[Any], granted)]
            codes.append(values[0] if values else SUBACK_FAILURE)
        return codes

    def _request_unsubscription(self, link: aiomqtt.Client, topic_filter: str) -> None:
        task = asyncio.create_task(self._unsubscribe(topic_filter))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unsubscribe(self, topic_filter: str) -> None:
        client = self._client
        # Checked again here: a subscribe_now for the same filter since the call above has
        # already gone out, and an unsubscribe sent after it would undo it.
        if client is None or self._wanted(topic_filter):
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(topic_filter)

    # Publishing

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

    # The connection (the loop around it is BrokerSession's)

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

    def _connect(self) -> aiomqtt.Client:
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
        return client

    async def _read(self, link: aiomqtt.Client) -> None:
        self._settled.set()  # connected, subscribed, hooks run: safe to cancel from here
        async for message in link.messages:
            await self._dispatch(str(message.topic), message.payload)

    async def _dispatch(self, topic: str, payload: Any) -> None:
        """Hand one message to every matching handler; nothing raised gets out."""
        if not isinstance(payload, bytes):
            try:
                payload = bytes(payload)
            except (TypeError, ValueError) as exc:
                self.drops.drop("payload", "not a msgpack map", f"on {topic}: {exc}")
                return
        await dispatch(self.handlers, self.drops, topic, payload)
