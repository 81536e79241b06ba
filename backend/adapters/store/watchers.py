"""Who watches which client: the sinks a store calls, in apply order, for each change.

A `token_rotated` event is a revocation, delivered in order with the others:
every watch of that client was granted to a token that no longer works, so
each sink gets the event (a portal connection unbinds itself and closes,
never writing it to its client) and is dropped before any later event is
delivered. A watch opened with the new token just before the event arrives
ends too; its client watches again.
"""

from __future__ import annotations

from backend.adapters.store.interface import EventSink, Unwatch
from backend.core.model.records import TOKEN_ROTATED, Event


class Watchers:
    def __init__(self) -> None:
        self.sinks: dict[int, list[EventSink]] = {}

    def add(self, cid: int, sink: EventSink) -> Unwatch:
        self.sinks.setdefault(cid, []).append(sink)

        def unwatch() -> None:
            sinks = self.sinks.get(cid, [])
            if sink in sinks:
                sinks.remove(sink)
            if not sinks:
                self.sinks.pop(cid, None)

        return unwatch

    def deliver(self, events: list[Event]) -> None:
        for event in events:
            sinks = list(self.sinks.get(event.cid, ()))
            if event.kind == TOKEN_ROTATED:
                self.sinks.pop(event.cid, None)
            for sink in sinks:
                sink(event)
