"""One replica's logic around Raft: who is answered what, and when.

Each test runs a whole group of ReplicaCores in one process (replica_harness.py)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core.replica import wire
from backend.core.replica.state_machine import ReplicaStateMachine
from tests.unit.core.replica_harness import REPLY, Group

CID = 42


def answered(group: Group, corr: str) -> dict[str, Any]:
    """The group's answer to proposal `corr`, which must have come."""
    answer = group.answer(corr)
    assert answer is not None, f"no answer to {corr}"
    return answer


def create() -> dict[str, Any]:
    return {
        "op": "create_client",
        "cid": CID,
        "name": "alice",
        "data": "",
        "created_at": 1,
        "token_salt": b"salt",
        "token_hash": b"hash",
    }


def insert(title: str) -> dict[str, Any]:
    return {"op": "insert_task", "cid": CID, "title": title, "description": ""}


def propose(corr: str, request: int, *ops: dict[str, Any], client: str = "c1") -> dict:
    return wire.Propose(corr, REPLY, client, request, 1, list(ops)).to_wire()


def titles(group: Group, member: int) -> list[str]:
    key = group.core(member).machine.kv.keys.get(CID)
    return list(key.tasks) if key else []


def test_a_proposal_is_answered_once_committed_and_applied_everywhere() -> None:
    group = Group()
    leader = group.elect()
    group.deliver(leader, propose("p1", 1, create(), insert("a")))
    assert group.answer("p1") is None  # not before it is durable on a majority
    group.settle()
    answer = group.answer("p1")
    assert answer is not None and answer["ok"] is True and answer["member"] == leader
    assert [r["ok"] for r in answer["results"]] == [True, True]
    group.step(2)  # followers learn the commit index from the next heartbeat
    assert all(titles(group, m) == ["a"] for m in group.ids)


def test_proposals_arriving_together_share_one_log_entry() -> None:
    group = Group()
    leader = group.elect()
    before = group.core(leader).node.last_index
    group.deliver(leader, propose("p1", 1, create()))
    for n in range(2, 12):
        group.deliver(leader, propose(f"p{n}", n, insert(f"t{n}")))
    group.settle()
    assert group.core(leader).node.last_index == before + 1
    assert all(answered(group, f"p{n}")["ok"] for n in range(1, 12))


def test_a_follower_refuses_and_names_the_leader() -> None:
    group = Group()
    leader = group.elect()
    follower = next(m for m in group.ids if m != leader)
    group.deliver(follower, propose("p1", 1, create()))
    answer = group.answer("p1")
    assert answer is not None and answer["ok"] is False
    assert answer["error"]["code"] == "unavailable" and answer["leader"] == leader
    group.settle()
    assert titles(group, leader) == []


def test_a_duplicate_is_answered_from_the_answer_table_without_a_new_entry() -> None:
    group = Group()
    leader = group.elect()
    group.deliver(leader, propose("p1", 1, create(), insert("a")))
    group.settle()
    last = group.core(leader).node.last_index
    group.deliver(leader, propose("p1-again", 1, create(), insert("a")))
    again = group.answer("p1-again")
    assert again is not None and again["results"] == answered(group, "p1")["results"]
    assert group.core(leader).node.last_index == last
    # two copies of one proposal in the log (QoS 1 redelivered it) still apply once
    group.deliver(leader, propose("p2", 3, insert("b")))
    group.deliver(leader, propose("p2", 3, insert("b")))
    group.settle()
    p2 = [a for a in group.answers if a["corr"] == "p2"]
    assert len(p2) == 2 and p2[0]["results"] == p2[1]["results"]
    assert p2[0]["results"][0]["ok"] is True
    assert titles(group, leader) == ["a", "b"]


def test_a_malformed_proposal_is_refused_as_a_bad_request() -> None:
    group = Group()
    leader = group.elect()
    group.deliver(leader, propose("p1", 1, {"op": "insert_task", "cid": CID}))
    answer = group.answer("p1")
    assert answer is not None and answer["error"]["code"] == "bad_request"
    group.deliver(leader, {"t": "propose", "ops": []})  # nowhere to answer: dropped
    group.deliver(leader, {"t": "mystery"})
    assert len(group.answers) == 1


