"""msgpack encoding of every internal message.

Internal payloads are plain maps of strings, numbers, bytes, lists and maps.
`unpack` is total: any bytes at all give either a map or DecodeError, never
another exception. It rejects anything that is not a map (a bare scalar, a
truncated frame, trailing bytes, a map keyed by a list or map, nesting deeper
than msgpack's stack, an ext type), so a handler never sees them; and no
length in a payload may exceed the payload itself, so a few bytes cannot claim
a huge allocation.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack

# MQTT's own limit on a packet: a Raft snapshot rides in one message, so nothing lower.
MAX_PAYLOAD = 268_435_455


class DecodeError(ValueError):
    """A payload on the bus is not a msgpack map."""


# msgpack.packb builds a Packer, and with it a 1 MiB buffer, for every call: four times
# the cost of packing a small message. One Packer is kept instead. Packing plain maps,
# lists and scalars runs no Python code, so no other thread can interleave.
_packer = msgpack.Packer(use_bin_type=True)
# A message bigger than this (a snapshot) grew the kept buffer: it is let go, not kept.
_KEPT_BUFFER_BYTES = 1 << 20


def pack(message: dict[str, Any]) -> bytes:
    return pack_value(message)


def pack_value(value: Any) -> bytes:
    """Any msgpack value (storage records, batches), packed like a message."""
    global _packer
    data = _packer.pack(value)
    if len(data) > _KEPT_BUFFER_BYTES:
        _packer = msgpack.Packer(use_bin_type=True)
    return data


def array_header(length: int) -> bytes:
    """The header of a msgpack array of `length` items, to put before items packed apart."""
    return _packer.pack_array_header(length)


def unpack(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    size = max(len(payload), 1)
    try:
        message = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            # Each element takes at least one byte: no honest length exceeds the payload.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=size,
            ext_hook=_no_ext,
        )
    except Exception as exc:  # TypeError (unhashable key), StackError, ExtraData, ...
        raise DecodeError(f"undecodable payload: {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, dict):
        raise DecodeError(f"payload is a {type(message).__name__}, not a map")
    return message


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"ext type {code} is not used on the bus")
