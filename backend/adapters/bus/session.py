"""What both MQTT clients of the bus share: subscriptions, hooks and the reconnect loop.

`BrokerSession` keeps the handlers and `on_connect` hooks, and runs the loop
that connects, subscribes every filter (checking each SUBACK), runs the hooks,
reads until the connection is lost, then moves on to the next broker node
(`failover.BrokerRotation`) and does it again, forever. A client subclass
(LeanMqttBus, MqttBus) supplies only what is its own: how to connect and shake
hands (`_connect`), send a SUBSCRIBE or UNSUBSCRIBE, and read messages
(`_read`); its publishing and receiving paths do not pass through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Self, TypeVar

from backend.adapters.bus.dispatch import SessionFailures
from backend.adapters.bus.failover import RECONNECT_DELAYS, BrokerRotation
from backend.adapters.bus.transport import (
    BusUnavailable,
    ConnectHook,
    Handler,
    LastWill,
    refused_filters,
)
from backend.adapters.critical_tasks import critical_task
from backend.adapters.settings import BrokerAddress, BrokerAddresses
from backend.core.drops import Drops

__all__ = ["RECONNECT_DELAYS", "BrokerSession"]

L = TypeVar("L")  # what a client talks to the broker through (a connection, a client)


class BrokerSession(Generic[L]):
    """The session logic of a bus on one or more broker nodes (see the module docstring)."""

    # Exceptions that are the broker's doing (refused, unreachable, gone, silent): logged
    # once per new text. Anything else is a bug, counted and logged rate-limited.
    broker_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    filters_per_subscribe = 1

    def __init__(
        self,
        addresses: BrokerAddress | BrokerAddresses,
        client_id: str,
        *,
        keepalive: int,
        will: LastWill | None,
        drops: Drops | None,
        log: logging.Logger,
    ) -> None:
        self.addresses = BrokerAddresses.of(addresses)
        self.address = self.addresses.first  # the node connected to, or tried next
        self.client_id = client_id
        self.keepalive = keepalive
        self.will = will
        self.drops = drops or Drops(f"bus {client_id}", log)
        self.log = log
        self.handlers: list[tuple[str, Handler]] = []
        self.hooks: list[ConnectHook] = []
        self.last_error: str | None = None
        self.refused: set[str] = set()  # filters the broker refused at the last attempt
        self._failures = SessionFailures(client_id, log)  # errors other than the broker's
        self._rotation = BrokerRotation(len(self.addresses))
        self._errors_logged: dict[tuple[str, int], str] = {}  # node -> last error logged
        self._connected_to: BrokerAddress | None = None
        self._connected_at: float | None = None  # loop time the current session connected
        self._runner: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()

    # What each client supplies

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def _link(self) -> L | None:
        """What the running session talks through once subscribed; None before."""
        raise NotImplementedError

    def _attach(self, link: L | None) -> None:
        """Make `link` the session's (None: there is none any more)."""
        raise NotImplementedError

    def _connect(self) -> AbstractAsyncContextManager[L]:
        """Connect and shake hands with `self.address`; leaving it closes the connection."""
        raise NotImplementedError

    async def _request_subscription(self, link: L, filters: list[str]) -> Sequence[int]:
        """SUBSCRIBE at QoS 0 and return the SUBACK's return codes; BusUnavailable if none."""
        raise NotImplementedError

    def _request_unsubscription(self, link: L, topic_filter: str) -> None:
        """Send an UNSUBSCRIBE for `topic_filter`, now, without waiting for it."""
        raise NotImplementedError

    def _subscriptions_changed(self) -> None:
        """A handler came or went (a client caching routes forgets them)."""

    async def _read(self, link: L) -> None:
        """Hand each received message to its handlers until the connection is lost."""
        raise NotImplementedError

    # Subscribing

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.handlers.append((topic_filter, handler))
        self._subscriptions_changed()

    async def subscribe_now(self, topic_filter: str, handler: Handler) -> None:
        self.subscribe(topic_filter, handler)
        link = self._link()
        if link is None:
            return  # subscribed with the others once connected
        if await self._subscribe(link, [topic_filter]):
            raise BusUnavailable(f"the broker refused the subscription to {topic_filter}")

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        if (topic_filter, handler) not in self.handlers:
            return
        self.handlers.remove((topic_filter, handler))
        self._subscriptions_changed()
        if self._wanted(topic_filter):
            return
        self.refused.discard(topic_filter)  # no longer wanted: its refusal no longer matters
        link = self._link()
        if link is not None and self.connected:
            self._request_unsubscription(link, topic_filter)

    def _wanted(self, topic_filter: str) -> bool:
        return any(f == topic_filter for f, _ in self.handlers)

    async def _subscribe(self, link: L, filters: list[str]) -> list[str]:
        """Subscribe to `filters` and return those the broker refused (e.g. by its ACL),
        each logged; `refused` keeps the ones refused at the last attempt."""
        codes = await self._request_subscription(link, filters)
        refused = refused_filters(filters, codes)
        for topic_filter in refused:
            self.log.error(
                "broker %s refused the subscription to %s", self.address.redacted(), topic_filter
            )
        self.refused.update(refused)
        self.refused.difference_update(set(filters) - set(refused))
        return refused

    async def _subscribe_all(self, link: L) -> None:
        # Filters added while this runs (subscribe_now sees no link yet) are taken too.
        done: set[str] = set()
        while pending := [f for f in dict.fromkeys(f for f, _ in self.handlers) if f not in done]:
            for start in range(0, len(pending), self.filters_per_subscribe):
                chunk = pending[start : start + self.filters_per_subscribe]
                await self._subscribe(link, chunk)
                done.update(chunk)

    def on_connect(self, hook: ConnectHook) -> None:
        self.hooks.append(hook)

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        return self.connected

    # The connection loop

    async def __aenter__(self) -> Self:
        # Without this loop the component is deaf: should it ever end, the process exits.
        self._runner = critical_task(self._run(), f"bus {self.client_id}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _run(self) -> None:
        rotation = self._rotation
        loop = asyncio.get_running_loop()
        while True:
            self.address = self.addresses[rotation.current]
            self._connected_at = None
            try:
                await self._session()
                rotation.ended_cleanly()
            except self.broker_errors as exc:
                self._broker_failed(str(exc) or type(exc).__name__)
            except Exception as exc:
                # A bug here must not leave the component deaf for good: reconnect.
                self.last_error = self._failures.record(exc)
            finally:
                self._attach(None)
                self._connected_event.clear()
            since = self._connected_at
            await asyncio.sleep(rotation.failed(None if since is None else loop.time() - since))

    def _broker_failed(self, text: str) -> None:
        """Log a broker's failure the first time it says this (per node), and keep it."""
        node = self.address.node
        if self._errors_logged.get(node) != text:
            following = self.addresses[(self._rotation.current + 1) % len(self.addresses)]
            then = "reconnecting" if following is self.address else f"trying {following.redacted()}"
            self.log.warning("broker %s: %s; %s", self.address.redacted(), text, then)
            self._errors_logged[node] = text
        self.last_error = text

    async def _session(self) -> None:
        async with self._connect() as link:
            await self._subscribe_all(link)
            self._attach(link)
            self._connected_event.set()
            self._connected_at = asyncio.get_running_loop().time()
            self._say_connected()
            for hook in self.hooks:
                await hook()
            await self._read(link)

    def _say_connected(self) -> None:
        address, before = self.address, self._connected_to
        if len(self.addresses) > 1 and (before is None or before.node != address.node):
            self.log.info("bus %s: connected to broker %s", self.client_id, address.redacted())
        elif self.last_error is not None:
            self.log.info("broker %s: connected again", address.redacted())
        self._connected_to = address
        self.last_error = None
        self._errors_logged.clear()
