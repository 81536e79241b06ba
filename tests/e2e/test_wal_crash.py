"""kill -9 a process that is writing the Raft log, at random moments, many times over.

The writer is a one-node Raft group on a real DurableRaftStorage: it proposes
numbered values in batches, persists each Ready (one fsync per batch), and
prints "ack N" only after the save that holds value N returned, the moment a
replica would acknowledge it. It also compacts now and then, so crashes land
during segment rotation, snapshot writes and segment deletion too. After each
kill the next writer recovers the directory and reports the highest value it
found; it must include every value acknowledged before the kill, with no gaps.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.adapters.disk import DurableRaftStorage

WRITER = r"""
import random, sys
from backend.core.raft import RaftNode, RaftOptions
from backend.adapters.disk import DurableRaftStorage

storage = DurableRaftStorage(sys.argv[1], segment_bytes=4096)
state = storage.state if not storage.state.is_empty else storage.bootstrap([1])
snapshot_value = int(state.snapshot.data) if state.snapshot is not None else 0
values = [int(e.data) for e in state.entries if e.data]
expected = list(range(snapshot_value + 1, snapshot_value + 1 + len(values)))
if values != expected:
    print(f"gap: after snapshot {snapshot_value} the log holds {values}", flush=True)
    sys.exit(3)
highest = values[-1] if values else snapshot_value
print("recovered", highest, flush=True)
node = RaftNode(1, state, random.Random(), RaftOptions())
node.campaign()
applied = snapshot_value
rng = random.Random()
while True:
    for _ in range(rng.randint(1, 40)):
        highest += 1
        node.propose(b"%d" % highest)
    while node.has_ready():
        ready = node.ready()
        storage.save(ready)
        durable = [int(e.data) for e in ready.entries if e.data]
        if durable:
            print("ack", durable[-1], flush=True)
        for entry in ready.committed_entries:
            if entry.data:
                applied = int(entry.data)
        node.advance(ready)
    if rng.random() < 0.1 and node.applied_index > node.log.snapshot.index:
        storage.save_snapshot(node.compact(node.applied_index, b"%d" % applied))
"""


def read_lines(
    process: subprocess.Popen[bytes], until: float, enough: int | None = None
) -> list[str]:
    """Lines the process printed before `until`, before it exited, or the first `enough`."""
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""
    fd = process.stdout.fileno()
    while True:
        left = until - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in complete)
        if enough is not None and len(lines) >= enough:
            break
    return lines


def test_every_acknowledged_entry_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    data = tmp_path / "replica"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = random.Random(int(os.environ.get("TASKRING_CRASH_SEED", "1")))
    acknowledged = 0
    kills = 0
    for _ in range(12):
        writer = subprocess.Popen(
            [sys.executable, str(script), str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            first = read_lines(writer, time.monotonic() + 20, enough=1)
            assert first and first[0].startswith("recovered "), first
            recovered = int(first[0].split()[1])
            assert recovered >= acknowledged, (
                f"acknowledged {acknowledged} but only {recovered} survived the kill"
            )
            lines = first[1:] + read_lines(writer, time.monotonic() + rng.uniform(0.02, 0.4))
            assert writer.poll() is None, f"the writer died on its own: {lines[-5:]}"
        finally:
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait()
        kills += 1
        lines += read_lines(writer, time.monotonic() + 5)  # acks printed before the kill
        acks = [int(line.split()[1]) for line in lines if line.startswith("ack ")]
        acknowledged = max([acknowledged, *acks])
    assert kills == 12 and acknowledged > 0

    storage = DurableRaftStorage(data, segment_bytes=4096)
    state = storage.state
    base = int(state.snapshot.data) if state.snapshot is not None else 0
    values = [int(e.data) for e in state.entries if e.data]
    assert values == list(range(base + 1, base + 1 + len(values)))
    assert (values[-1] if values else base) >= acknowledged
    storage.close()
