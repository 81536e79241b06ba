"""Line framing for the client protocol: bytes in, complete lines out, no I/O.

A connection feeds whatever bytes it received to `LineSplitter.feed` and gets
back the complete lines, in order, without their `\\n`. A line may arrive
split across any number of reads, and one read may hold many lines.

The limit: a line may hold at most MAX_LINE_BYTES (65,536) bytes, not
counting its terminating `\\n` (a `\\r` before it, as `nc -C` sends, is part
of the line and counts). As soon as the bytes of an unfinished line exceed
the limit, `feed` returns `LineTooLong` without waiting for the newline, so a
client cannot make the portal buffer more than the limit; the splitter then
stops and ignores all further input, since the connection is to be closed.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 65_536


@dataclass(frozen=True)
class Line:
    """One complete line, without its terminating newline."""

    data: bytes


@dataclass(frozen=True)
class LineTooLong:
    """A line exceeded the limit; nothing more will be read from this connection."""

    limit: int


FrameEvent = Line | LineTooLong


class LineSplitter:
    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.failed = False
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line waiting for the rest of it."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Take received bytes; return the lines they complete, maybe ending in LineTooLong."""
        if self.failed:
            return []
        self._buffer += data
        events = self._complete_lines()
        if not self.failed and len(self._buffer) > self.max_line_bytes:
            events.append(self._fail())
        return events

    def _complete_lines(self) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            if end - start > self.max_line_bytes:
                events.append(self._fail())
                return events
            events.append(Line(bytes(self._buffer[start:end])))
            start = end + 1
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        return events

    def _fail(self) -> LineTooLong:
        self.failed = True
        self._buffer.clear()
        self._scanned = 0
        return LineTooLong(self.max_line_bytes)
