"""The durable tier's disk: a write-ahead log and snapshot files for a Raft node.

`DurableRaftStorage` is what a replica uses; `WriteAheadLog` and
`SnapshotStore` are its parts; the pure replay logic the simulator shares is
backend/core/storage_records.py. wal.py says why this is a hand-written log and not an
embedded database.
"""

from backend.adapters.disk.durable_io import SyncFailed, is_disk_full
from backend.adapters.disk.raft_storage import DurableRaftStorage
from backend.adapters.disk.snapshot import SnapshotStore
from backend.adapters.disk.wal import WriteAheadLog
from backend.core.storage_errors import StorageCorruptError
from backend.core.storage_records import records_for_ready, replay

__all__ = [
    "DurableRaftStorage",
    "SnapshotStore",
    "StorageCorruptError",
    "SyncFailed",
    "WriteAheadLog",
    "is_disk_full",
    "records_for_ready",
    "replay",
]
