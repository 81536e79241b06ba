"""What one replica's state costs in memory and start-up time, measured in a process of its own.

    python -m backend.bench.replica_memory DATA/replicas/g1-1

loads the replica's files the way `taskring replica` does (DurableRaftStorage
reads the newest snapshot and the log; ReplicaCore restores the state machine
from the snapshot; its first Ready applies the committed log tail) without
writing anything, and prints JSON: the seconds each step took, the keys and
tasks held, and the process's resident memory before and after. The
difference over the tasks is the memory per stored task, everything a replica
keeps included (the state, the snapshot bytes and the log entries the Raft log
holds). A process of its own, so nothing else in it skews the figure.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from backend.adapters.collector import collector_paused
from backend.adapters.disk import DurableRaftStorage
from backend.core.raft import RaftOptions
from backend.core.replica.core import ReplicaCore


def memory_kb(field: str, status: str | None = None) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now; VmHWM: the peak)."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    return status_field(status, field)


def status_field(status: str, field: str) -> int:
    """The number a field of a /proc/<pid>/status text starts with (kB for Vm* fields)."""
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise ValueError(f"no {field} in the process status")


def measure(directory: Path) -> dict[str, Any]:
    group, _, member = directory.name.rpartition("-")
    gc.collect()
    before = memory_kb("VmRSS")
    started = time.perf_counter()
    storage = DurableRaftStorage(directory)
    opened = time.perf_counter()
    with collector_paused():  # as the replica process restores
        core = ReplicaCore(
            group, int(member), storage.state, lambda m: f"m/{m}", random.Random(0), RaftOptions()
        )
    restored = time.perf_counter()
    ready = core.next_ready()
    if ready is not None:
        core.after_persist(ready, 0.0)  # nothing to persist: the tail is on disk already
    replayed = time.perf_counter()
    gc.collect()
    after = memory_kb("VmRSS")
    keys = core.machine.kv.keys
    snapshot = storage.state.snapshot
    tasks = sum(len(key.tasks) for key in keys.values())
    result = {
        "replica": directory.name,
        "open_s": round(opened - started, 3),
        "restore_s": round(restored - opened, 3),
        "replay_s": round(replayed - restored, 3),
        "snapshot_index": snapshot.index if snapshot else 0,
        # what the Raft log keeps in memory besides the state: the snapshot's bytes (to
        # send a follower that lags) and the entries after it
        "snapshot_bytes": len(snapshot.data) if snapshot else 0,
        "log_entries": len(storage.state.entries),
        "log_bytes": sum(len(entry.data) for entry in storage.state.entries),
        "applied_index": core.machine.applied_index,
        "keys": len(keys),
        "tasks": tasks,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "peak_kb": memory_kb("VmHWM"),
        "bytes_per_task": round((after - before) * 1024 / tasks, 1) if tasks else None,
    }
    storage.close()
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m backend.bench.replica_memory DATA/replicas/<group>-<member>")
        return 2
    print(json.dumps(measure(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
