"""Chord messages on the wire: every one survives msgpack, and garbage is a clear ValueError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.core.chord import (
    MASK,
    Gone,
    LeaveToPredecessor,
    LeaveToSuccessor,
    Lookup,
    LookupAck,
    LookupReply,
    Notify,
    Peer,
    Ping,
    Pong,
    StabilizeQuery,
    StabilizeReply,
    decode,
)

pos = st.integers(min_value=0, max_value=MASK)
host = st.text(min_size=1, max_size=20)
peer = st.builds(Peer, pos, host)
peers = st.lists(peer, max_size=12).map(tuple)
text = st.text(max_size=30)
hops = st.integers(min_value=0, max_value=200)
payload = st.recursive(
    st.none() | st.integers(min_value=-(2**63), max_value=MASK) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)

messages = st.one_of(
    st.builds(StabilizeQuery, pos, peer),
    st.builds(StabilizeReply, pos, peer, st.none() | peer, peers),
    st.builds(Notify, pos, peer),
    st.builds(Ping, pos, peer),
    st.builds(Pong, pos, peer),
    st.builds(
        Lookup,
        st.none() | pos,
        st.none() | peer,
        pos,
        text,
        text,
        st.none() | peer,
        hops,
        peers,
        st.booleans(),
        payload,
        st.booleans(),
    ),
    st.builds(LookupAck, pos, peer, text, hops),
    st.builds(LookupReply, pos, peer, text, peers),
    st.builds(LeaveToSuccessor, pos, peer, st.none() | peer),
    st.builds(LeaveToPredecessor, pos, peer, peers),
    st.builds(Gone, pos, host, st.none() | pos, text, hops),
)


def over_the_wire(wire: dict[str, Any]) -> Any:
    return msgpack.unpackb(msgpack.packb(wire), raw=False)


@given(messages)
def test_every_message_survives_the_msgpack_wire(message: Any) -> None:
    assert decode(over_the_wire(message.to_wire())) == message


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(json_like)
def test_garbage_is_refused_with_a_value_error(value: Any) -> None:
    with contextlib.suppress(ValueError):
        decode(value)


@given(messages, st.sampled_from(["dst", "src", "key", "hops", "successors", "t"]), json_like)
def test_a_message_with_one_field_spoiled_decodes_or_says_what_is_wrong(
    message: Any, field: str, value: Any
) -> None:
    wire = message.to_wire()
    if field in wire:
        wire[field] = value
    with contextlib.suppress(ValueError):
        decode(wire)


@pytest.mark.parametrize(
    ("wire", "complaint"),
    [
        ([], "must be a map"),
        ({"t": "teleport"}, "unknown chord message type"),
        ({"t": "ping", "dst": 1}, "lacks field 'src'"),
        ({"t": "ping", "dst": -1, "src": [1, "a"]}, "dst must be a ring position"),
        ({"t": "ping", "dst": 2**64, "src": [1, "a"]}, "dst must be a ring position"),
        ({"t": "ping", "dst": 1, "src": [1, ""]}, "host must not be empty"),
        ({"t": "ping", "dst": 1, "src": [1, "a", 3]}, "[position, host] pair"),
        ({"t": "ping", "dst": True, "src": [1, "a"]}, "dst must be a ring position"),
    ],
)
def test_decode_names_what_is_wrong(wire: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        decode(wire)


def test_lookup_wire_is_plain_msgpack_types() -> None:
    lookup = Lookup(None, Peer(5, "cache-1"), 7, "l1", "tok", None, 1, (Peer(5, "cache-1"),), True)
    wire = lookup.to_wire()
    assert wire == {
        "t": "lookup",
        "dst": None,
        "src": [5, "cache-1"],
        "key": 7,
        "lid": "l1",
        "token": "tok",
        "origin": None,
        "hops": 1,
        "route": [[5, "cache-1"]],
        "final": True,
        "payload": None,
        "skip_origin": False,
    }
