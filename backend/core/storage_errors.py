"""The one failure storage reports: what is on disk cannot be trusted."""

from __future__ import annotations


class StorageCorruptError(RuntimeError):
    """Data that was once acknowledged as durable is damaged or missing.

    A torn tail (a write cut short by a crash, never acknowledged) is not
    corruption: recovery drops it silently. This error means something
    fsynced is gone, and the replica must not serve until an operator acts
    (typically: wipe the data directory and re-join the group as a new member).
    """
