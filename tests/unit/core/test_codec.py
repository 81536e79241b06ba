"""The codec's kept Packer gives the same bytes as msgpack.packb, big messages included."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from backend.core.codec import DecodeError, array_header, pack, pack_value, unpack

MESSAGES: list[dict[str, Any]] = [
    {},
    {"op": "update_task", "cid": "9f86d081884c7d65", "title": "t", "rid": 2**63},
    {"nested": {"list": [1, -1, 2.5, None, True, b"\x00\xff", "é"]}},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_pack_gives_what_packb_gives_and_unpack_undoes_it(message: dict[str, Any]) -> None:
    assert pack(message) == msgpack.packb(message, use_bin_type=True)
    assert unpack(pack(message)) == message


def test_a_message_over_the_kept_buffer_changes_nothing_for_the_next() -> None:
    big = {"snapshot": b"x" * (3 << 20)}
    small = MESSAGES[1]
    assert pack(small) == msgpack.packb(small, use_bin_type=True)
    assert unpack(pack(big)) == big
    assert pack(small) == msgpack.packb(small, use_bin_type=True)


def test_a_failed_pack_leaves_no_bytes_behind_for_the_next() -> None:
    with pytest.raises(TypeError):
        pack({"not packable": object()})
    assert pack(MESSAGES[1]) == msgpack.packb(MESSAGES[1], use_bin_type=True)


def test_pieces_behind_an_array_header_read_as_one_list() -> None:
    pieces = [pack_value(item) for item in (1, "two", [3])]
    assert msgpack.unpackb(array_header(len(pieces)) + b"".join(pieces)) == [1, "two", [3]]


def test_unpack_refuses_a_payload_that_is_not_a_map() -> None:
    with pytest.raises(DecodeError, match="not a map"):
        unpack(pack_value([1, 2]))
