"""The local mode's tables: operation semantics, and convergence under any delivery order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core.errors import EXISTS, NOT_FOUND, OpError
from backend.core.model.hlc import HybridClock
from backend.core.model.lww_tables import LwwTables, entry_from_wire, entry_to_wire
from backend.core.model.records import (
    CLIENT_DELETED,
    TASK_DELETED,
    TASK_INSERTED,
    TASK_UPDATED,
    TASKS_CLEARED,
    TOKEN_ROTATED,
    Task,
)

CID = 0x9F86D081884C7D65
TOKEN = (b"salt", b"hash")


class Replica:
    """One portal's tables with its own clock, applying its own writes at once."""

    def __init__(self, node: str, wall: list[int]) -> None:
        self.tables = LwwTables()
        self.clock = HybridClock(node, lambda: wall[0])
        self.sent: list = []

    def write(self, method: str, *args):
        entries = getattr(self.tables, method)(*args, self.clock.now())
        if method == "delete_tasks":
            entries = entries[1]
        self.tables.merge(entries)
        self.sent.extend(entries)
        return entries

    def receive(self, entries) -> list:
        for _, _, version in entries:
            self.clock.observe(version)
        return self.tables.merge(entries)


def make_client(replica: Replica) -> None:
    replica.tables.merge(
        replica.tables.create_client(CID, "Alice", "", TOKEN, 0, replica.clock.now())
    )


def test_insert_then_list_keeps_insertion_order() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    for title in ["b", "a", "c"]:
        replica.write("insert_task", CID, title, title.upper())
    assert replica.tables.tasks(CID) == [Task("b", "B"), Task("a", "A"), Task("c", "C")]


def test_insert_of_a_taken_title_is_exists_and_update_of_a_missing_one_is_not_found() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    replica.write("insert_task", CID, "t", "d")
    with pytest.raises(OpError) as taken:
        replica.write("insert_task", CID, "t", "again")
    assert taken.value.code == EXISTS
    for method, args in [("update_task", ("u", "d")), ("delete_task", ("u",))]:
        with pytest.raises(OpError) as missing:
            replica.write(method, CID, *args)
        assert missing.value.code == NOT_FOUND


def test_update_keeps_the_task_in_its_place() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    replica.write("insert_task", CID, "first", "1")
    replica.write("insert_task", CID, "second", "2")
    replica.write("update_task", CID, "first", "one")
    assert [t.title for t in replica.tables.tasks(CID)] == ["first", "second"]
    assert replica.tables.task(CID, "first") == Task("first", "one")


def test_delete_all_counts_and_hides_every_task_but_later_inserts_show() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    replica.write("insert_task", CID, "x", "")
    replica.write("insert_task", CID, "y", "")
    count, entries = replica.tables.delete_tasks(CID, replica.clock.now())
    replica.tables.merge(entries)
    assert count == 2 and replica.tables.tasks(CID) == []
    replica.write("insert_task", CID, "x", "new")
    assert replica.tables.tasks(CID) == [Task("x", "new")]


def test_deleting_a_client_hides_its_tasks_even_after_it_is_created_again() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    replica.write("insert_task", CID, "x", "")
    replica.write("delete_client", CID)
    assert replica.tables.client(CID) is None
    make_client(replica)
    assert replica.tables.tasks(CID) == []


def test_task_writes_for_an_unknown_client_are_not_found() -> None:
    replica = Replica("a", [1])
    for method, args in [
        ("insert_task", ("t", "d")),
        ("update_task", ("t", "d")),
        ("delete_task", ("t",)),
        ("delete_tasks", ()),
    ]:
        with pytest.raises(OpError) as missing:
            replica.write(method, CID, *args)
        assert missing.value.code == NOT_FOUND


