"""The failpoints in force in this process, read from TASKRING_FAILPOINTS_FILE.

For fault testing only (docs/operating.md, "Failpoints"). Without the variable
`current()` is one comparison and no file is ever read. With it, the file is
looked at (one stat) at most every 100 ms and parsed again only when its
mtime, size or inode changed; a missing or empty file means no failpoints. A
line that cannot be used is logged once and ignored. The syntax is
backend/core/failpoints.py's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from backend.core.failpoints import NO_FAILPOINTS, Failpoints, parse_failpoints

log = logging.getLogger(__name__)

ENV = "TASKRING_FAILPOINTS_FILE"
CHECK_INTERVAL = 0.1  # seconds between looks at the file

_Signature = tuple[int, int, int] | None  # mtime_ns, size, inode; None: no file


class FailpointFile:
    """One failpoint file, parsed again when it changes (looked at every `interval` s)."""

    def __init__(
        self,
        path: Path | str,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._clock = clock  # the real clock: clock.rate must not slow its own re-reading
        self._next_look = float("-inf")
        self._seen: _Signature = None
        self._failpoints = NO_FAILPOINTS
        self._reported: set[str] = set()

    def current(self) -> Failpoints:
        now = self._clock()
        if now < self._next_look:
            return self._failpoints
        self._next_look = now + self.interval
        signature = self._signature()
        if signature != self._seen:
            self._seen = signature
            self._failpoints = self._read() if signature is not None else NO_FAILPOINTS
        return self._failpoints

    def _signature(self) -> _Signature:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size, status.st_ino

    def _read(self) -> Failpoints:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return NO_FAILPOINTS
        parsed = parse_failpoints(text)
        for problem in parsed.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                log.error("failpoint file %s: ignoring %s", self.path, problem)
        if parsed.failpoints != self._failpoints:
            log.warning("failpoints now in force from %s: %s", self.path, parsed.failpoints)
        return parsed.failpoints


def _from_environment() -> FailpointFile | None:
    path = os.environ.get(ENV)
    return FailpointFile(path) if path else None


_file = _from_environment()


def current() -> Failpoints:
    """The failpoints in force now (none unless TASKRING_FAILPOINTS_FILE is set)."""
    if _file is None:
        return NO_FAILPOINTS
    return _file.current()


def enabled() -> bool:
    """Whether this process watches a failpoint file at all."""
    return _file is not None
