"""Raft messages on the wire: every type round-trips through msgpack; garbage is a ValueError."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core import raft
from backend.core.codec import pack, unpack
from backend.core.raft import (
    AppendEntries,
    AppendResponse,
    Config,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteResponse,
    message_from_wire,
)

CONFIG = Config.of([1, 2, 3], [4])
SAMPLES = [
    AppendEntries(1, 2, 7, 10, 6, (Entry(11, 7, b"a"), Entry(12, 7, config=CONFIG)), 9),
    AppendEntries(1, 2, 7, 10, 6, (), 9),
    AppendResponse(2, 1, 7, 12),
    AppendResponse(2, 1, 7, 10, True, 8, 5),
    RequestVote(3, 1, 8, 12, 7),
    RequestVote(3, 1, 9, 12, 7, pre_vote=True, transfer=True),
    VoteResponse(1, 3, 8, True),
    VoteResponse(1, 3, 9, False, pre_vote=True),
    Heartbeat(1, 2, 7, 9, 4),
    HeartbeatResponse(2, 1, 7, 4),
    InstallSnapshot(1, 2, 7, Snapshot(100, 6, CONFIG, b"\x00state")),
    TimeoutNow(1, 2, 7),
    ReadIndexRequest(2, 1, 7, b"ctx"),
    ReadIndexResponse(1, 2, 7, 12, b"ctx"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_msgpack(message: Any) -> None:
    wire = unpack(pack(message.to_wire()))
    assert message_from_wire(wire) == message
    assert type(message).from_wire(wire) == message


def test_from_wire_of_one_type_refuses_another() -> None:
    with pytest.raises(ValueError, match="expected a heartbeat"):
        Heartbeat.from_wire(TimeoutNow(1, 2, 3).to_wire())


def _mutated(message: Any, **changes: Any) -> dict[str, Any]:
    wire = copy.deepcopy(message.to_wire())
    for key, value in changes.items():
        if value is ...:
            del wire[key]
        else:
            wire[key] = value
    return wire


@pytest.mark.parametrize(
    ("wire", "complaint"),
    [
        ([1, 2, 3], "must be a map"),
        ({"kind": "gossip"}, "unknown kind"),
        ({"kind": 5}, "unknown kind"),
        (_mutated(SAMPLES[0], term=...), "missing field 'term'"),
        (_mutated(SAMPLES[0], term=-1), "between 0 and"),
        (_mutated(SAMPLES[0], term=1 << 64), "between 0 and"),
        (_mutated(SAMPLES[0], term=True), "must be an integer"),
        (_mutated(SAMPLES[0], src=0), "between 1 and"),
        (_mutated(SAMPLES[0], dst=1), "both node 1"),
        (_mutated(SAMPLES[0], entries="x"), "must be a list"),
        (_mutated(SAMPLES[0], entries=[[11, 7, "text", None]]), "must be bytes"),
        (_mutated(SAMPLES[0], entries=[[11, 7, b""]]), "must have 4 items"),
        (_mutated(SAMPLES[0], entries=[[0, 7, b"", None]]), "between 1 and"),
        (_mutated(SAMPLES[0], entries=[[11, 7, b"", None], [13, 7, b"", None]]), "consecutive"),
        (_mutated(SAMPLES[0], entries=[[11, 7, b"", [[1, 2], [2]]]]), "both voter and learner"),
        (_mutated(SAMPLES[3], reject="yes"), "must be a boolean"),
        (_mutated(SAMPLES[10], snapshot={"index": 1}), "missing field 'term'"),
        (_mutated(SAMPLES[12], ctx="text"), "must be bytes"),
    ],
)
def test_garbage_is_refused_with_a_value_error_naming_the_problem(
    wire: Any, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        message_from_wire(wire)


def test_optional_flags_may_be_left_out() -> None:
    wire = RequestVote(3, 1, 8, 12, 7).to_wire()
    del wire["pre_vote"], wire["transfer"]
    assert message_from_wire(wire) == RequestVote(3, 1, 8, 12, 7)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),  # what msgpack can carry
    st.binary(max_size=8),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES),
    key=st.sampled_from(
        ["kind", "src", "dst", "term", "entries", "snapshot", "commit", "ctx", "index", "reject"]
    ),
    value=_values,
)
def test_any_corruption_of_a_message_is_a_value_error_or_a_valid_message(
    sample: Any, key: str, value: Any
) -> None:
    wire = sample.to_wire()
    wire[key] = value
    try:
        decoded = message_from_wire(unpack(pack(wire)))
    except ValueError:
        return
    assert decoded.to_wire()["kind"] == wire["kind"]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, st.integers(), st.dictionaries(st.text(max_size=10), st.integers())))
def test_arbitrary_values_never_crash_the_decoder(value: Any) -> None:
    with contextlib.suppress(ValueError):
        message_from_wire(value)


def test_hard_state_and_entries_round_trip() -> None:
    assert HardState.from_wire(HardState(5, None, 3).to_wire()) == HardState(5, None, 3)
    assert HardState.from_wire(HardState(5, 2, 3).to_wire()) == HardState(5, 2, 3)
    entry = Entry(4, 2, config=CONFIG)
    assert Entry.from_wire(entry.to_wire()) == entry


def test_the_public_surface_is_exactly_all() -> None:
    public = {name for name in dir(raft) if not name.startswith("_")}
    modules = {"errors", "log", "membership", "messages", "node", "progress", "ready"}
    modules |= {"readonly", "state", "wire"}
    assert public - modules == set(raft.__all__)
