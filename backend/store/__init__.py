"""The data tier as portals see it: one interface, one implementation per storage mode."""

from __future__ import annotations

from ..bus.transport import Bus
from .interface import Store


def make_store(mode: str, bus: Bus, portal_id: str) -> Store:
    """The store for a storage mode (`ring` or `local`), wired to `bus`."""
    if mode == "ring":
        from .ring import RingStore

        return RingStore(bus, portal_id)
    from .local import LocalStore

    return LocalStore(bus, portal_id)
