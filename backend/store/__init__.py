"""The data tier as portals see it: one interface, one implementation per storage mode."""

from __future__ import annotations

from ..bus.drops import Drops
from ..bus.transport import Bus
from .interface import Store


def make_store(mode: str, bus: Bus, portal_id: str, drops: Drops | None = None) -> Store:
    """The store for a storage mode (`ring` or `local`), wired to `bus`; it counts the
    malformed messages it drops in `drops`."""
    if mode == "ring":
        from .ring import RingStore

        return RingStore(bus, portal_id, drops=drops)
    from .local import LocalStore

    return LocalStore(bus, portal_id, drops=drops)
