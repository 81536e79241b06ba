"""The portal's pure ring core (backend/core/ring/portal_core.py), driven by hand: which cache
node a request goes to, when and through whom it is tried again, what outcome it honestly ends
with, and what leaves in one batch. Time is whatever the test says it is."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core import topics
from backend.core.errors import EXISTS, INTERNAL, TIMEOUT, UNAVAILABLE, OpError
from backend.core.ring import wire
from backend.core.ring.portal_core import (
    ATTEMPT_WAIT,
    HOST_FRESHNESS,
    REFUSED,
    REQUEST_TIMEOUT,
    RETRY_PAUSE,
    SILENCE,
    UNSENT,
    WILL,
    AttemptFailed,
    Completed,
    PortalCore,
)

REPLY_TOPIC = topics.ring_reply("p1")
READ = {"op": "list_tasks", "cid": 100}
WRITE = {"op": "insert_task", "cid": 100, "title": "t", "description": "d"}


def announce(core: PortalCore, host: str, position: int, now: float = 0.0, **extra: Any) -> None:
    message = wire.Announce(host, extra.pop("incarnation", "i1"), True, [position]).to_wire()
    core.on_announce({**message, **extra}, now)


def ring(durable: bool = False, now: float = 0.0) -> PortalCore:
    """Key 100 is owned by `a` (position 200); `b` (position 300) follows it."""
    core = PortalCore("p1/x", REPLY_TOPIC)
    announce(core, "a", 200, now, durable=durable)
    announce(core, "b", 300, now, durable=durable)
    return core


def sent(core: PortalCore) -> list[tuple[str, dict[str, Any]]]:
    """Every message flushed, unbatched: (host, message)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for topic, message in core.flush():
        host = topic.rsplit("/", 1)[-1]
        out.extend((host, m) for m in wire.unbatch(message))
    return out


def completed(core: PortalCore) -> list[Completed]:
    return [o for o in core.take() if isinstance(o, Completed)]


def error_code(done: Completed) -> str:
    assert isinstance(done.result, OpError), done.result
    return done.result.code


# ---- routing ------------------------------------------------------------------------------


def test_a_request_goes_to_the_first_position_at_or_after_its_key_wrapping() -> None:
    core = ring()
    assert core.entry_for(100, set(), 0.0) == "a"
    assert core.entry_for(250, set(), 0.0) == "b"
    assert core.entry_for(400, set(), 0.0) == "a"  # round the ring
    assert core.entry_for(100, {"a"}, 0.0) == "b"


def test_silent_and_non_member_nodes_are_not_asked() -> None:
    core = ring()
    core.on_announce(wire.Announce("c", "i1", False, [150]).to_wire(), 1.0)
    assert core.entry_for(100, set(), 1.0) == "a"
    announce(core, "b", 300, now=1.0)
    assert core.member_hosts(HOST_FRESHNESS + 0.5) == ["b"]  # a fell silent


def test_a_write_carries_one_request_id_for_all_its_attempts_and_a_read_none() -> None:
    core = ring(durable=True)
    core.call(100, READ, 0.0)
    core.call(100, WRITE, 0.0)
    [(_, read), (_, write)] = sent(core)
    assert "req" not in read["op"] and write["op"]["req"].startswith("p1/x/w")
    core.tick(ATTEMPT_WAIT)
    again = [m for _, m in sent(core) if m["op"]["op"] == "insert_task"]
    assert again[0]["op"]["req"] == write["op"]["req"] and again[0]["corr"] != write["corr"]


# ---- outcomes -----------------------------------------------------------------------------


def test_a_reply_completes_the_call_with_its_result_and_owner() -> None:
    core = ring()
    call = core.call(100, READ, 0.0)
    [(_, request)] = sent(core)
    reply = wire.Reply.success(request["corr"], {"tasks": []}, ["a"], "a", 0).to_wire()
    core.on_reply(reply, 0.1)
    assert completed(core) == [Completed(call, {"tasks": []}, reply, "a")]
    assert core.next_tick() is None
    core.on_reply(reply, 0.2)  # a repeat is ignored
    assert core.take() == []


def test_an_error_reply_ends_the_call_and_an_unknown_code_is_internal() -> None:
    core = ring()
    core.call(100, WRITE, 0.0)
    core.call(100, READ, 0.0)
    [(_, write), (_, read)] = sent(core)
    core.on_reply(wire.Reply.failure(write["corr"], EXISTS, "there").to_wire(), 0.1)
    core.on_reply(wire.Reply.failure(read["corr"], "strange", "?").to_wire(), 0.1)
    assert [error_code(d) for d in completed(core)] == [EXISTS, INTERNAL]


