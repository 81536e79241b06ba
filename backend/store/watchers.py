"""Who watches which client: the sinks a store calls, in apply order, for each change."""

from __future__ import annotations

from ..model.records import Event
from .interface import EventSink, Unwatch


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
            for sink in list(self.sinks.get(event.cid, ())):
                sink(event)
