"""The user's side of a replica group: leader finding, retries, honest outcomes."""

from __future__ import annotations

from typing import Any

from backend.core.replica.core import Send
from backend.core.replica.proposer import Done, GroupProposer
from tests.unit.core.replica_harness import REPLY, Group, member_of

CID = 42


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


class User:
    """A GroupProposer wired to a harness group."""

    def __init__(
        self,
        group: Group,
        client_id: str = "user-1",
        members: list[int] | None = None,
        **options: Any,
    ) -> None:
        self.group = group
        self.proposer = GroupProposer(
            client_id,
            {"g1": members or group.ids},
            lambda _g, member: f"member/{member}",
            lambda _g: REPLY,
            **options,
        )
        self.done: dict[str, Done] = {}
        self.drop_answers = 0
        group.user_inbox = self._on_answer

    def _on_answer(self, message: dict[str, Any]) -> None:
        if self.drop_answers > 0:
            self.drop_answers -= 1
            return
        done, sends = self.proposer.receive(message, self.group.now)
        self._take(done, sends)

    def _take(self, done: list[Done], sends: list[Send]) -> None:
        self.done.update((d.handle, d) for d in done)
        for send in sends:
            member = member_of(send.topic)
            assert member is not None
            self.group.deliver(member, send.message)

    def propose(self, *ops: dict[str, Any]) -> str:
        handle, sends = self.proposer.propose("g1", list(ops), self.group.now)
        self._take([], sends)
        return handle

    def read(self, *ops: dict[str, Any]) -> str:
        handle, sends = self.proposer.read("g1", list(ops), self.group.now)
        self._take([], sends)
        return handle

    def wait(self, handle: str, ticks: int = 600) -> Done:
        for _ in range(ticks):
            if handle in self.done:
                return self.done[handle]
            self.group.step()
            self._take(*self.proposer.tick(self.group.now))
        raise AssertionError(f"{handle} never finished")


def titles(group: Group, member: int) -> list[str]:
    key = group.core(member).machine.kv.keys.get(CID)
    return list(key.tasks) if key else []


def test_the_leader_is_found_and_remembered() -> None:
    group = Group()
    leader = group.elect()
    user = User(group)
    done = user.wait(user.propose(create(), insert("a")))
    assert done.ok and [r["ok"] for r in done.results] == [True, True]
    assert user.proposer.leaders["g1"] == leader
    assert user.proposer.acked("g1") == 3  # ids 1 and 2 are answered
    assert user.proposer.pending == 0


def test_a_lost_answer_is_retried_and_the_request_still_applies_once() -> None:
    group = Group()
    group.elect()
    user = User(group, attempt_timeout=0.5)
    user.wait(user.propose(create()))
    user.drop_answers = 1
    done = user.wait(user.propose(insert("a")))
    assert done.ok and done.results[0]["ok"] is True  # not "exists": deduplicated
    group.step(3)
    assert all(titles(group, m) == ["a"] for m in group.ids)


def test_a_leader_crash_under_a_proposal_ends_in_success_on_the_new_leader() -> None:
    group = Group()
    leader = group.elect()
    user = User(group, attempt_timeout=0.5)
    user.wait(user.propose(create()))
    handle = user.propose(insert("a"))  # appended, not yet persisted...
    group.crash(leader)  # ...and gone
    done = user.wait(handle)
    assert done.ok
    assert group.leader() not in (None, leader)
    group.restart(leader)
    group.step(10)
    assert all(titles(group, m) == ["a"] for m in group.ids)


def test_with_no_leader_possible_the_answer_is_never_success() -> None:
    group = Group()
    group.crash(2)
    group.crash(3)
    user = User(group, deadline=3.0)
    done = user.wait(user.propose(create()))
    # members 2 and 3 never answered: the proposer cannot know they did not apply it
    assert not done.ok and done.code == "timeout"
    assert titles(group, 1) == []


def test_when_every_attempt_is_refused_the_answer_is_unavailable() -> None:
    group = Group()
    group.crash(2)
    group.crash(3)
    user = User(group, deadline=3.0, members=[1])
    done = user.wait(user.propose(create()))
    assert not done.ok and done.code == "unavailable"  # member 1 refused every attempt
    assert "no leader" in done.message


def test_losing_the_majority_mid_flight_answers_timeout_never_success() -> None:
    group = Group(proposal_timeout=1.0)
    leader = group.elect()
    user = User(group, deadline=3.0, attempt_timeout=0.5)
    user.wait(user.propose(create()))
    for member in group.ids:
        if member != leader:
            group.crash(member)
    done = user.wait(user.propose(insert("a")))
    assert not done.ok and done.code == "timeout"
    assert done.results == []


def test_reads_retry_until_the_leader_answers() -> None:
    group = Group()
    group.elect()
    user = User(group)
    user.wait(user.propose(create(), insert("a")))
    user.proposer.leaders.clear()
    done = user.wait(user.read({"op": "list_tasks", "cid": CID}))
    assert done.ok and done.results[0]["result"]["tasks"] == [{"title": "a", "description": ""}]


def test_a_forgotten_client_carries_on_under_a_new_id() -> None:
    proposer = GroupProposer("cn-1", {"g1": [1]}, lambda g, m: f"{g}/{m}", lambda g: "r")
    handle, sends = proposer.propose("g1", [insert("a")], 0.0)
    assert sends[0].message["client"] == "cn-1" and sends[0].message["acked"] == 1
    expired = {"ok": False, "error": {"code": "timeout", "message": "gone"}, "expired": True}
    answer = {
        "t": "proposed",
        "corr": sends[0].message["corr"],
        "member": 1,
        "ok": True,
        "index": 9,
        "results": [expired],
    }
    done, _ = proposer.receive(answer, 0.1)
    assert done[0].handle == handle
    _, sends = proposer.propose("g1", [insert("b")], 0.2)
    assert sends[0].message["client"] == "cn-1~1"
    assert sends[0].message["request"] == 1 and sends[0].message["acked"] == 1


def test_an_answer_nobody_waits_for_is_ignored() -> None:
    proposer = GroupProposer("cn-1", {"g1": [1]}, lambda g, m: f"{g}/{m}", lambda g: "r")
    assert proposer.receive({"t": "proposed", "corr": "nope", "ok": True}, 0.0) == ([], [])
