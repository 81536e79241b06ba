"""The cluster page shows the faults `taskring chaos` injects, the moment they strike and
until they heal, through the real path: a notice published on the broker's chaos topic
(as `taskring chaos` publishes it, backend/chaos/announce.py), the web process keeping it
and serving it in /api/cluster, and the page polling that.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from playwright.sync_api import expect

from backend.adapters.bus import open_bus
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from backend.core.chaos_notices import Notice
from tests.browser.conftest import Deployment, Pages, screenshot

CONNECT_WAIT = 10.0


def publish(broker: str, notice: Notice) -> None:
    """Publish one notice on the chaos topic, from a thread of its own: Playwright's sync
    API keeps an event loop running in this one."""
    failure: list[BaseException] = []

    async def send() -> None:
        bus = open_bus(BrokerAddress.parse(broker), f"chaos-test-{time.monotonic_ns()}")
        async with bus:
            assert await bus.wait_connected(CONNECT_WAIT), bus.last_error
            await bus.publish(topics.CHAOS_EVENTS, notice.to_wire(), qos=1)

    def run() -> None:
        try:
            asyncio.run(send())
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(CONNECT_WAIT + 5)
    assert not failure, failure


def notice(state: str, **more: Any) -> Notice:
    fields = {"id": f"browser-{state}", "kind": "pause", "role": "owner",
              "target": "cache-node-2", "option": "", "reason": ""}  # fmt: skip
    return Notice(state=state, at=time.time(), **{**fields, **more})


def test_a_fault_shows_when_it_strikes_and_clears_when_it_heals(
    shared: Deployment, pages: Pages
) -> None:
    page = pages.open(shared.url + "/cluster")
    expect(page.get_by_test_id("cluster-status")).to_contain_text("Updated")
    expect(page.get_by_test_id("active-faults")).to_have_count(0)

    struck = notice("injected", id="browser-1")
    publish(shared.stack.broker, struck)
    banner = page.get_by_test_id("active-faults")
    expect(banner).to_contain_text("pause cache-node-2", timeout=5000)
    expect(banner).to_contain_text("since")
    screenshot(page, "cluster-fault-active")

    publish(shared.stack.broker, notice("healed", id="browser-1"))
    expect(banner).to_have_count(0, timeout=5000)
    entry = page.locator("[data-testid='faults'] li[data-fault='browser-1']")
    expect(entry).to_have_attribute("data-state", "healed")
    expect(entry).to_contain_text("healed")
    screenshot(page, "cluster-fault-healed")
