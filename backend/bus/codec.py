"""msgpack encoding of every internal message.

Internal payloads are plain maps of strings, numbers, bytes, lists and maps.
Unpacking rejects anything that is not a map, so a handler never sees a bare
scalar or a truncated frame.
"""

from __future__ import annotations

from typing import Any

import msgpack


class DecodeError(ValueError):
    """A payload on the bus is not a msgpack map."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(payload: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"undecodable payload: {exc}") from exc
    if not isinstance(message, dict):
        raise DecodeError(f"payload is a {type(message).__name__}, not a map")
    return message
