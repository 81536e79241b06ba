"""The durable tier's disk: a write-ahead log and snapshot files for a Raft node.

`DurableRaftStorage` is what a replica uses; `WriteAheadLog` and
`SnapshotStore` are its parts; `records` holds the pure replay logic the
simulator shares. wal.py says why this is a hand-written log and not an
embedded database.
"""

from .durable import DurableRaftStorage
from .errors import StorageCorruptError
from .records import records_for_ready, replay
from .snapshot import SnapshotStore
from .wal import WriteAheadLog

__all__ = [
    "DurableRaftStorage",
    "SnapshotStore",
    "StorageCorruptError",
    "WriteAheadLog",
    "records_for_ready",
    "replay",
]