def test_merging_produces_the_events_a_watcher_expects() -> None:
    wall = [1]
    a, b = Replica("a", wall), Replica("b", wall)
    make_client(a)
    b.receive(a.tables.snapshot())
    kinds = []
    for method, args in [
        ("insert_task", ("t", "d")),
        ("update_task", ("t", "e")),
        ("delete_task", ("t",)),
        ("delete_tasks", ()),
        ("delete_client", ()),
    ]:
        kinds += [event.kind for event in b.receive(a.write(method, CID, *args))]
    assert kinds == [TASK_INSERTED, TASK_UPDATED, TASK_DELETED, TASKS_CLEARED, CLIENT_DELETED]


def test_a_rotated_token_is_an_event_in_order_but_a_new_clients_token_is_not() -> None:
    wall = [1]
    a, b = Replica("a", wall), Replica("b", wall)
    created = a.tables.create_client(CID, "Alice", "", TOKEN, 0, a.clock.now())
    assert a.tables.merge(created) == []
    assert b.receive(created) == []
    entries = a.write("insert_task", CID, "t", "d") + a.write("rotate_token", CID, (b"s", b"h"))
    entries += a.write("insert_task", CID, "u", "d")
    kinds = [event.kind for event in b.receive(entries)]
    assert kinds == [TASK_INSERTED, TOKEN_ROTATED, TASK_INSERTED]


def test_a_duplicate_or_older_entry_changes_nothing_and_raises_no_event() -> None:
    wall = [1]
    a, b = Replica("a", wall), Replica("b", wall)
    make_client(a)
    b.receive(a.tables.snapshot())
    first = a.write("insert_task", CID, "t", "old")
    second = a.write("update_task", CID, "t", "new")
    assert b.receive(second)
    assert b.receive(first) == []
    assert b.receive(second) == []
    assert b.tables.task(CID, "t") == Task("t", "new")


def test_entries_survive_the_wire_and_garbage_is_refused() -> None:
    replica = Replica("a", [1])
    make_client(replica)
    entries = replica.write("insert_task", CID, "t", "d")
    assert [entry_from_wire(entry_to_wire(e)) for e in entries] == entries
    for garbage in [
        None,
        [],
        [["task", CID], None, [1, 0, "a"]],
        [["nope", 1], 1, [1, 0, "a"]],
        [["task", CID, "t"], [3, [1, 0, "a"]], [1, 0, "a"]],
        [["life", 1], 5, [1, 0, "a"]],
    ]:
        with pytest.raises(ValueError):
            entry_from_wire(garbage)


OPERATIONS = st.lists(
    st.tuples(
        st.integers(0, 2),  # which replica writes
        st.sampled_from(
            [
                "insert_task",
                "update_task",
                "delete_task",
                "delete_tasks",
                "delete_client",
                "create_client",
                "tick",
            ]
        ),
        st.sampled_from(["a", "b", "c"]),  # title
        st.integers(0, 1),  # wall clock step
    ),
    max_size=40,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(OPERATIONS, st.randoms(use_true_random=False))
def test_replicas_converge_whatever_the_delivery_order_and_duplicates(
    ops, rng: random.Random
) -> None:
    wall = [1]
    replicas = [Replica(name, wall) for name in "xyz"]
    make_client(replicas[0])
    for replica in replicas[1:]:
        replica.receive(replicas[0].tables.snapshot())
    for who, method, title, step in ops:
        wall[0] += step
        replica = replicas[who]
        if rng.random() < 0.3:  # sometimes a replica hears the others before writing
            other = replicas[(who + 1) % 3]
            replica.receive(other.sent)
        try:
            if method == "create_client":
                replica.write(method, CID, "Alice", "", TOKEN, 0)
            elif method in ("delete_tasks", "delete_client"):
                replica.write(method, CID)
            elif method in ("delete_task",):
                replica.write(method, CID, title)
            elif method != "tick":
                replica.write(method, CID, title, f"{method} by {who}")
        except OpError:
            pass
    everything = [e for r in replicas for e in r.sent] + replicas[0].tables.snapshot()
    for replica in replicas:
        shuffled = everything + rng.sample(everything, len(everything) // 2)
        rng.shuffle(shuffled)
        replica.receive(shuffled)
    states = [(r.tables.tasks(CID), r.tables.client(CID)) for r in replicas]
    assert states[0] == states[1] == states[2]
