"""Fault notices for the cluster page: each fault's strike, heal or skip, as it happens."""

from __future__ import annotations

import asyncio
from typing import Any

from backend.adapters.bus.memory import MemoryHub
from backend.chaos.announce import Announcer
from backend.chaos.injectors import FaultEvent
from backend.chaos.schedule import PlannedFault
from backend.core import topics
from backend.core.chaos_notices import ChaosNotices


async def test_each_change_of_a_fault_is_published_as_it_happens() -> None:
    hub = MemoryHub()
    sender, listener = hub.attach(), hub.attach()
    await sender.connect()
    await listener.connect()
    heard: list[dict[str, Any]] = []

    async def on_notice(topic: str, message: dict[str, Any]) -> None:
        heard.append(message)

    listener.subscribe(topics.CHAOS_EVENTS, on_notice)
    announcer = Announcer(sender, lambda line: None)  # type: ignore[arg-type]
    events = [
        FaultEvent(PlannedFault(2.0, "pause", "owner", 3.0), "cache-node-2"),
        FaultEvent(PlannedFault(3.0, "netem", "leader", 2.0, "100ms/20ms"), "g1-1"),
    ]
    announcer.listen(events)
    events[0].began()
    events[1].skipped("this kernel lacks netem")
    events[0].healed()
    for _ in range(20):
        await asyncio.sleep(0)
    assert [(m["state"], m["kind"], m["target"]) for m in heard] == [
        ("injected", "pause", "cache-node-2"),
        ("skipped", "netem", "g1-1"),
        ("healed", "pause", "cache-node-2"),
    ]
    assert heard[0]["id"] == heard[2]["id"] != heard[1]["id"]
    assert heard[1]["reason"] == "this kernel lacks netem"
    assert "skipped: this kernel lacks netem" in events[1].notes
    notices = ChaosNotices()  # what the web process makes of them
    for message in heard:
        notices.observe(message, now=0.0)
    assert notices.summary(0.0)["active"] == []


def test_without_a_bus_nothing_is_published_and_the_run_goes_on() -> None:
    event = FaultEvent(PlannedFault(2.0, "kill", "leader", 4.0))
    Announcer(None, lambda line: None).listen([event])
    event.began()
    event.healed()
    assert event.injected
