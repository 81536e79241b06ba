"""An append-only write-ahead log of checksummed records in segment files.

Why a hand-written log: docs/architecture.md, Snapshots. Format, next to the
code that writes it. A segment is a sequence of records:

    u32 payload length (little endian) | u32 CRC-32 of (length bytes + payload) | payload

CRC-32 is zlib's (in the standard library, in C); like CRC-32C it catches every
burst error up to 32 bits. The length is under the checksum, so a damaged
length cannot send recovery reading garbage as records. Segments are named
`<seq>-<label>.wal` (16 hex digits each): `seq` orders them; `label` is given at
rotation (the last log index), so `release_before(n)` can delete every segment
whose successor's label is at most n.

Durability: `append` writes (a failed write is undone: a full disk leaves no half
record), `sync` fdatasyncs (SyncFailed if that fails: then nothing written since the
last good sync may be trusted); a new segment is created as a
fsynced temporary file renamed into place (directory fsynced), so it exists
whole or not at all. Recovery: in the last segment, the first record with a
short header, an impossible length or a wrong checksum starts a torn tail
(never acknowledged) and the file is truncated there; a bad record in an
earlier segment raises StorageCorruptError.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backend.adapters.disk import durable_io
from backend.adapters.disk.durable_io import fsync_directory
from backend.adapters.private_files import create_private, private_directory
from backend.core.storage_errors import StorageCorruptError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 64 << 20
DEFAULT_SEGMENT_BYTES = 64 << 20
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    label: int
    path: Path

    @classmethod
    def named(cls, directory: Path, seq: int, label: int) -> Segment:
        return cls(seq, label, directory / f"{seq:016x}-{label:016x}.wal")


def encode_record(payload: bytes) -> bytes:
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"a log record holds at most {MAX_RECORD_BYTES} bytes")
    length = len(payload).to_bytes(4, "little")
    return length + zlib.crc32(payload, zlib.crc32(length)).to_bytes(4, "little") + payload


def scan(data: bytes) -> tuple[list[bytes], int]:
    """The valid records at the start of `data`, and the offset just after the last one."""
    records: list[bytes] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(data[offset : offset + 4])) != crc:
            break
        records.append(payload)
        offset = end
    return records, offset


class WriteAheadLog:
    """Use `WriteAheadLog.open(directory)`; it recovers the records already there."""

    def __init__(self, directory: Path, segments: list[Segment], segment_bytes: int) -> None:
        self.directory = directory
        self.segments = segments
        self.segment_bytes = segment_bytes
        self.truncated_bytes = 0
        self._fd = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    @classmethod
    def open(
        cls, directory: Path | str, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple[WriteAheadLog, list[bytes]]:
        """Open (creating if needed) the log in `directory`; returns it and every record."""
        directory = private_directory(directory)
        for stray in directory.glob("*.tmp"):
            stray.unlink()  # a segment whose creation a crash interrupted
        segments = _list_segments(directory)
        if not segments:
            first = Segment.named(directory, 0, 0)
            _create_file(first.path, b"")
            segments = [first]
        records: list[bytes] = []
        truncated = 0
        for segment in segments[:-1]:
            records.extend(_read_sealed(segment))
        tail_records, truncated = _recover_tail(segments[-1])
        records.extend(tail_records)
        wal = cls(directory, segments, segment_bytes)
        wal.truncated_bytes = truncated
        return wal, records

    @property
    def size(self) -> int:
        """Bytes in the active segment."""
        return self._size

    def append(self, payloads: Iterable[bytes]) -> None:
        data = b"".join(encode_record(payload) for payload in payloads)
        if data:
            durable_io.write_all(self._fd, data)
            self._size += len(data)

    def sync(self) -> None:
        durable_io.datasync(self._fd)

    def should_rotate(self) -> bool:
        return self._size >= self.segment_bytes

    def rotate(self, label: int, first_records: Iterable[bytes] = ()) -> None:
        """Seal the active segment (fsynced) and start a new one holding `first_records`."""
        self.sync()
        segment = Segment.named(self.directory, self.segments[-1].seq + 1, label)
        _create_file(segment.path, b"".join(encode_record(p) for p in first_records))
        durable_io.close(self._fd)
        self.segments.append(segment)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    def release_before(self, label: int) -> int:
        """Delete the oldest segments while the next one's label is at most `label`."""
        released = 0
        while len(self.segments) > 1 and self.segments[1].label <= label:
            self.segments.pop(0).path.unlink()
            released += 1
        if released:
            fsync_directory(self.directory)
        return released

    def close(self) -> None:
        if self._fd >= 0:
            durable_io.close(self._fd)
            self._fd = -1


def _list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            segments.append(Segment(int(match[1], 16), int(match[2], 16), path))
    segments.sort(key=lambda segment: segment.seq)
    for before, after in itertools.pairwise(segments):
        if after.seq != before.seq + 1:
            raise StorageCorruptError(f"log segment after {before.path.name} is missing")
    return segments


def _create_file(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = create_private(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        durable_io.write_all(fd, content)
        durable_io.fsync(fd)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk: give the space back
        raise
    finally:
        durable_io.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _read_sealed(segment: Segment) -> list[bytes]:
    data = segment.path.read_bytes()
    records, end = scan(data)
    if end != len(data):
        raise StorageCorruptError(
            f"log segment {segment.path.name} is damaged at byte {end} of {len(data)}"
        )
    return records


def _recover_tail(segment: Segment) -> tuple[list[bytes], int]:
    data = segment.path.read_bytes()
    records, end = scan(data)
    torn = len(data) - end
    if torn:
        log.warning(
            "log segment %s: dropping a torn tail of %d bytes at byte %d",
            segment.path.name,
            torn,
            end,
        )
        fd = os.open(segment.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            durable_io.fsync(fd)
        finally:
            os.close(fd)
    return records, torn
