"""Snapshot files: each written whole to a temporary file, fsynced, then renamed into place.

A snapshot (§7 of the Raft paper) is the state machine as of a log index,
with the term and membership at that index. A file is

    8-byte magic "TRSNAP01" | u32 CRC-32 of the body | u64 body length | body

where the body is the msgpack of `Snapshot.to_wire()`, and is named
`<index>-<term>.snap` (16 hex digits each). Saving writes `<name>.<pid>.tmp`
(the writer's pid: a replica's forked snapshot writer and the replica itself
never share a temporary file), fsyncs it, renames it over the final name and
fsyncs the directory, so after a crash a snapshot file is either complete or
absent; temporary files left by a crash are deleted when the store is opened. Loading takes the
newest file that checks out, skipping (and logging) damaged ones; the newest
`keep` files are kept, so one damaged file still leaves an older one.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

import msgpack

from backend.adapters.disk import durable_io
from backend.adapters.disk.durable_io import fsync_directory
from backend.adapters.private_files import create_private, private_directory
from backend.core.raft import Snapshot

log = logging.getLogger(__name__)

MAGIC = b"TRSNAP01"
_HEADER = struct.Struct("<8sIQ")
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


def encode_snapshot(snapshot: Snapshot) -> bytes:
    body = msgpack.packb(snapshot.to_wire(), use_bin_type=True)
    return _HEADER.pack(MAGIC, zlib.crc32(body), len(body)) + body


def decode_snapshot(data: bytes) -> Snapshot:
    """ValueError if the bytes are not one whole, intact snapshot."""
    if len(data) < _HEADER.size:
        raise ValueError("shorter than a snapshot header")
    magic, crc, length = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size :]  # a view: the body may be hundreds of MB
    if magic != MAGIC:
        raise ValueError("not a snapshot file")
    if length != len(body):
        raise ValueError(f"body is {len(body)} bytes, header says {length}")
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    try:
        wire = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"undecodable body: {exc}") from exc
    return Snapshot.from_wire(wire)


class SnapshotStore:
    def __init__(self, directory: Path | str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        self.directory = private_directory(directory)
        self.keep = keep
        for stray in self.directory.glob("*.tmp"):
            stray.unlink()  # a save that a crash interrupted

    def _files(self) -> list[tuple[int, Path]]:
        """(index, path) of every snapshot file, newest first."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append((int(match[1], 16), path))
        return sorted(found, reverse=True)

    def save(self, snapshot: Snapshot) -> Path:
        """Write `snapshot` durably, then prune the oldest files."""
        path = self.write(snapshot)
        self.prune()
        return path

    def write(self, snapshot: Snapshot) -> Path:
        """Write `snapshot` durably and nothing else: no pruning, no logging, so a forked
        child may call it."""
        path = self.directory / f"{snapshot.index:016x}-{snapshot.term:016x}.snap"
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = create_private(temporary, os.O_WRONLY | os.O_TRUNC)
        try:
            durable_io.write_all(fd, encode_snapshot(snapshot))
            durable_io.fsync(fd)
        except OSError:
            temporary.unlink(missing_ok=True)  # a full disk: give the space back
            raise
        finally:
            durable_io.close(fd)
        os.replace(temporary, path)
        fsync_directory(self.directory)
        return path

    def temporary_files(self, pid: int) -> list[Path]:
        """What an interrupted write by process `pid` left behind."""
        return list(self.directory.glob(f"*.snap.{pid}.tmp"))

    def prune(self) -> None:
        """Keep the newest `keep` snapshot files."""
        for _index, path in self._files()[self.keep :]:
            path.unlink(missing_ok=True)

    def load(self, index: int) -> Snapshot:
        """The snapshot at `index`; FileNotFoundError if there is none, ValueError if
        it is damaged."""
        for found, path in self._files():
            if found == index:
                snapshot = decode_snapshot(path.read_bytes())
                if snapshot.index != index:
                    raise ValueError(f"{path.name} holds index {snapshot.index}")
                return snapshot
        raise FileNotFoundError(f"no snapshot at index {index} in {self.directory}")

    def load_newest(self) -> Snapshot | None:
        for index, path in self._files():
            try:
                snapshot = decode_snapshot(path.read_bytes())
            except ValueError as exc:
                log.warning("skipping damaged snapshot %s: %s", path.name, exc)
                continue
            if snapshot.index != index:
                log.warning("skipping snapshot %s: it holds index %d", path.name, snapshot.index)
                continue
            return snapshot
        return None
