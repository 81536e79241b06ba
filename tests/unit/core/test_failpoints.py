"""The failpoint file syntax (backend/core/failpoints.py): what each line sets, what is refused."""

from __future__ import annotations

import pytest

from backend.core.failpoints import NO_FAILPOINTS, Failpoints, parse_failpoints


def test_an_empty_file_or_only_comments_set_nothing() -> None:
    assert parse_failpoints("").failpoints == NO_FAILPOINTS
    parsed = parse_failpoints("\n  # wal.fsync=error\n\n")
    assert parsed.failpoints == NO_FAILPOINTS and parsed.problems == ()
    assert not NO_FAILPOINTS.any


def test_every_failpoint_is_read() -> None:
    parsed = parse_failpoints(
        "wal.fsync=error\n wal.write = enospc \nwal.unsynced=lose\nclock.rate=1.5\n"
    )
    assert parsed.problems == ()
    assert parsed.failpoints == Failpoints(
        fsync_error=True, write_enospc=True, lose_unsynced=True, clock_rate=1.5
    )
    assert parsed.failpoints.any


def test_a_later_line_for_a_name_replaces_an_earlier_one() -> None:
    assert parse_failpoints("clock.rate=0.5\nclock.rate=2").failpoints.clock_rate == 2.0


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("wal.fsync", "expected name=action"),
        ("wal.fsync=lose", "takes only 'error'"),
        ("wal.write=full", "takes only 'enospc'"),
        ("disk.melt=yes", "unknown failpoint"),
        ("clock.rate=fast", "takes a number"),
        ("clock.rate=0", "positive"),
        ("clock.rate=-1", "positive"),
        ("clock.rate=nan", "positive"),
        ("clock.rate=inf", "positive"),
    ],
)
def test_a_malformed_line_is_named_and_ignored(line: str, complaint: str) -> None:
    parsed = parse_failpoints(f"wal.fsync=error\n{line}\n")
    assert parsed.failpoints == Failpoints(fsync_error=True)
    assert len(parsed.problems) == 1
    assert parsed.problems[0].startswith("line 2 ") and complaint in parsed.problems[0]
