"""Holding off Python's cyclic garbage collector around bulk loads.

A replica's snapshot makes millions of lists and maps, none of them garbage, and
every automatic collection walks all those made so far: with a million tasks
that was three quarters of a restore's time. The pure cores make those objects;
whoever drives them decides when the collector rests."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside; the collector as it was afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
