"""The write-ahead log, snapshot files and the Raft storage built on them, on a real disk.

Torn tails are made the way a crash makes them: by cutting the file at every
byte of the last record. Bit flips are made by flipping bits. The order of
fsync, rename and directory fsync is observed by wrapping the os calls.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from backend.adapters.disk import (
    DurableRaftStorage,
    SnapshotStore,
    StorageCorruptError,
    WriteAheadLog,
)
from backend.adapters.disk.snapshot import encode_snapshot
from backend.adapters.disk.wal import HEADER, encode_record
from backend.core.raft import (
    Config,
    Entry,
    HardState,
    InstallSnapshot,
    RaftNode,
    RaftOptions,
    Ready,
    Snapshot,
)
from backend.core.storage_records import (
    encode_entry,
    encode_hard_state,
    encode_restore,
    replay,
)

PAYLOADS = [f"record {n}".encode() * (n + 1) for n in range(6)]


def write_log(directory: Path, payloads: list[bytes], segment_bytes: int = 1 << 20) -> None:
    wal, _ = WriteAheadLog.open(directory, segment_bytes)
    wal.append(payloads)
    wal.sync()
    wal.close()


def reopen(directory: Path) -> tuple[WriteAheadLog, list[bytes]]:
    return WriteAheadLog.open(directory)


def only_segment(directory: Path) -> Path:
    [segment] = sorted(directory.glob("*.wal"))
    return segment


# ---- records and recovery ----------------------------------------------------------


def test_records_come_back_in_order_after_reopening(tmp_path: Path) -> None:
    write_log(tmp_path, PAYLOADS[:3])
    wal, _records = reopen(tmp_path)
    wal.append(PAYLOADS[3:])
    wal.sync()
    wal.close()
    assert reopen(tmp_path)[1] == PAYLOADS


def test_a_torn_last_record_is_dropped_at_every_cut_point(tmp_path: Path) -> None:
    """A crash can cut the last write anywhere; recovery keeps exactly the whole records."""
    write_log(tmp_path / "original", PAYLOADS)
    data = only_segment(tmp_path / "original").read_bytes()
    last_start = len(data) - len(encode_record(PAYLOADS[-1]))
    for cut in range(last_start, len(data)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / only_segment(tmp_path / "original").name).write_bytes(data[:cut])
        wal, records = reopen(directory)
        assert records == PAYLOADS[:-1], f"cut at byte {cut}"
        assert wal.truncated_bytes == cut - last_start
        assert only_segment(directory).stat().st_size == last_start
        wal.append([b"after the crash"])  # the log goes on where the good part ended
        wal.sync()
        wal.close()
        assert reopen(directory)[1] == [*PAYLOADS[:-1], b"after the crash"]


def test_a_zero_filled_tail_is_dropped(tmp_path: Path) -> None:
    """File systems may extend a file with zeros the data never reached."""
    write_log(tmp_path, PAYLOADS)
    with open(only_segment(tmp_path), "ab") as segment:
        segment.write(bytes(4096))
    wal, records = reopen(tmp_path)
    assert records == PAYLOADS and wal.truncated_bytes == 4096


def test_every_bit_flip_in_the_last_segment_cuts_the_log_at_the_damaged_record(
    tmp_path: Path,
) -> None:
    write_log(tmp_path / "original", PAYLOADS)
    name = only_segment(tmp_path / "original").name
    data = only_segment(tmp_path / "original").read_bytes()
    starts = [0]
    for payload in PAYLOADS:
        starts.append(starts[-1] + HEADER.size + len(payload))
    rng = random.Random(7)
    for position in sorted(rng.sample(range(len(data)), 60)):
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        directory = tmp_path / f"flip-{position}"
        directory.mkdir()
        (directory / name).write_bytes(bytes(damaged))
        hit = max(n for n, start in enumerate(starts[:-1]) if start <= position)
        _, records = reopen(directory)
        assert records == PAYLOADS[:hit], f"flip at byte {position}"


def test_damage_in_a_sealed_segment_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(PAYLOADS[:3])
    wal.rotate(label=3)
    wal.append(PAYLOADS[3:])
    wal.sync()
    wal.close()
    sealed = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(sealed.read_bytes())
    data[HEADER.size + 2] ^= 0x10
    sealed.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptError, match="damaged at byte 0"):
        reopen(tmp_path)


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    for label in (1, 2, 3):
        wal.append([PAYLOADS[label]])
        wal.rotate(label=label)
    wal.close()
    sorted(tmp_path.glob("*.wal"))[1].unlink()
    with pytest.raises(StorageCorruptError, match="missing"):
        reopen(tmp_path)


def test_segments_rotate_and_old_ones_are_released_oldest_first(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes=64)
    labels = []
    for n, payload in enumerate(PAYLOADS):
        wal.append([payload])
        if wal.should_rotate():
            wal.rotate(label=n, first_records=[b"header %d" % n])
            labels.append(n)
    wal.sync()
    assert len(wal.segments) == len(labels) + 1
    assert wal.release_before(labels[1]) == 2  # the first two are wholly before label[1]
    assert wal.release_before(labels[1]) == 0
    wal.close()
    records = reopen(tmp_path)[1]
    assert records[0] == b"header %d" % labels[1]
    assert PAYLOADS[-1] in records and PAYLOADS[0] not in records


def test_a_segment_a_crash_interrupted_at_creation_is_ignored(tmp_path: Path) -> None:
    write_log(tmp_path, PAYLOADS[:2])
    (tmp_path / f"{1:016x}-{5:016x}.wal.tmp").write_bytes(b"half a segm")
    assert reopen(tmp_path)[1] == PAYLOADS[:2]
    assert not list(tmp_path.glob("*.tmp"))


def test_group_commit_makes_many_records_durable_with_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    syncs: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    wal.append([b"entry %d" % n for n in range(500)])
    wal.sync()
    assert len(syncs) == 1
    wal.close()
    assert len(reopen(tmp_path)[1]) == 500


# ---- snapshots ---------------------------------------------------------------------


def snapshot_at(index: int, term: int = 1) -> Snapshot:
    return Snapshot(index, term, Config.of([1, 2, 3]), b"state %d" % index)


def test_a_snapshot_is_written_to_a_temporary_file_fsynced_renamed_and_the_dir_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(f"fsync {Path(target).name}")
        real_fsync(fd)

    def replace(source: str | Path, target: str | Path) -> None:
        calls.append(f"rename {Path(source).name} -> {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = store.save(snapshot_at(9))
    temporary = f"{path.name}.{os.getpid()}.tmp"
    assert calls == [
        f"fsync {temporary}",
        f"rename {temporary} -> {path.name}",
        f"fsync {tmp_path.name}",
    ]


def test_the_newest_intact_snapshot_is_loaded_and_damaged_ones_are_skipped(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    assert store.load_newest() is None
    for index in (5, 9, 12):
        store.save(snapshot_at(index))
    assert len(list(tmp_path.glob("*.snap"))) == 2  # the oldest was pruned
    assert store.load_newest() == snapshot_at(12)
    newest = max(tmp_path.glob("*.snap"))
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert store.load_newest() == snapshot_at(9)
    (tmp_path / f"{99:016x}-{1:016x}.snap").write_bytes(encode_snapshot(snapshot_at(98)))
    assert store.load_newest() == snapshot_at(9)  # a file whose name and content disagree


# ---- replay: what the records mean ---------------------------------------------------


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(start + n, term, b"%d" % (start + n)) for n, term in enumerate(terms)]


def test_replay_applies_truncation_and_the_latest_hard_state() -> None:
    records = [encode_entry(e) for e in entries(1, 1, 1, 1)]
    records.append(encode_hard_state(HardState(1, 2, 2)))
    records += [encode_entry(e) for e in entries(2, 2, start=3)]  # a new leader overwrote 3, 4
    records.append(encode_hard_state(HardState(2, None, 3)))
    state = replay(None, records)
    assert [(e.index, e.term) for e in state.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert state.hard_state == HardState(2, None, 3)


def test_replay_after_a_restore_keeps_only_the_snapshot_and_what_followed() -> None:
    snapshot = snapshot_at(10, term=3)
    records = [encode_entry(e) for e in entries(1, 1, 2)]
    records += [encode_restore(snapshot), *map(encode_entry, entries(3, start=11))]
    state = replay(snapshot, records)
    assert state.snapshot == snapshot
    assert [e.index for e in state.entries] == [11]


def test_replay_drops_stale_entries_when_the_restore_record_was_lost() -> None:
    """The snapshot file reached the disk but its restore record did not: the old entries at
    and after the snapshot belong to another history."""
    snapshot = snapshot_at(3, term=3)
    state = replay(snapshot, [encode_entry(e) for e in entries(1, 1, 2, 2, 2)])
    assert state.entries == ()


def test_replay_keeps_entries_after_a_snapshot_of_its_own_prefix() -> None:
    snapshot = snapshot_at(3, term=2)
    state = replay(snapshot, [encode_entry(e) for e in entries(1, 1, 2, 2, 2)])
    assert [e.index for e in state.entries] == [4, 5]


@pytest.mark.parametrize(
    ("snapshot", "records", "complaint"),
    [
        (None, [encode_entry(Entry(3, 1, b""))], "gap"),
        (None, [encode_restore(snapshot_at(5))], "newest readable snapshot is 0"),
        (None, [encode_hard_state(HardState(1, None, 4))], "past the last entry"),
        (None, [b"\xc1"], "log record 0"),
        (None, [encode_record(b"x")], "log record 0"),
    ],
)
def test_replay_refuses_records_that_cannot_be_trusted(
    snapshot: Snapshot | None, records: list[bytes], complaint: str
) -> None:
    with pytest.raises(StorageCorruptError, match=complaint):
        replay(snapshot, records)


# ---- the Raft storage ---------------------------------------------------------------


def single_node(storage: DurableRaftStorage) -> RaftNode:
    state = storage.state if not storage.state.is_empty else storage.bootstrap([1])
    return RaftNode(1, state, random.Random(1), RaftOptions(election_ticks=2))


def run(node: RaftNode, storage: DurableRaftStorage) -> list[Entry]:
    applied: list[Entry] = []
    while node.has_ready():
        ready = node.ready()
        storage.save(ready)
        applied.extend(ready.committed_entries)
        node.advance(ready)
    return applied


def test_a_node_restarted_from_its_storage_has_everything_it_acknowledged(
    tmp_path: Path,
) -> None:
    storage = DurableRaftStorage(tmp_path, segment_bytes=256)
    node = single_node(storage)
    node.campaign()
    run(node, storage)
    for n in range(50):
        node.propose(b"value %d" % n)
        if n % 7 == 0:
            run(node, storage)
    run(node, storage)
    committed = node.commit_index
    storage.close()

    again = DurableRaftStorage(tmp_path, segment_bytes=256)
    restarted = single_node(again)
    assert restarted.term == node.term and restarted.vote == 1
    assert restarted.commit_index == committed and restarted.last_index == node.last_index
    values = [e.data for e in run(restarted, again) if e.data]
    assert values == [b"value %d" % n for n in range(50)]
    assert len(list((tmp_path / "wal").glob("*.wal"))) > 1  # it rotated


def test_compaction_releases_the_segments_the_snapshot_covers(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path, segment_bytes=200)
    node = single_node(storage)
    node.campaign()
    run(node, storage)
    for n in range(40):
        node.propose(b"value %d" % n)
        run(node, storage)
    segments_before = len(list((tmp_path / "wal").glob("*.wal")))
    snapshot = node.compact(node.applied_index, b"all forty")
    storage.save_snapshot(snapshot)
    assert len(list((tmp_path / "wal").glob("*.wal"))) < segments_before
    node.propose(b"after the snapshot")
    run(node, storage)
    storage.close()

    again = DurableRaftStorage(tmp_path, segment_bytes=200)
    assert again.state.snapshot == snapshot
    assert [e.data for e in again.state.entries] == [b"after the snapshot"]
    assert again.state.hard_state.term == node.term  # the vote survived segment deletion


def test_a_snapshot_from_the_leader_is_saved_before_the_record_that_names_it(
    tmp_path: Path,
) -> None:
    storage = DurableRaftStorage(tmp_path)
    follower = RaftNode(2, storage.bootstrap([1, 2, 3]), random.Random(2), RaftOptions())
    snapshot = Snapshot(20, 3, Config.of([1, 2, 3]), b"leader state")
    follower.step(InstallSnapshot(1, 2, 3, snapshot))
    ready: Ready = follower.ready()
    assert ready.snapshot == snapshot
    storage.save(ready)
    follower.advance(ready)
    storage.close()
    again = DurableRaftStorage(tmp_path)
    assert again.state.snapshot == snapshot and again.state.entries == ()
    assert again.state.hard_state.term == 3


def test_bootstrap_refuses_a_disk_that_already_holds_a_log(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path)
    storage.bootstrap([1, 2, 3])
    with pytest.raises(ValueError, match="already holds"):
        storage.bootstrap([1, 2, 3])


# ---- permissions ---------------------------------------------------------------------


@pytest.fixture
def permissive_umask():
    """The umask many systems default to: new files readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): path.stat().st_mode & 0o777
        for path in [root, *root.rglob("*")]
    }