def test_unavailable_is_retried_through_another_node_until_the_deadline() -> None:
    core = ring()
    call = core.call(100, WRITE, 0.0)
    now, entries = 0.0, []
    while True:
        for host, request in sent(core):
            entries.append(host)
            core.on_reply(
                wire.Reply.failure(request["corr"], UNAVAILABLE, "no route").to_wire(), now
            )
        outputs = core.take()
        if any(isinstance(o, Completed) for o in outputs):
            break
        assert outputs in ([AttemptFailed(call, REFUSED, "no route")], [])  # []: all tried
        wake = core.next_tick()
        assert wake is not None
        assert wake == pytest.approx(now + RETRY_PAUSE)
        announce(core, "a", 200, wake)  # both stay fresh
        announce(core, "b", 300, wake)
        now = wake
        core.tick(now)
    [done] = [o for o in outputs if isinstance(o, Completed)]
    assert error_code(done) == UNAVAILABLE and "no route" in str(done.result)
    assert now >= REQUEST_TIMEOUT - RETRY_PAUSE
    assert entries[:3] == ["a", "b", "a"]  # another entry each time, then again from the start


def test_an_unanswered_memory_only_write_waits_out_the_deadline_and_is_a_timeout() -> None:
    core = ring()
    core.call(100, WRITE, 0.0)
    assert len(sent(core)) == 1
    assert core.next_tick() == REQUEST_TIMEOUT
    core.tick(REQUEST_TIMEOUT - 0.01)
    assert core.take() == [] and sent(core) == []
    core.tick(REQUEST_TIMEOUT)
    [_, done] = core.take()
    assert isinstance(done, Completed)
    assert error_code(done) == TIMEOUT
    assert sent(core) == []


def test_an_unanswered_read_is_retried_through_another_node_after_the_attempt_wait() -> None:
    core = ring()
    call = core.call(100, READ, 0.0)
    assert [h for h, _ in sent(core)] == ["a"]
    assert core.next_tick() == ATTEMPT_WAIT
    core.tick(ATTEMPT_WAIT)
    assert core.take() == [AttemptFailed(call, SILENCE)]
    assert [h for h, _ in sent(core)] == ["b"]


def test_a_read_unanswered_to_the_deadline_is_unavailable_not_a_timeout() -> None:
    core = ring()
    core.call(100, READ, 0.0)
    now = 0.0
    while not (done := completed(core)):
        sent(core)
        now = core.next_tick() or now
        announce(core, "a", 200, now)
        announce(core, "b", 300, now)
        core.tick(now)
    assert error_code(done[0]) == UNAVAILABLE and now == pytest.approx(REQUEST_TIMEOUT)


def test_an_unanswered_durable_write_is_retried_and_then_a_timeout() -> None:
    core = ring(durable=True)
    core.call(100, WRITE, 0.0)
    now = 0.0
    requests = 0
    while not (done := completed(core)):
        requests += len(sent(core))
        now = core.next_tick() or now
        announce(core, "a", 200, now, durable=True)
        announce(core, "b", 300, now, durable=True)
        core.tick(now)
    assert error_code(done[0]) == TIMEOUT and requests == 5


def test_with_no_node_heard_a_call_pauses_and_ends_unavailable() -> None:
    core = PortalCore("p1/x", REPLY_TOPIC, request_timeout=0.2)
    core.call(100, WRITE, 0.0)
    assert sent(core) == [] and core.next_tick() == RETRY_PAUSE
    now = 0.0
    while not (done := completed(core)):
        now = core.next_tick() or now
        core.tick(now)
    assert error_code(done[0]) == UNAVAILABLE
    assert "no cache node is in the ring" in str(done[0].result)


def test_a_message_that_could_not_be_published_is_tried_again_after_a_pause() -> None:
    core = ring()
    call = core.call(100, WRITE, 0.0)
    [(_, message)] = core.flush()
    core.unsent(message, "not connected", 0.01)
    assert core.take() == [AttemptFailed(call, UNSENT, "not connected")]
    assert core.next_tick() == pytest.approx(0.01 + RETRY_PAUSE)
    core.tick(0.01 + RETRY_PAUSE)
    assert [h for h, _ in sent(core)] == ["b"]


def test_a_cancelled_call_sends_nothing_more_and_ignores_its_reply() -> None:
    core = ring()
    call = core.call(100, READ, 0.0)
    [(_, request)] = sent(core)
    core.cancel(call)
    assert core.next_tick() is None
    core.on_reply(wire.Reply.success(request["corr"], {}, [], "a", 0).to_wire(), 0.1)
    assert core.take() == []


# ---- wills ---------------------------------------------------------------------------------


