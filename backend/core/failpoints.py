"""Failpoints: faults a test asks a running process to suffer, parsed from text.

A failpoint file holds lines `name=action`; blank lines and `#` comments are
ignored, and a later line for a name replaces an earlier one. The names and
actions (docs/operating.md, "Failpoints"):

    wal.fsync=error        fsyncs of the log and snapshots fail with EIO
    wal.write=enospc       writes to the log and snapshots fail with ENOSPC
    wal.unsynced=lose      written data reaches the file only at fsync
    clock.rate=<float>     the process's monotonic clock runs at that rate

Pure: backend/adapters/failpoints.py reads and watches the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FSYNC = "wal.fsync"
WRITE = "wal.write"
UNSYNCED = "wal.unsynced"
CLOCK_RATE = "clock.rate"


@dataclass(frozen=True, slots=True)
class Failpoints:
    """The faults in force; the defaults are none at all."""

    fsync_error: bool = False
    write_enospc: bool = False
    lose_unsynced: bool = False
    clock_rate: float = 1.0

    @property
    def any(self) -> bool:
        return self != NO_FAILPOINTS


NO_FAILPOINTS = Failpoints()


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a failpoint file says, and one message for each line that could not be used."""

    failpoints: Failpoints
    problems: tuple[str, ...] = ()


_FLAG_ACTIONS = {FSYNC: "error", WRITE: "enospc", UNSYNCED: "lose"}


def parse_failpoints(text: str) -> Parsed:
    """The failpoints `text` sets; malformed lines are named in `problems` and ignored."""
    flags: set[str] = set()
    rate = 1.0
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, value = _parse_line(line)
        except ValueError as exc:
            problems.append(f"line {number} {line[:80]!r}: {exc}")
            continue
        if name == CLOCK_RATE:
            rate = value
        else:
            flags.add(name)
    failpoints = Failpoints(
        fsync_error=FSYNC in flags,
        write_enospc=WRITE in flags,
        lose_unsynced=UNSYNCED in flags,
        clock_rate=rate,
    )
    return Parsed(failpoints, tuple(problems))


def _parse_line(line: str) -> tuple[str, float]:
    """The failpoint a line names and its value (a flag's is 1.0)."""
    name, equals, action = (part.strip() for part in line.partition("="))
    if not equals:
        raise ValueError("expected name=action")
    if name in _FLAG_ACTIONS:
        expected = _FLAG_ACTIONS[name]
        if action != expected:
            raise ValueError(f"{name} takes only {expected!r}, not {action[:40]!r}")
        return name, 1.0
    if name == CLOCK_RATE:
        return name, _parse_rate(action)
    known = ", ".join([*_FLAG_ACTIONS, CLOCK_RATE])
    raise ValueError(f"unknown failpoint {name[:40]!r} (known: {known})")


def _parse_rate(action: str) -> float:
    try:
        rate = float(action)
    except ValueError:
        raise ValueError(f"clock.rate takes a number like 1.5, not {action[:40]!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"clock.rate must be a positive number, not {action[:40]!r}")
    return rate