def test_replica_files_are_private_whatever_the_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    from backend.processes.replica import lock_directory

    root = tmp_path / "data"
    replica = root / "replicas" / "g1-1"
    lock = lock_directory(replica)
    storage = DurableRaftStorage(replica)
    storage._wal.append([b"x"])
    storage._snapshots.save(snapshot_at(3))
    lock.close()
    found = modes(root)
    assert {"replicas/g1-1/wal", "replicas/g1-1/snap", "replicas/g1-1/LOCK"} <= set(found)
    assert any(name.endswith(".snap") for name in found) and any(
        name.endswith(".wal") for name in found
    )
    for name, mode in found.items():
        expected = 0o700 if (root / name).is_dir() else 0o600
        assert mode == expected, f"{name} is {mode:o}"


def test_an_existing_open_directory_is_tightened_with_a_log_line(
    tmp_path: Path, permissive_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    replicas = tmp_path / "replicas"
    replicas.mkdir(mode=0o755)
    (replicas / "g1-1").mkdir(mode=0o755)
    os.chmod(replicas, 0o755)
    caplog.set_level("WARNING")
    from backend.processes.replica import lock_directory

    lock_directory(replicas / "g1-1").close()
    assert replicas.stat().st_mode & 0o777 == 0o700
    assert (replicas / "g1-1").stat().st_mode & 0o777 == 0o700
    assert sum("made it 0700" in r.getMessage() for r in caplog.records) == 2
