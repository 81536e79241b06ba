"""BrokerSession, the session logic both MQTT clients share: which node each session
goes to, and what a refused subscription leaves behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from backend.adapters.bus import BUS_CLIENTS, open_bus
from backend.adapters.bus.transport import BusUnavailable
from backend.adapters.settings import BrokerAddresses

NODES = BrokerAddresses.parse("mqtt://127.0.0.1:1,mqtt://127.0.0.1:2,mqtt://127.0.0.1:3")


@pytest.mark.parametrize("client", BUS_CLIENTS)
def test_each_failed_session_moves_to_the_next_node_round_robin(
    client: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[int] = []

    async def run() -> None:
        bus = open_bus(NODES, "test-bus", client=client)
        enough = asyncio.Event()

        async def session() -> None:
            tried.append(bus.address.port)
            if len(tried) == 5:
                enough.set()
                await asyncio.Event().wait()
            raise BusUnavailable(f"refused by {bus.address.port}")

        monkeypatch.setattr(bus, "_session", session)
        async with bus:
            await asyncio.wait_for(enough.wait(), 5)

    caplog.set_level(logging.WARNING)
    asyncio.run(run())
    assert tried == [1, 2, 3, 1, 2]
    moves = [r.getMessage() for r in caplog.records if "trying" in r.getMessage()]
    assert moves[0] == ("broker mqtt://127.0.0.1:1: refused by 1; trying mqtt://127.0.0.1:2")


@pytest.mark.parametrize("client", BUS_CLIENTS)
def test_a_refused_filter_no_handler_wants_is_no_longer_reported(client: str) -> None:
    bus = open_bus(NODES, "test-bus", client=client)

    async def handler(_topic: str, _message: dict[str, Any]) -> None:
        pass

    bus.subscribe("secret/#", handler)
    bus.subscribe("secret/#", handler)
    bus.refused.add("secret/#")  # as a SUBACK failure leaves it
    bus.unsubscribe("secret/#", handler)
    assert bus.refused == {"secret/#"}  # the second handler still wants it
    bus.unsubscribe("secret/#", handler)
    assert bus.refused == set()
