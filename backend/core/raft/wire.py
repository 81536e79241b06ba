"""Checks for values decoded from the wire: every field is validated before use.

Raft messages and log records arrive as msgpack maps and lists from the
network or the disk. These helpers turn a wrong type or an out-of-range
number into a `ValueError` that names the field, so a garbled or hostile
payload is rejected instead of corrupting the replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_U63 = (1 << 63) - 1


def field(message: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in message:
        raise ValueError(f"{what}: missing field {key!r}")
    return message[key]


def want_int(value: Any, what: str, minimum: int = 0) -> int:
    # bool is an int subclass; a True where a term belongs is still garbage
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    if not minimum <= value <= MAX_U63:
        raise ValueError(f"{what} must be between {minimum} and {MAX_U63}, not {value}")
    return value


def want_node_id(value: Any, what: str) -> int:
    return want_int(value, what, minimum=1)


def want_optional_node_id(value: Any, what: str) -> int | None:
    """Node ids on the wire use 0 for "none" (no vote, no leader)."""
    number = want_int(value, what)
    return number or None


def want_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be a boolean, not {type(value).__name__}")
    return value


def want_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"{what} must be bytes, not {type(value).__name__}")
    return value


def want_list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list, not {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must have {length} items, not {len(value)}")
    return list(value)


def want_map(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a map, not {type(value).__name__}")
    return value
