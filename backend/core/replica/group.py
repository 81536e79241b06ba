"""Which replica group holds a key: rendezvous hashing over the group ids.

Replica groups own keys independently of the cache ring (docs/architecture.md,
"Data and ownership"), so cache nodes can come and go without moving durable
data. Each key (a CID) goes to the group with the highest score `hash(group id, key)` (rendezvous,
or highest-random-weight, hashing: Thaler & Ravishankar 1998). Adding a group
moves to it only the keys it now wins, about 1/G of them, and removing a
group moves only that group's keys; no other key changes group. Every process
that knows the same set of group ids computes the same answer.

Group ids name MQTT topic levels, so they are short words of letters, digits,
`-` and `_`: `g1`, `g2`, ... by default (`default_groups`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

MAX_KEY = (1 << 64) - 1
_GROUP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_group_id(group: object) -> str:
    """Return `group` if it is a valid group id; raise ValueError naming the problem."""
    if not isinstance(group, str) or not _GROUP_ID.fullmatch(group):
        raise ValueError(
            f"group id {group!r} must be 1 to 64 letters, digits, '-' or '_' "
            "(it names an MQTT topic level)"
        )
    if group == "reply":
        raise ValueError("group id 'reply' is reserved")
    return group


def default_groups(count: int) -> list[str]:
    """The group ids `taskring up` uses: g1 .. g<count>."""
    if count < 1:
        raise ValueError(f"need at least one replica group, not {count}")
    return [f"g{n}" for n in range(1, count + 1)]


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """A non-empty sequence of distinct valid group ids, as a tuple."""
    result = tuple(check_group_id(group) for group in groups)
    if not result:
        raise ValueError("no replica groups given")
    if len(set(result)) != len(result):
        raise ValueError(f"replica group ids repeat: {', '.join(result)}")
    return result


def score(group: str, key: int) -> int:
    """The rendezvous weight of `group` for `key`: 64 bits of BLAKE2b over both."""
    digest = hashlib.blake2b(
        key.to_bytes(8, "big"), digest_size=8, key=group.encode("utf-8")
    ).digest()
    return int.from_bytes(digest, "big")


def group_for(key: int, groups: Sequence[str]) -> str:
    """The group that holds `key` (a CID, 0 .. 2**64-1) among `groups`."""
    if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key <= MAX_KEY:
        raise ValueError(f"key must be an unsigned 64-bit integer, not {key!r}")
    if not groups:
        raise ValueError("no replica groups given")
    # ties (astronomically unlikely) go to the smaller id, so every caller agrees
    return min(groups, key=lambda group: (-score(group, key), group))