def test_a_will_sends_a_repeatable_attempt_elsewhere_at_once() -> None:
    core = ring(durable=True)
    call = core.call(100, WRITE, 0.0)
    [(_, first)] = sent(core)
    core.on_announce(wire.HostGone("a", "i1").to_wire(), 0.1)
    assert core.take() == [AttemptFailed(call, WILL)]
    [(host, again)] = sent(core)
    assert host == "b" and again["op"]["req"] == first["op"]["req"]
    assert "a" not in core.hosts


def test_a_will_of_the_keys_owner_moves_an_attempt_sent_through_another_entry() -> None:
    core = ring()
    call = core.call(100, READ, 0.0)
    core.tick(ATTEMPT_WAIT)  # the owner `a` is silent: now through `b`
    assert [h for h, _ in sent(core)] == ["a", "b"]
    assert core.take() == [AttemptFailed(call, SILENCE)]
    core.on_announce(wire.HostGone("a", "i1").to_wire(), ATTEMPT_WAIT + 0.1)
    assert core.take() == [AttemptFailed(call, WILL)]


def test_a_will_leaves_a_memory_only_write_waiting() -> None:
    core = ring()
    core.call(100, WRITE, 0.0)
    sent(core)
    core.on_announce(wire.HostGone("a", "i1").to_wire(), 0.1)
    assert core.take() == [] and sent(core) == []
    assert core.next_tick() == REQUEST_TIMEOUT


def test_a_will_of_another_incarnation_changes_nothing_and_late_news_is_ignored() -> None:
    core = ring()
    core.on_announce(wire.HostGone("a", "old").to_wire(), 0.1)
    assert "a" in core.hosts
    core.on_announce(wire.HostGone("a", "i1").to_wire(), 0.2)
    announce(core, "a", 200, 0.3)  # sent before it died
    assert "a" not in core.hosts
    announce(core, "a", 200, 0.2 + HOST_FRESHNESS)  # it reconnected
    assert "a" in core.hosts


# ---- scans ---------------------------------------------------------------------------------


def test_a_scan_is_answered_or_fails_unavailable_on_silence_or_a_will() -> None:
    core = ring()
    answered = core.scan("a", -1, 10, 0.0)
    silent = core.scan("b", -1, 10, 0.0)
    [(_, first), (_, second)] = sent(core)
    assert first["t"] == wire.SCAN and (first["after"], first["limit"]) == (-1, 10)
    core.on_reply(wire.Reply.success(first["corr"], {"clients": []}, ["a"], "a", 0).to_wire(), 0.1)
    assert [(d.call, d.result) for d in completed(core)] == [(answered, {"clients": []})]
    core.tick(REQUEST_TIMEOUT)
    [done] = completed(core)
    assert done.call == silent and "did not answer a scan" in str(done.result)
    dying = core.scan("a", -1, 10, REQUEST_TIMEOUT)
    core.on_announce(wire.HostGone("a", "i1").to_wire(), REQUEST_TIMEOUT)
    [done] = completed(core)
    assert done.call == dying and "died during a scan" in str(done.result)
    assert second["corr"] != first["corr"]


# ---- batching and what is dropped ------------------------------------------------------------


def test_what_one_turn_sends_to_a_node_leaves_as_one_batch() -> None:
    core = ring()
    core.call(100, READ, 0.0)
    core.call(101, READ, 0.0)
    core.call(250, READ, 0.0)
    flushed = core.flush()
    assert [(t, m["t"]) for t, m in flushed] == [
        (topics.ring_host("a"), wire.BATCH),
        (topics.ring_host("b"), wire.REQUEST),
    ]
    assert core.flush() == []


def test_batched_chunks_long_queues_and_sends_a_lone_message_as_itself() -> None:
    messages = [{"t": "request", "n": n} for n in range(wire.MAX_BATCH + 1)]
    out = wire.batched({"x": messages, "y": messages[:1]})
    assert [(t, m["t"]) for t, m in out] == [("x", wire.BATCH), ("x", "request"), ("y", "request")]
    assert out[0][1]["msgs"] == messages[: wire.MAX_BATCH]


@pytest.mark.parametrize(
    ("topic", "message", "what"),
    [
        (REPLY_TOPIC, {"t": "batch", "msgs": "no"}, "batch of replies"),
        (REPLY_TOPIC, {"t": "reply", "corr": "c"}, "reply"),
        (topics.RING_ANNOUNCE, {"t": "announce", "host": "h"}, "announcement"),
        (topics.RING_ANNOUNCE, {"t": "host_gone", "host": ""}, "host_gone"),
        ("elsewhere", {}, "message"),
    ],
)
def test_malformed_input_is_dropped_and_counted(topic: str, message: dict, what: str) -> None:
    core = ring()
    core.receive(topic, message, 0.0)
    assert [w for w, _, _ in core.drops.to_wire()] == [what]
    assert core.take() == [] and core.flush() == []
