"""Handing one received payload to the handlers of a bus: decode it, call each matching
handler in turn, and let nothing out (MqttBus and LeanMqttBus share this)."""

from __future__ import annotations

import logging

from backend.adapters.bus.transport import Handler
from backend.core.codec import DecodeError, unpack
from backend.core.drops import Drops, rate_limited
from backend.core.topics import matches

Route = tuple[str, Handler]  # (topic filter, handler)


def routes(handlers: list[Route], topic: str) -> tuple[Route, ...]:
    """The handlers whose filter matches `topic`, in subscription order."""
    return tuple(route for route in handlers if matches(route[0], topic))


async def dispatch(handlers: list[Route], drops: Drops, topic: str, payload: bytes) -> None:
    """A payload that is not a msgpack map, or a handler that raises, is dropped and counted."""
    await deliver(routes(handlers, topic), drops, topic, payload)


async def deliver(matched: tuple[Route, ...], drops: Drops, topic: str, payload: bytes) -> None:
    """`dispatch` to handlers already matched against `topic`."""
    try:
        decoded = unpack(payload)
    except (DecodeError, TypeError, ValueError) as exc:
        drops.drop("payload", "not a msgpack map", f"on {topic}: {exc}")
        return
    for topic_filter, handler in matched:
        try:
            await handler(topic, decoded)
        except Exception as exc:
            # One bad message must not stop the component from hearing the rest.
            why = f"handler raised {type(exc).__name__}"
            drops.drop(f"message on {topic_filter}", why, str(exc), exc)


class SessionFailures:
    """Counts a bus's session errors other than the broker's, by text, and logs them
    rate-limited: a bug in a session must not flood the log as it reconnects."""

    def __init__(self, client_id: str, log: logging.Logger) -> None:
        self.client_id = client_id
        self.log = log
        self._counts: dict[str, int] = {}

    def record(self, exc: Exception) -> str:
        """Count `exc`; return its text for `last_error`."""
        text = f"{type(exc).__name__}: {exc}"[:200]
        if len(self._counts) >= 64 and text not in self._counts:
            self._counts.clear()  # errors whose text varies must not grow this for good
        count = self._counts[text] = self._counts.get(text, 0) + 1
        if rate_limited(count):
            self.log.error(
                "bus %s failed (%d times so far); reconnecting",
                self.client_id,
                count,
                exc_info=exc,
            )
        return text