def test_an_entry_lost_to_a_new_leader_is_answered_unavailable() -> None:
    """Log Matching (§5.3): the entry committed at our index has another term, so ours never
    commits; the proposal was certainly not applied."""
    group = Group()
    old = group.elect()
    group.isolate(old)
    group.deliver(old, propose("lost", 1, create()))
    group.settle()  # appended by the old leader alone: no majority
    assert group.answer("lost") is None
    group.run_until(lambda: any(group.core(m).node.is_leader for m in group.ids if m != old))
    new = next(m for m in group.ids if m != old and group.core(m).node.is_leader)
    group.deliver(new, propose("won", 1, create(), client="c2"))
    group.deliver(new, propose("more", 2, insert("x"), client="c2"))
    group.settle()
    group.heal()
    group.run_until(lambda: group.answer("lost") is not None)
    answer = group.answer("lost")
    assert answer is not None and answer["error"]["code"] == "unavailable"
    group.step(3)
    assert all(titles(group, m) == ["x"] for m in group.ids)


def test_a_lost_entry_whose_retry_was_applied_is_answered_with_the_retry_result() -> None:
    group = Group()
    old = group.elect()
    group.isolate(old)
    group.deliver(old, propose("other", 1, insert("x"), client="c9"))
    group.settle()
    group.deliver(old, propose("first-try", 1, create()))  # the entry after it
    group.settle()
    group.run_until(lambda: any(group.core(m).node.is_leader for m in group.ids if m != old))
    new = next(m for m in group.ids if m != old and group.core(m).node.is_leader)
    group.deliver(new, propose("retry", 1, create()))  # lands where first-try was
    group.settle()
    group.heal()
    group.run_until(lambda: group.answer("first-try") is not None)
    assert answered(group, "first-try")["ok"] is True
    assert answered(group, "first-try")["results"] == answered(group, "retry")["results"]
    assert answered(group, "other")["error"]["code"] == "unavailable"


def test_without_a_majority_a_proposal_times_out_it_is_never_acknowledged() -> None:
    group = Group(proposal_timeout=2.0)
    leader = group.elect()
    for member in group.ids:
        if member != leader:
            group.crash(member)
    group.deliver(leader, propose("p1", 1, create()))
    group.settle()
    group.run_until(lambda: group.answer("p1") is not None, ticks=100)
    answer = group.answer("p1")
    assert answer is not None and answer["ok"] is False
    assert answer["error"]["code"] == "timeout"  # the entry is in a log: it may yet commit
    # and the lone member stepped down (check-quorum), so new proposals are refused
    group.deliver(leader, propose("p2", 2, insert("a")))
    assert answered(group, "p2")["error"]["code"] == "unavailable"


def test_reads_are_linearizable_and_served_by_the_leader_only() -> None:
    group = Group()
    leader = group.elect()
    group.deliver(leader, propose("p1", 1, create(), insert("a")))
    group.settle()
    group.deliver(leader, wire.Read("r1", REPLY, [{"op": "list_tasks", "cid": CID}]).to_wire())
    assert group.answer("r1") is None  # waits for a heartbeat round to confirm leadership
    group.settle()
    read = group.answer("r1")
    assert read is not None and read["ok"] is True
    assert read["results"][0]["result"]["tasks"] == [{"title": "a", "description": ""}]
    follower = next(m for m in group.ids if m != leader)
    group.deliver(follower, wire.Read("r2", REPLY, [{"op": "list_tasks", "cid": CID}]).to_wire())
    assert answered(group, "r2")["error"]["code"] == "unavailable"


def test_a_read_on_a_deposed_leader_is_never_served() -> None:
    group = Group()
    old = group.elect()
    group.isolate(old)
    group.deliver(old, wire.Read("r1", REPLY, [{"op": "list_tasks", "cid": CID}]).to_wire())
    group.run_until(lambda: group.answer("r1") is not None)
    assert answered(group, "r1")["error"]["code"] == "unavailable"


WRITTEN_WHILE_LAGGING = [f"t{n}" for n in range(2, 30)]


def write_while_one_lags(group: Group, step: bool = False) -> tuple[int, int]:
    """Elect a leader, crash another member, and commit WRITTEN_WHILE_LAGGING without it
    (`step`: a tick after each, so background snapshots can finish); (leader, lagging)."""
    leader = group.elect()
    lagging = next(m for m in group.ids if m != leader)
    group.crash(lagging)
    group.deliver(leader, propose("p0", 1, create()))
    group.settle()
    for n in range(2, 30):
        group.deliver(leader, propose(f"p{n}", n, insert(f"t{n}")))
        group.settle()
        if step:
            group.step()
    return leader, lagging


