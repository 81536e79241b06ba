"""The data tier as portals see it: one interface, one implementation per storage mode."""

from __future__ import annotations

from backend.adapters.bus.transport import Bus
from backend.adapters.store.interface import Store
from backend.core.drops import Drops


def make_store(mode: str, bus: Bus, portal_id: str, drops: Drops | None = None) -> Store:
    """The store for a storage mode (`ring` or `local`), wired to `bus`; it counts the
    malformed messages it drops in `drops`."""
    if mode == "ring":
        from backend.adapters.store.ring_store import RingStore

        return RingStore(bus, portal_id, drops=drops)
    from backend.adapters.store.local_store import LocalStore

    return LocalStore(bus, portal_id, drops=drops)
