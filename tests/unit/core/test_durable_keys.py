"""A cache node's keys backed by replica groups (backend/core/ring/durable_keys.py), driven purely:
requests go in, proposals come out, the test commits them to real replica state
machines (tests/unit/core/durable_harness.py) and hands the answers back when it likes.

Times are explicit. LEASE = 0.6, LEASE_MARGIN = 0.1, RENEW_INTERVAL = 0.2,
QUEUE_LIMIT = PROPOSAL_DEADLINE = 4.0."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest

from backend.adapters.random_secrets import new_salt
from backend.core.model.identity import hash_token
from backend.core.raft import RaftOptions, bootstrap_state
from backend.core.replica import wire
from backend.core.replica.core import ReplicaCore, Send
from backend.core.replica.group import group_for
from backend.core.replica.state_machine import Proposal, encode_batch
from backend.core.ring import durable_keys as durable
from backend.core.ring.durable_keys import (
    LEASE,
    LEASE_MARGIN,
    MOVED,
    PROPOSAL_DEADLINE,
    QUEUE_LIMIT,
)
from tests.unit.core.durable_harness import Groups, Node, ops_of, where

G1, G2 = "g1", "g2"


def cids_of(group: str, count: int, groups: tuple[str, ...] = (G1, G2)) -> list[int]:
    found = [c for c in range(1, 10_000) if group_for(c, groups) == group]
    return found[:count]


K, K2, K3 = cids_of(G1, 3)
(L,) = cids_of(G2, 1)


def create(cid: int, name: str = "") -> dict[str, Any]:
    salt = new_salt()
    return {
        "op": "create_client",
        "cid": cid,
        "name": name or f"client-{cid}",
        "data": "",
        "created_at": 1,
        "token_salt": salt,
        "token_hash": hash_token("secret", salt),
    }


def insert(cid: int, title: str) -> dict[str, Any]:
    return {"op": "insert_task", "cid": cid, "title": title, "description": ""}


def list_tasks(cid: int) -> dict[str, Any]:
    return {"op": "list_tasks", "cid": cid}


def titles(result: dict[str, Any]) -> list[str]:
    assert result["ok"] is True, result
    return [t["title"] for t in result["result"]["tasks"]]


def seed(groups: Groups, *ops: dict[str, Any]) -> None:
    """Writes committed by some earlier user of the groups, before any cache node."""
    for op in ops:
        machine = groups.machine(group_for(op["cid"], sorted(groups.machines)))
        request = machine.applied_index + 1
        machine.apply_entry(request, encode_batch([Proposal("seed", request, 1, (op,))]))


def claims_in(sends: list[Send]) -> list[int]:
    return [op["cid"] for s in sends for op in s.message.get("ops", []) if op["op"] == "claim"]


def unavailable(result: dict[str, Any]) -> bool:
    return result["ok"] is False and result["error"]["code"] == "unavailable"


@pytest.fixture
def groups() -> Groups:
    g = Groups([G1, G2])
    seed(g, create(K), create(K2), create(L))
    return g


@pytest.fixture
def a(groups: Groups) -> Node:
    node = Node(groups, "a")
    node.start(0.0)
    return node


# ---- claims and writes -------------------------------------------------------------------


def test_a_cold_key_is_claimed_before_its_first_request_runs(groups: Groups, a: Node) -> None:
    a.submit("read", list_tasks(K), 0.0)
    [claim] = a.flush(0.0)
    assert where(claim) == (G1, 1)
    assert claim.message["ops"] == [{"op": "claim", "cid": K, "owner": "a/i1"}]
    assert "read" not in a.answers and K not in a.state.keys
    a.settle(0.0, [claim])
    assert titles(a.result("read")) == []
    assert a.answered_by["read"] == G1
    assert groups.machine(G1).owners[K] == "a/i1"


def test_a_claim_loads_the_keys_committed_state(groups: Groups, a: Node) -> None:
    seed(groups, insert(K, "earlier"))
    a.submit("read", list_tasks(K), 0.0)
    a.settle(0.0)
    assert titles(a.result("read")) == ["earlier"]


def test_a_write_changes_memory_only_once_committed_and_answers_with_the_groups_result(
    groups: Groups, a: Node
) -> None:
    a.submit("write", insert(K, "t"), 0.0)
    a.commit(a.flush(0.0), 0.0)  # the claim
    assert a.answers == {}
    [proposal] = a.flush(0.0)
    assert proposal.message["ops"] == [{**insert(K, "t"), "owner": "a/i1"}]
    assert a.state.keys[K].tasks == {}, "memory changed before the group committed"
    answer = groups.commit(proposal)
    assert groups.machine(G1).kv.keys[K].tasks == {"t": ""}
    assert a.state.keys[K].tasks == {}
    a.deliver(answer, 0.0)
    assert a.result("write") == answer["results"][0]
    assert a.result("write")["ok"] is True
    assert a.answered_by["write"] == G1
    assert a.state.keys[K].tasks == {"t": ""}


def test_an_operations_own_error_from_the_group_is_the_answer(a: Node) -> None:
    a.submit("write", create(K, "again"), 0.0)
    a.settle(0.0)
    assert a.result("write")["error"]["code"] == "exists"


def test_consecutive_writes_of_one_key_share_one_proposal_and_a_read_behind_them_waits(
    a: Node,
) -> None:
    a.submit("r0", list_tasks(K), 0.0)
    a.settle(0.0)
    a.submit("w1", insert(K, "1"), 0.1)
    a.submit("w2", insert(K, "2"), 0.1)
    a.submit("r1", list_tasks(K), 0.1)
    a.submit("w3", insert(K, "3"), 0.1)
    [first] = a.flush(0.1)
    assert ops_of(first) == ["insert_task", "insert_task"]
    a.commit([first], 0.1)
    assert "r1" not in a.answers  # served at the next flush, from the committed writes
    [second] = a.flush(0.1)
    assert titles(a.result("r1")) == ["1", "2"]
    assert ops_of(second) == ["insert_task"]
    a.settle(0.1, [second])
    assert a.order[-4:] == ["w1", "w2", "r1", "w3"]


def test_writes_of_different_keys_in_one_flush_share_one_proposal_per_group(a: Node) -> None:
    for cid in (K, K2, L):
        a.submit(f"read {cid}", list_tasks(cid), 0.0)
    claims = a.flush(0.0)
    assert sorted(where(s)[0] for s in claims) == [G1, G2]
    assert sorted(claims_in(claims)) == sorted([K, K2, L])
    a.settle(0.0, claims)
    for cid in (K, K2, L):
        a.submit(f"write {cid}", insert(cid, "t"), 0.1)
    sends = a.flush(0.1)
    by_group = {where(s)[0]: s for s in sends}
    assert len(sends) == 2
    assert sorted(op["cid"] for op in by_group[G1].message["ops"]) == sorted([K, K2])
    assert [op["cid"] for op in by_group[G2].message["ops"]] == [L]
    a.settle(0.1, sends)
    assert all(a.result(f"write {cid}")["ok"] for cid in (K, K2, L))
    assert a.answered_by[f"write {L}"] == G2


# ---- the lease ---------------------------------------------------------------------------


def test_reads_wait_for_the_first_renewal_and_are_served_once_it_is_committed(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    renewals = a.tick(0.0)
    assert [ops_of(s) for s in renewals] == [["renew"], ["renew"]]
    held = [groups.commit(s) for s in renewals]  # committed, answers not yet back
    a.submit("read", list_tasks(K), 0.0)
    a.settle(0.0)
    assert "read" not in a.answers
    for answer in held:
        a.deliver(answer, 0.05)
    a.flush(0.05)
    assert titles(a.result("read")) == []


def test_reads_are_served_until_lease_after_the_renewal_was_sent(groups: Groups) -> None:
    a = Node(groups, "a")
    sent_at = 0.0
    renewals = a.tick(sent_at)
    held = [groups.commit(s) for s in renewals]
    a.submit("claim it", list_tasks(K), 0.0)
    a.settle(0.0)
    for answer in held:
        a.deliver(answer, 0.3)  # answered late: the lease still counts from the send
    a.flush(0.3)
    assert "claim it" in a.answers
    assert a.keys.leases(0.3) == {G1: pytest.approx(0.3), G2: pytest.approx(0.3)}
    a.submit("just in time", list_tasks(K), sent_at + LEASE - 0.01)
    a.flush(sent_at + LEASE - 0.01)
    assert titles(a.result("just in time")) == []
    late = sent_at + LEASE
    a.submit("too late", list_tasks(K), late)
    renewal = a.flush(late)  # a read that finds the lease lapsed renews it at once
    assert [(where(s)[0], ops_of(s)) for s in renewal] == [(G1, ["renew"])]
    assert "too late" not in a.answers
    a.settle(late + 0.05, renewal)
    assert titles(a.result("too late")) == []
    a.submit("renewed", list_tasks(K), late + LEASE - 0.01)
    a.flush(late + LEASE - 0.01)
    assert "renewed" in a.answers


def test_renewals_go_out_every_renew_interval_one_per_group_at_a_time(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    every = durable.RENEW_INTERVAL
    first = a.tick(0.0)
    assert len(first) == 2
    assert a.tick(every) == []  # still waiting for the first ones
    a.commit(first, every + 0.05)
    assert a.tick(every + 0.1) == []  # the turn at `every` was skipped
    assert [ops_of(s) for s in a.tick(2 * every)] == [["renew"], ["renew"]]


def test_a_failed_renewal_leaves_the_lease_to_lapse(groups: Groups, a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    renewed = durable.RENEW_INTERVAL
    renewals = a.tick(renewed)
    assert len(renewals) == 2
    for send in renewals:
        a.deliver(groups.refuse(send, "bad_request"), renewed)  # final: not retried
    assert a.keys.leases(0.59) == {G1: pytest.approx(0.01), G2: pytest.approx(0.01)}
    a.submit("late", list_tasks(K), 0.6)
    a.flush(0.6)
    assert "late" not in a.answers


def renewals_until(node: Node, start: float, end: float) -> list[float]:
    """Tick every 0.1 s from `start` to `end`, committing what is sent; when renewals went."""
    sent_at = []
    now = start
    while now < end + 1e-9:
        sends = node.tick(now)
        if any(ops_of(s) == ["renew"] for s in sends):
            sent_at.append(now)
        node.settle(now, sends)
        now = round(now + 0.1, 6)
    return sent_at


def test_leases_are_renewed_only_while_reads_keep_coming(groups: Groups, a: Node) -> None:
    a.submit("read", list_tasks(K), 0.1)
    a.settle(0.1)
    assert titles(a.result("read")) == []
    keep = durable.LEASE_KEEP
    renewed = renewals_until(a, 0.2, 0.1 + keep + 1.0)
    assert renewed and max(renewed) < 0.1 + keep  # every RENEW_INTERVAL, then no more
    gaps = [later - earlier for earlier, later in itertools.pairwise(renewed)]
    assert min(gaps) >= durable.RENEW_INTERVAL - 1e-9


def test_a_node_that_only_writes_sends_no_renewals(groups: Groups, a: Node) -> None:
    start = durable.LEASE_KEEP + 0.1  # past the renewals every node makes as it starts
    assert renewals_until(a, 0.1, start) != []
    now = start
    for n in range(20):
        a.submit(f"write {n}", insert(K, f"t{n}"), now)
        sends = a.flush(now) + a.tick(now)
        assert all("renew" not in ops_of(s) for s in sends)
        a.settle(now, sends)
        assert a.result(f"write {n}")["ok"] is True
        now = round(now + 0.3, 6)


def test_a_read_after_a_long_idle_spell_renews_at_once_and_is_served_once_committed(
    groups: Groups, a: Node
) -> None:
    a.submit("write", insert(K, "kept"), 0.1)
    a.settle(0.1)
    renewals_until(a, 0.2, 30.0)
    a.submit("read", list_tasks(K), 30.05)
    [renewal] = a.flush(30.05)
    assert (where(renewal)[0], ops_of(renewal)) == (G1, ["renew"])
    assert "read" not in a.answers
    a.settle(30.06, [renewal])
    assert titles(a.result("read")) == ["kept"]
    assert a.keys.leases(30.06)[G1] == pytest.approx(LEASE - 0.01)


# ---- taking keys from others -------------------------------------------------------------


def test_a_key_claimed_from_another_live_node_waits_out_its_lease_before_serving(
    groups: Groups, a: Node
) -> None:
    a.submit("a", list_tasks(K), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    b.submit("read", list_tasks(K), 0.1)
    b.submit("write", insert(K, "b"), 0.1)
    b.settle(0.1)
    assert groups.machine(G1).owners[K] == "b/i1"
    ready_at = 0.1 + LEASE + LEASE_MARGIN
    b.settle(0.5, b.tick(0.5))  # renewed, but the key still waits
    b.settle(ready_at - 0.01, b.tick(ready_at - 0.01))
    assert b.answers == {}
    b.settle(ready_at, b.tick(ready_at))
    assert titles(b.result("read")) == []
    assert b.result("write")["ok"] is True
    assert b.order == ["read", "write"]


def test_a_key_of_an_earlier_incarnation_of_this_host_waits_only_until_a_lease_after_start(
    groups: Groups, a: Node
) -> None:
    # The earlier incarnation is dead, but it may have displaced a live owner just
    # before dying; that owner's lease has run out a lease after this one started.
    a.submit("a", insert(K, "before"), 0.0)
    a.settle(0.0)
    restarted = Node(groups, "a", "i2", now=0.1)
    restarted.start(0.1)
    restarted.submit("read", list_tasks(K), 0.1)
    restarted.settle(0.1)
    assert "read" not in restarted.answers
    served_from = 0.1 + LEASE + LEASE_MARGIN
    restarted.settle(served_from, restarted.tick(served_from))
    assert titles(restarted.result("read")) == ["before"]
    late = Node(groups, "a", "i3", now=5.0)
    late.start(5.0 + LEASE + LEASE_MARGIN)
    late.submit("late", list_tasks(K), 5.0 + LEASE + LEASE_MARGIN)
    late.settle(5.0 + LEASE + LEASE_MARGIN)  # started long enough ago: at once
    assert titles(late.result("late")) == ["before"]


def test_a_host_whose_id_starts_with_this_hosts_id_is_another_node(groups: Groups) -> None:
    other = Node(groups, "a1")
    other.start(0.0)
    other.submit("x", list_tasks(K), 0.0)
    other.settle(0.0)
    a = Node(groups, "a")
    a.start(0.1)
    a.submit("read", list_tasks(K), 0.1)
    a.settle(0.1)
    assert "read" not in a.answers  # a1/i1 is not an earlier a: wait out its lease


def test_a_fenced_write_answers_unavailable_and_drops_the_key(groups: Groups, a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    b.submit("b", list_tasks(K), 0.1)
    b.settle(0.1)
    a.submit("write", insert(K, "late"), 0.2)
    a.submit("queued", list_tasks(K), 0.2)
    [write] = a.flush(0.2)
    answer = groups.commit(write)
    assert answer["results"][0]["fenced"] is True
    a.deliver(answer, 0.2)
    assert a.result("write") == {
        "ok": False,
        "error": {"code": "unavailable", "message": MOVED},
    }
    assert unavailable(a.result("queued"))
    assert K not in a.keys.keys and K not in a.state.keys
    assert groups.machine(G1).kv.keys[K].tasks == {}


# ---- revocations -------------------------------------------------------------------------


def test_a_renewals_revoked_keys_leave_memory_and_their_waiting_requests_answer_unavailable(
    groups: Groups, a: Node
) -> None:
    for cid in (K, K2):
        a.submit(f"r{cid}", list_tasks(cid), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    b.submit("b", list_tasks(K), 0.1)
    b.settle(0.1)
    a.submit("waits for the lease", list_tasks(K), 0.7)
    renewal = a.flush(0.7)
    assert "waits for the lease" not in a.answers
    a.settle(0.7, renewal)
    assert a.result("waits for the lease") == {
        "ok": False,
        "error": {"code": "unavailable", "message": MOVED},
    }
    assert K not in a.state.keys and K not in a.keys.keys
    assert K2 in a.state.keys
    a.submit("again", list_tasks(K), 0.8)
    assert claims_in(a.flush(0.8)) == [K]  # cold now: claimed again


def test_all_revoked_drops_the_groups_keys_claimed_before_the_renewal_only(
    groups: Groups,
) -> None:
    seed(groups, create(K3))
    a = Node(groups, "a")  # the group has never heard of it
    for cid in (K, K2, L):
        a.submit(f"r{cid}", list_tasks(cid), 0.0)
    a.commit(a.flush(0.0), 0.0)  # claimed before any renewal
    renewals = {where(s)[0]: s for s in a.flush(0.0)}  # the reads ask for the leases
    g1_answer = groups.commit(renewals[G1])
    assert g1_answer["results"][0]["result"]["revoked"] is None
    a.submit("after", list_tasks(K3), 0.0)
    a.settle(0.0)  # K3's claim lands after the renewal in g1's log
    a.deliver(g1_answer, 0.05)
    assert set(a.keys.keys) == {K3, L}
    assert set(a.state.keys) == {K3, L}
    a.commit([renewals[G2]], 0.05)
    assert set(a.keys.keys) == {K3}


# ---- unknown outcomes, expiry ------------------------------------------------------------


def run_to(
    node: Node, start: float, end: float, let_through: Callable[[Send], bool] = lambda _s: False
) -> list[Send]:
    """Tick every 0.1 s from `start` to `end`; what the node sends is committed and answered
    if `let_through` says so, else lost (and returned)."""
    lost: list[Send] = []
    now = start
    while now < end + 1e-9:
        for send in node.tick(now):
            if let_through(send):
                node.commit([send], now)
            else:
                lost.append(send)
        now = round(now + 0.1, 6)
    return lost


def test_a_write_whose_outcome_is_unknown_answers_timeout_and_the_key_is_claimed_again(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    a.start(0.0)
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    a.submit("write", insert(K, "maybe"), 0.1)
    [write] = a.flush(0.1)
    groups.commit(write)  # applied; its answers never arrive
    run_to(a, 0.2, 0.1 + PROPOSAL_DEADLINE)  # every answer lost, renewals' too
    assert a.result("write")["error"]["code"] == "timeout"
    a.settle(4.5, a.tick(4.5))  # renewals go through again
    a.submit("read", list_tasks(K), 4.5)
    sends = a.flush(4.5)
    assert claims_in(sends) == [K]
    a.settle(4.5, sends)
    assert titles(a.result("read")) == ["maybe"]  # memory was reloaded from the group


def test_a_write_every_member_refused_answers_unavailable_and_the_key_stays_served(
    groups: Groups, a: Node
) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    a.submit("write", insert(K, "no"), 0.1)
    pending = a.flush(0.1)
    now = 0.1
    while "write" not in a.answers:
        assert now < 10
        for send in pending:
            if "insert_task" in ops_of(send):
                a.deliver(groups.refuse(send, "unavailable", "no quorum"), now)
            else:
                a.commit([send], now)
        now = round(now + 0.05, 6)
        pending = a.tick(now)
    assert a.result("write") == {
        "ok": False,
        "error": {"code": "unavailable", "message": "no quorum"},
    }
    a.submit("read", list_tasks(K), now)
    sends = a.flush(now)
    assert claims_in(sends) == []  # still ours: at most its lease is renewed
    a.settle(now, sends)
    assert titles(a.result("read")) == []


def test_a_claim_without_an_answer_answers_its_queue_unavailable_and_leaves_the_key_cold(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    a.submit("read", list_tasks(K), 0.0)
    assert claims_in(a.flush(0.0)) == [K]
    run_to(a, 0.1, PROPOSAL_DEADLINE)
    assert unavailable(a.result("read"))
    assert "loading the key" in a.result("read")["error"]["message"]
    a.submit("again", list_tasks(K), 4.1)
    assert claims_in(a.flush(4.1)) == [K]


def test_requests_queued_longer_than_the_queue_limit_answer_unavailable(a: Node) -> None:
    a.submit("old", list_tasks(K), 0.5)  # waited elsewhere first: the clock runs from `since`
    a.submit("newer", list_tasks(K), 1.5)
    assert claims_in(a.flush(1.5)) == [K]  # the claim's answers are lost

    def not_a_claim(send: Send) -> bool:
        return claims_in([send]) == []

    run_to(a, 1.6, 0.5 + QUEUE_LIMIT - 0.1, not_a_claim)
    assert a.answers == {}
    a.tick(0.5 + QUEUE_LIMIT)
    assert unavailable(a.result("old"))
    assert a.result("old")["error"]["message"].startswith("not applied: the key was not ready")
    assert "newer" not in a.answers


def test_abandoning_answers_every_request_not_yet_proposed_and_leaves_writes_in_flight(
    a: Node,
) -> None:
    for cid in (K, K2):
        a.submit(f"r{cid}", list_tasks(cid), 0.0)
    a.settle(0.0)
    a.submit("in flight", insert(K, "t"), 0.1)
    [write] = a.flush(0.1)
    a.submit("behind it", list_tasks(K), 0.1)
    a.submit("cold", list_tasks(L), 0.1)
    a.keys.abandon_queued("the node is leaving")
    a.flush(0.1)
    for label in ("behind it", "cold"):
        assert a.result(label)["error"] == {
            "code": "unavailable",
            "message": "not applied: the node is leaving",
        }
    assert "in flight" not in a.answers
    a.commit([write], 0.1)
    assert a.result("in flight")["ok"] is True


# ---- forgetting --------------------------------------------------------------------------


def test_forget_drops_an_idle_key_from_memory(a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    assert a.keys.forget(K) is True
    assert K not in a.state.keys and K not in a.keys.keys
    assert a.keys.forget(12345) is True  # never held: nothing to do


def test_forget_refuses_a_key_being_claimed(a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.flush(0.0)
    assert a.keys.forget(K) is False


def test_forget_refuses_a_key_with_waiting_requests(a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    a.submit("waits", list_tasks(K), 0.9)  # the lease has lapsed
    a.flush(0.9)
    assert a.keys.forget(K) is False


def test_forget_refuses_a_key_with_writes_in_flight(groups: Groups, a: Node) -> None:
    a.submit("r", list_tasks(K), 0.0)
    a.settle(0.0)
    a.submit("w", insert(K, "t"), 0.1)
    [write] = a.flush(0.1)
    assert a.keys.forget(K) is False
    a.commit([write], 0.1)
    assert a.keys.forget(K) is True


# ---- scans -------------------------------------------------------------------------------


def test_scan_merges_every_groups_clients_in_cid_order_up_to_the_limit(
    groups: Groups, a: Node
) -> None:
    a.scan("scan", -1, 2, 0.0)
    reads = a.take()
    assert sorted(where(s)[0] for s in reads) == [G1, G2]
    assert all(s.message["t"] == wire.READ for s in reads)
    a.commit(reads[:1], 0.0)
    assert "scan" not in a.answers  # waits for every group
    a.commit(reads[1:], 0.0)
    result = a.result("scan")
    assert [c["cid"] for c in result["result"]["clients"]] == sorted([K, K2, L])[:2]
    a.scan("after", sorted([K, K2, L])[0], 10, 0.1)
    a.commit(a.take(), 0.1)
    assert [c["cid"] for c in a.result("after")["result"]["clients"]] == sorted([K, K2, L])[1:]


def test_scan_answers_unavailable_once_when_one_group_does_not_answer(
    groups: Groups, a: Node
) -> None:
    a.scan("scan", -1, 10, 0.0)
    reads = {where(s)[0]: s for s in a.take()}
    a.commit([reads[G1]], 0.0)
    run_to(a, 0.1, PROPOSAL_DEADLINE + 0.5)
    result = a.result("scan")
    assert unavailable(result)
    assert result["error"]["message"].startswith("listing clients")


def test_scan_answers_unavailable_when_a_group_refuses_the_read(groups: Groups, a: Node) -> None:
    a.scan("scan", -1, 10, 0.0)
    reads = {where(s)[0]: s for s in a.take()}
    a.deliver(groups.refuse(reads[G2], "bad_request", "no such read"), 0.0)
    assert "scan" not in a.answers
    a.commit([reads[G1]], 0.0)
    assert unavailable(a.result("scan"))
    assert "no such read" in a.result("scan")["error"]["message"]


# ---- two nodes, one group: fencing end to end ---------------------------------------------


def test_a_key_taken_by_another_node_fences_the_old_owner_and_the_new_one_waits(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    a.start(0.0)
    a.submit("a-create", insert(K, "from a"), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.1)
    b.submit("b-read", list_tasks(K), 0.1)
    b.settle(0.1)  # b owns the key now, and waits until 0.8
    # a's lease (renewed at 0) still covers reads; they see the last committed state
    a.submit("a-read", list_tasks(K), 0.15)
    a.flush(0.15)
    assert titles(a.result("a-read")) == ["from a"]
    # a's next write is fenced: not applied, and a forgets the key
    a.submit("a-write", insert(K, "stale"), 0.2)
    a.settle(0.2)
    assert a.result("a-write")["error"] == {"code": "unavailable", "message": MOVED}
    assert groups.machine(G1).kv.keys[K].tasks == {"from a": ""}
    assert K not in a.state.keys
    # b serves only once a's lease is surely over
    for now in (0.3, 0.5, 0.79):
        b.settle(now, b.tick(now))
        assert "b-read" not in b.answers
    b.settle(0.8, b.tick(0.8))
    assert titles(b.result("b-read")) == ["from a"]
    b.submit("b-write", insert(K, "from b"), 0.85)
    b.settle(0.85)
    assert b.result("b-write")["ok"] is True


def test_the_old_owners_reads_stop_once_its_renewal_reports_the_key_taken(
    groups: Groups,
) -> None:
    a = Node(groups, "a")
    a.start(0.0)
    a.submit("a-create", insert(K, "from a"), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.1)
    b.submit("b-read", list_tasks(K), 0.1)
    b.settle(0.1)
    renewed = durable.RENEW_INTERVAL
    renewal = a.tick(renewed)  # committed after b's claim: it names the key
    a.settle(renewed, renewal)
    assert K not in a.state.keys
    a.submit("a-read", list_tasks(K), renewed + 0.05)
    sends = a.flush(renewed + 0.05)
    assert "a-read" not in a.answers  # not from memory: it claims the key first
    assert claims_in(sends) == [K]
    # b, meanwhile, never served before its wait ended
    b.settle(renewed + 0.1, b.tick(renewed + 0.1))
    assert "b-read" not in b.answers


def assert_not_stale(node: Node, label: str, groups: Groups) -> None:
    """Nothing wrote the key while `label` ran: it must see what the group committed."""
    committed = list(groups.machine(G1).kv.keys[K].tasks)
    assert titles(node.result(label)) == committed, "served a stale read from memory"


# ---- found wanting -----------------------------------------------------------------------
#
# Each test below fails against durable_keys.py / state_machine.py as they stand; see the
# comment in each for the sequence and why the answer it checks is the right one.


def test_a_renewal_whose_answer_never_arrives_still_ends_reads_of_the_keys_it_revoked(
    groups: Groups,
) -> None:
    # a's renewal commits after b's claim, so the group hands it "[K] revoked" and
    # empties a's list; the answer is lost and the proposal times out. a's next
    # renewal hears "nothing revoked", so unless a treats the lost answer as "maybe
    # all revoked", it goes on serving K from memory while b owns and writes K.
    a = Node(groups, "a")
    a.start(0.0)
    a.submit("a-read", list_tasks(K), 0.0)
    a.settle(0.0)
    b = Node(groups, "b")
    b.start(0.1)
    b.submit("b-read", list_tasks(K), 0.1)
    b.settle(0.1)
    renewed = durable.RENEW_INTERVAL
    [renewal] = [s for s in a.tick(renewed) if where(s)[0] == G1]
    lost = groups.commit(renewal)
    assert lost["results"][0]["result"]["revoked"] == [K]
    b.settle(0.8, b.tick(0.8))
    b.submit("b-write", insert(K, "from b"), 0.9)
    b.settle(0.9)
    assert b.result("b-write")["ok"] is True

    def not_g1_renewal(send: Send) -> bool:
        return not (where(send)[0] == G1 and ops_of(send) == ["renew"])

    # its retries are lost too
    run_to(a, renewed + 0.1, renewed + PROPOSAL_DEADLINE, not_g1_renewal)
    a.settle(4.5, a.tick(4.5))  # the next renewal goes through: "nothing revoked"
    a.submit("a-read-late", list_tasks(K), 4.55)
    a.settle(4.55)
    run_to(a, 4.6, 5.5, lambda _send: True)  # time for a claim to wait out b's lease
    assert_not_stale(a, "a-read-late", groups)


def test_a_renewal_answered_while_a_claim_is_in_flight_still_revokes_it(
    groups: Groups,
) -> None:
    # Log order: a claims K (3), b claims K (4), a renews (5): "[K] revoked". The
    # renewal's answer reaches a before the claim's (another member answered it
    # first, e.g. after a leader change). a skips K because it is still claiming;
    # the claim's answer then makes K ready, and no later renewal names it again.
    a = Node(groups, "a")
    a.start(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    a.submit("a-read", list_tasks(K), 0.1)
    [claim] = a.flush(0.1)
    claim_answer = groups.commit(claim)
    b.submit("b-read", list_tasks(K), 0.1)
    b.settle(0.1)
    renewed = durable.RENEW_INTERVAL
    [renewal] = [s for s in a.tick(renewed) if where(s)[0] == G1]
    renewal_answer = groups.commit(renewal)
    assert renewal_answer["results"][0]["result"]["revoked"] == [K]
    assert claim_answer["index"] < renewal_answer["index"]
    a.deliver(renewal_answer, renewed)
    a.deliver(claim_answer, renewed + 0.05)
    a.settle(renewed + 0.05)
    b.settle(0.8, b.tick(0.8))
    b.submit("b-write", insert(K, "from b"), 0.85)
    b.settle(0.85)
    a.settle(0.9, a.tick(0.9))  # renewed: nothing more revoked
    a.submit("a-read-late", list_tasks(K), 0.95)
    a.settle(0.95)
    run_to(a, 1.0, 1.8, lambda _send: True)  # time for a claim to wait out b's lease
    assert_not_stale(a, "a-read-late", groups)


def test_a_claim_answered_from_the_answer_table_is_still_revoked_by_a_later_renewal(
    groups: Groups,
) -> None:
    # As above, but the claim's first answer is lost and its retry is answered from
    # the group's answer table, at the group's current applied index (5), not the
    # claim's own (3); the index of that answer cannot tell whether the claim came
    # before or after the renewal (5) that revoked K.
    a = Node(groups, "a")
    a.start(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    a.submit("a-read", list_tasks(K), 0.1)
    [claim] = a.flush(0.1)
    groups.commit(claim)  # applied; the answer is lost
    b.submit("b-read", list_tasks(K), 0.1)
    b.settle(0.1)
    renewed = durable.RENEW_INTERVAL
    [renewal] = [s for s in a.tick(renewed) if where(s)[0] == G1]
    a.commit([renewal], renewed)
    retries = run_to(a, renewed + 0.1, 1.1, lambda send: claims_in([send]) == [])
    assert retries, "the claim was not retried"
    retry_answer = groups.commit(retries[0])
    assert retry_answer["index"] == groups.machine(G1).applied_index
    a.deliver(retry_answer, 1.1)
    a.settle(1.1)
    b.settle(1.2, b.tick(1.2))
    b.submit("b-write", insert(K, "from b"), 1.25)
    b.settle(1.25)
    a.settle(1.3, a.tick(1.3))
    a.submit("a-read-late", list_tasks(K), 1.35)
    a.settle(1.35)
    run_to(a, 1.4, 2.2, lambda _send: True)  # time for a claim to wait out b's lease
    assert_not_stale(a, "a-read-late", groups)


def test_a_key_its_owner_took_back_before_renewing_stays_served(groups: Groups) -> None:
    # b claims K from a, a claims it back; a's next renewal still lists K as revoked
    # (state_machine._claim leaves K on a's list), so a drops a key it owns and answers
    # the requests waiting for it "moved".
    a = Node(groups, "a")
    a.start(0.0)
    b = Node(groups, "b")
    b.start(0.0)
    a.submit("a-1", list_tasks(K), 0.0)
    a.settle(0.0)
    b.submit("b-1", list_tasks(K), 0.1)
    b.settle(0.1)
    a.submit("a-fenced", insert(K, "x"), 0.15)
    a.settle(0.15)
    assert unavailable(a.result("a-fenced"))
    a.submit("a-2", list_tasks(K), 0.2)
    a.settle(0.2)  # claimed back; waits out b's lease until 0.9
    assert groups.machine(G1).owners[K] == "a/i1"
    a.settle(0.3, a.tick(0.3))
    assert "a-2" not in a.answers, "a dropped the key it had just claimed back"
    a.settle(0.9, a.tick(0.9))
    assert titles(a.result("a-2")) == []


def test_a_malformed_write_fails_alone_without_sinking_the_proposal_it_shares(
    groups: Groups, a: Node
) -> None:
    # The group checks a whole propose message and refuses all of it for one bad
    # operation; the cache node hands any operation that names itself a write to the
    # group, so another client's good write in the same flush is answered bad_request.
    for cid in (K, K2):
        a.submit(f"r{cid}", list_tasks(cid), 0.0)
    a.settle(0.0)
    a.submit("good", insert(K, "fine"), 0.1)
    a.submit("bad", {"op": "insert_task", "cid": K2, "title": 5, "description": ""}, 0.1)
    a.settle(0.1)
    assert a.result("bad")["error"]["code"] == "bad_request"
    assert a.result("good")["ok"] is True, a.result("good")


# ---- the stand-in group answers as ReplicaCore does ----------------------------------------


def test_the_stand_in_group_answers_a_repeated_proposal_as_a_replica_core_does() -> None:
    """A retried proposal already applied is answered from the table at the applied index
    (the premise of the answer-table test above), by the real core and by the stand-in."""
    core = ReplicaCore(
        G1, 1, bootstrap_state([1]), lambda m: f"member/{m}", random.Random(1), RaftOptions()
    )
    now = 0.0
    while not core.node.is_leader:
        now += 0.05
        core.tick(now)
        _run_ready(core, now)
    stand_in = Groups([G1])
    first = wire.Propose(
        "c1", "reply", "x", 1, 1, [{"op": "claim", "cid": K, "owner": "a/1"}]
    ).to_wire()
    other = wire.Propose(
        "c2", "reply", "y", 1, 1, [{"op": "renew", "cid": 0, "owner": "b/1"}]
    ).to_wire()
    retry = {**first, "corr": "c3"}
    real = [_real_answer(core, m, now) for m in (first, other, retry)]
    fake = [stand_in.commit(Send("taskring/v1/raft/g1/1", m)) for m in (first, other, retry)]
    offset = real[0]["index"] - fake[0]["index"]  # the real log starts with a no-op
    assert [_outcomes(r) for r in real] == [_outcomes(f) for f in fake]
    assert [r["index"] - offset for r in real] == [f["index"] for f in fake]
    assert real[2]["index"] == real[1]["index"] > real[0]["index"]


def _outcomes(answer: dict[str, Any]) -> list[Any]:
    fields = ("key", "previous", "revoked")
    return [
        (r["ok"], {f: r["result"][f] for f in fields if f in r["result"]})
        for r in answer["results"]
    ]


def _run_ready(core: ReplicaCore, now: float) -> list[Send]:
    sends = core.flush(now)
    while (ready := core.next_ready()) is not None:
        sends.extend(core.after_persist(ready, now))
        sends.extend(core.flush(now))
    return sends


def _real_answer(core: ReplicaCore, message: dict[str, Any], now: float) -> dict[str, Any]:
    sends = core.receive(message, now) + _run_ready(core, now)
    [answer] = [s.message for s in sends if s.topic == "reply"]
    return answer


def test_a_claim_whose_answer_was_lost_still_waits_out_the_owner_it_displaced(
    groups: Groups, a: Node
) -> None:
    a.submit("a", list_tasks(K), 0.0)
    a.settle(0.0)  # a owns K and serves it under its lease
    b = Node(groups, "b")
    b.start(0.0)
    b.submit("lost", list_tasks(K), 0.1)
    [claim] = b.flush(0.1)
    groups.commit(claim)  # b's claim displaces a, but its answer never arrives
    run_to(b, 0.15, 0.2 + PROPOSAL_DEADLINE, lambda send: "claim" not in ops_of(send))
    assert unavailable(b.result("lost"))
    now = 0.3 + PROPOSAL_DEADLINE
    b.submit("read", list_tasks(K), now)
    b.settle(now)  # the new claim finds b itself as the previous owner...
    assert "read" not in b.answers  # ...yet a's lease may still run: b waits it out
    later = now + LEASE + LEASE_MARGIN
    b.settle(later, b.tick(later))
    assert titles(b.result("read")) == []