def restart_every_member_from_disk(group: Group) -> None:
    for member in group.ids:
        group.crash(member)
        group.restart(member)
    group.elect()
    group.step(3)
    assert all(titles(group, m) == WRITTEN_WHILE_LAGGING for m in group.ids)


def test_a_member_far_behind_catches_up_from_a_snapshot_and_restarts_from_disk() -> None:
    group = Group(snapshot_every=5)
    leader, lagging = write_while_one_lags(group)
    assert group.core(leader).node.log.snapshot.index > 10
    group.restart(lagging)
    group.run_until(lambda: titles(group, lagging) == WRITTEN_WHILE_LAGGING)
    # the restored answer table still catches a retry
    group.deliver(group.leader() or leader, propose("dup", 5, insert("t5")))
    group.settle()
    assert answered(group, "dup")["results"][0]["ok"] is True
    restart_every_member_from_disk(group)  # each from its own disk, and they agree


def test_status_and_readiness_follow_the_leader() -> None:
    group = Group()
    assert group.core(1).readiness() is not None
    leader = group.elect()
    group.step(2)
    status = group.core(leader).status()
    assert status["role"] == "leader" and status["leader"] == leader
    assert status["commit_index"] == status["applied_index"] == status["last_index"]
    assert status["voters"] == [1, 2, 3]
    assert all(group.core(m).readiness() is None for m in group.ids)


def test_snapshots_taken_in_the_background_compact_later_and_still_reach_a_lagging_member() -> None:
    group = Group(snapshot_every=5, background_snapshots=True)
    leader, lagging = write_while_one_lags(group, step=True)
    core = group.core(leader)
    raft_log = core.node.log
    assert raft_log.snapshot.index > 10 and not raft_log.snapshot_loaded
    assert raft_log.snapshot.data == b""  # the bytes are on disk only
    group.restart(lagging)
    group.run_until(lambda: titles(group, lagging) == WRITTEN_WHILE_LAGGING)
    assert group.snapshots_read >= 1
    restart_every_member_from_disk(group)


def test_one_snapshot_at_a_time_and_it_compacts_only_through_its_own_index() -> None:
    group = Group(snapshot_every=3)
    leader = group.elect()
    core = group.core(leader)
    core.snapshot_every = 10**9  # no in-line snapshots; this test takes its own
    group.deliver(leader, propose("p0", 1, create()))
    group.settle()
    for n in range(2, 6):
        group.deliver(leader, propose(f"p{n}", n, insert(f"t{n}")))
        group.settle()
    core.snapshot_every = 3
    assert core.snapshot_due()
    job = core.start_snapshot()
    assert not core.snapshot_due()
    with pytest.raises(RuntimeError, match="under way"):
        core.start_snapshot()
    snapshot = job.encode()  # the state as of the job, as the forked writer sees it
    for n in range(6, 9):
        group.deliver(leader, propose(f"p{n}", n, insert(f"t{n}")))
        group.settle()
    applied = core.node.applied_index
    assert applied > job.index
    assert core.snapshot_saved(job)
    raft_log = core.node.log
    assert raft_log.snapshot.index == job.index and raft_log.last_index == applied
    assert [e.index for e in raft_log.entries_from(0)] == list(range(job.index + 1, applied + 1))
    assert ReplicaStateMachine.restore(snapshot.data).applied_index == job.index
    # the bytes, when a follower needs them, are the ones written
    core.snapshot_loaded(snapshot)
    assert raft_log.snapshot_loaded and raft_log.snapshot.data == snapshot.data


def test_a_failed_snapshot_can_be_taken_again_and_only_the_one_under_way_completes() -> None:
    group = Group(snapshot_every=2)
    leader = group.elect()
    core = group.core(leader)
    core.snapshot_every = 10**9
    group.deliver(leader, propose("p0", 1, create()))
    group.settle()
    core.snapshot_every = 1
    job = core.start_snapshot()
    core.snapshot_failed(job)
    assert core.snapshot_due()
    old = core.start_snapshot()
    core.snapshot_saved(old, old.encode())
    group.deliver(leader, propose("p1", 2, insert("t1")))
    group.settle()
    newer = core.start_snapshot()
    core.snapshot_saved(newer, newer.encode())
    with pytest.raises(RuntimeError, match="not the one under way"):
        core.snapshot_saved(old)
    assert core.node.log.snapshot.index == newer.index
