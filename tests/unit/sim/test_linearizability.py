"""The linearizability checker: textbook register histories, pending calls, the task-store
model against KeyValueState, agreement with an exhaustive search, and a long history."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core.errors import OpError
from backend.core.model.kv import KeyValueState
from backend.sim.linearizability import (
    LINEARIZABLE,
    NO_CLIENT,
    NOT_LINEARIZABLE,
    UNDECIDED,
    UNKNOWN,
    BagState,
    Model,
    Operation,
    RegisterModel,
    Result,
    TaskBagModel,
    check,
)

REGISTER = RegisterModel(initial=0)


def write(client: int, call: float, ret: float | None, value: int) -> Operation:
    return Operation(client, call, ret, ("write", value), None)


def read(client: int, call: float, ret: float | None, value: Any) -> Operation:
    return Operation(client, call, ret, ("read",), value)


def cas(client: int, call: float, ret: float | None, old: int, new: int, ok: bool) -> Operation:
    return Operation(client, call, ret, ("cas", old, new), ok)


def assert_valid(result: Result, history: Sequence[Operation], model: Model) -> None:
    """The order the checker gives really is a linearization of the history."""
    assert result.verdict == LINEARIZABLE, result.explain()
    for part, order in zip(model.partition(history), result.linearization, strict=True):
        # A client is sequential, so (client, call) names an operation.
        placed = {(op.client, op.call) for op in order}
        assert len(placed) == len(order) and placed <= {(op.client, op.call) for op in part}
        completed = {(op.client, op.call) for op in part if not op.pending}
        assert completed <= placed, "a completed operation was left out"
        state = model.init()
        for position, op in enumerate(order):
            fits, state = model.step(state, op.input, UNKNOWN if op.pending else op.output)
            assert fits, f"{op} does not fit at position {position}"
            later = order[position + 1 :]
            assert all(o.pending or (o.ret is not None and o.ret >= op.call) for o in later), (
                "real-time order broken"
            )
            if op.pending and op.ret is not None:
                earlier = order[:position]
                assert all(o.call <= op.ret for o in earlier), "took effect after its expiry"


# ---- textbook register histories --------------------------------------------------------


def test_a_read_concurrent_with_a_write_may_see_the_old_or_the_new_value() -> None:
    # The linearizable example of MIT 6.824's 2017 quiz II (also in Porcupine's suite).
    history = [write(0, 0, 100, 100), read(1, 25, 75, 100), read(2, 30, 60, 0)]
    result = check(history, REGISTER)
    assert_valid(result, history, REGISTER)
    assert [op.input for op in result.linearization[0]] == [("read",), ("write", 100), ("read",)]


def test_a_stale_read_after_another_client_saw_the_new_value_is_not_linearizable() -> None:
    # The same quiz's counter-example: the write took effect before 30, so a read from 40 sees it.
    history = [write(0, 0, 100, 200), read(1, 10, 30, 200), read(2, 40, 90, 0)]
    result = check(history, REGISTER)
    assert result.verdict == NOT_LINEARIZABLE and not result.ok
    example = result.counterexample
    assert example is not None
    assert example.prefix == (history[0], history[1])
    assert example.state == "200"
    assert example.deadline is history[2]
    assert [u.operation for u in example.unplaced] == [history[2]]
    assert "cannot happen" in example.unplaced[0].reason
    text = result.explain()
    assert "client 2 [40, 90] read -> 0: its output cannot happen in this state" in text


def test_sequential_consistency_is_not_enough_a_later_read_must_see_a_finished_write() -> None:
    history = [write(0, 0, 1, 1), read(1, 2, 3, 0)]
    assert check(history, REGISTER).verdict == NOT_LINEARIZABLE
    # Reordering those two is fine when they overlap.
    assert check([write(0, 0, 2, 1), read(1, 1, 3, 0)], REGISTER).ok


def test_two_reads_cannot_see_a_concurrent_write_undone() -> None:
    new_then_old = [write(0, 0, 10, 1), read(1, 1, 2, 1), read(2, 3, 4, 0)]
    old_then_new = [write(0, 0, 10, 1), read(1, 1, 2, 0), read(2, 3, 4, 1)]
    assert check(new_then_old, REGISTER).verdict == NOT_LINEARIZABLE
    assert_valid(check(old_then_new, REGISTER), old_then_new, REGISTER)


def test_operations_that_only_touch_count_as_concurrent() -> None:
    # As in Porcupine: at equal times calls sort before returns.
    assert check([write(0, 0, 5, 1), read(1, 5, 6, 0)], REGISTER).ok
    assert not check([write(0, 0, 5, 1), read(1, 5.5, 6, 0)], REGISTER).ok


def test_two_compare_and_sets_from_the_same_value_cannot_both_succeed() -> None:
    both = [cas(0, 1, 9, 0, 1, True), cas(1, 2, 8, 0, 2, True)]
    assert check(both, REGISTER).verdict == NOT_LINEARIZABLE
    # ...unless a concurrent write puts the value back between them.
    with_reset = [*both, write(2, 0, 10, 0)]
    assert_valid(check(with_reset, REGISTER), with_reset, REGISTER)


def test_a_failed_compare_and_set_is_an_observation_too() -> None:
    history = [write(0, 0, 1, 5), cas(1, 2, 3, 5, 6, False)]
    assert check(history, REGISTER).verdict == NOT_LINEARIZABLE
    history = [write(0, 0, 3, 5), cas(1, 1, 2, 5, 6, False), read(2, 4, 5, 5)]
    assert_valid(check(history, REGISTER), history, REGISTER)


def test_a_longer_history_with_a_single_valid_order_is_found() -> None:
    # Six clients, each overlapping its neighbours; only write 1, cas 1->2, write 3,
    # cas 3->4, read 4, write 5 works.
    history = [
        read(5, 12, 14, 4),
        cas(3, 8, 11, 3, 4, True),
        write(0, 0, 3, 1),
        write(4, 13, 20, 5),
        cas(1, 2, 6, 1, 2, True),
        write(2, 5, 9, 3),
        read(6, 21, 22, 5),
    ]
    result = check(history, REGISTER)
    assert_valid(result, history, REGISTER)
    assert [op.input for op in result.linearization[0]] == [
        ("write", 1),
        ("cas", 1, 2),
        ("write", 3),
        ("cas", 3, 4),
        ("read",),
        ("write", 5),
        ("read",),
    ]


def test_an_empty_history_is_linearizable() -> None:
    assert check([], REGISTER).ok
    assert check([], TaskBagModel()).ok


# ---- calls that never returned ------------------------------------------------------------


def test_a_pending_write_may_take_effect_long_after_its_call() -> None:
    history = [write(0, 0, None, 1), write(1, 1, 2, 2), read(2, 3, 4, 2), read(2, 5, 6, 1)]
    result = check(history, REGISTER)
    assert_valid(result, history, REGISTER)
    assert result.linearization[0][2] is history[0]


def test_a_pending_write_may_never_take_effect() -> None:
    history = [write(0, 0, None, 1), read(1, 1, 2, 0), read(1, 100, 101, 0)]
    result = check(history, REGISTER)
    assert_valid(result, history, REGISTER)
    assert history[0] not in result.linearization[0]


def test_a_pending_write_may_take_effect_after_a_later_pending_write() -> None:
    # Both pending writes are tried at the first read that needs a 2; the first try (1, then 2)
    # fails, and the order 2 ... 1 must still be found.
    history = [
        read(2, 0, 3, 0),
        write(3, 2, None, 1),
        write(5, 4, None, 2),
        read(0, 6, 9, 2),
        read(1, 7, 10, 1),
        read(4, 11, 15, 1),
    ]
    result = check(history, REGISTER)
    assert_valid(result, history, REGISTER)
    assert result.linearization[0].index(history[2]) < result.linearization[0].index(history[1])


def test_a_pending_write_cannot_take_effect_before_its_call() -> None:
    assert not check([read(0, 0, 1, 1), write(1, 2, None, 1)], REGISTER).ok


def test_a_pending_write_takes_effect_at_most_once() -> None:
    history = [write(0, 0, None, 1), read(1, 1, 2, 1), write(1, 3, 4, 2), read(1, 5, 6, 1)]
    assert check(history, REGISTER).verdict == NOT_LINEARIZABLE


def test_once_a_pending_write_is_seen_it_cannot_be_unseen() -> None:
    history = [write(0, 0, None, 1), read(1, 1, 2, 1), read(2, 3, 4, 0)]
    result = check(history, REGISTER)
    assert result.verdict == NOT_LINEARIZABLE
    assert result.counterexample is not None
    assert result.counterexample.deadline is history[2]


def test_a_pending_read_constrains_nothing() -> None:
    assert check([read(0, 0, None, 7), write(1, 1, 2, 1), read(2, 3, 4, 1)], REGISTER).ok


def test_an_unknown_outcome_with_a_return_time_cannot_take_effect_after_it() -> None:
    late = [read(1, 6, 7, 0), read(1, 10, 11, 1)]
    assert check([write(0, 0, None, 1), *late], REGISTER).ok
    bounded = Operation(0, 0, 5, ("write", 1), UNKNOWN)
    assert check([bounded, *late], REGISTER).verdict == NOT_LINEARIZABLE
    assert check([bounded, read(1, 6, 7, 1)], REGISTER).ok  # it took effect before 5
    assert check([bounded, read(1, 6, 7, 0)], REGISTER).ok  # or never
    assert pickle.loads(pickle.dumps(bounded)).pending  # UNKNOWN survives a process pool


def test_many_lost_pending_calls_on_an_impossible_history_leave_an_informed_undecided() -> None:
    # Every pending insert could in principle take effect at the end, in any order: the full
    # search has 12! orders to refute. Assuming each took effect soon after its call, or
    # never, the first pass refutes the history at once and says so.
    history = [created()]
    for k in range(1, 13):
        insert = kv("insert_task", title=f"t{k}", description="x")
        history.append(Operation(k, 10 * k, None, insert, ("error", "timeout")))
        history.append(Operation(0, 10 * k + 5, 10 * k + 6, kv("list_tasks"), listed()))
    impossible = Operation(0, 200, 201, kv("list_tasks"), listed(("zz", "x")))
    result = check([*history, impossible], TASKS, timeout_s=0)
    assert result.verdict == UNDECIDED
    assert result.counterexample is not None
    assert result.counterexample.deadline is impossible
    assert "took effect within 2 of its call, or never" in result.explain()
    # Without the impossible read, the first pass finds an order straight away.
    assert check(history, TASKS, timeout_s=0).ok


# ---- the task store's model ---------------------------------------------------------------

CID = 0x2A
SALT = b"0123456789abcdef"
CREATE_FIELDS = {
    "name": "n",
    "data": "",
    "created_at": 1,
    "token_salt": SALT,
    "token_hash": b"h" * 32,
}
TASKS = TaskBagModel()


def kv(name: str, cid: int = CID, **fields: Any) -> dict[str, Any]:
    extra = CREATE_FIELDS if name == "create_client" else {}
    return {"op": name, "cid": cid, **extra, **fields}


def listed(*pairs: tuple[str, str]) -> tuple[str, Any]:
    return ("ok", {"tasks": [{"title": t, "description": d} for t, d in pairs]})


OK: tuple[str, dict[str, Any]] = ("ok", {})


def created(client: int = 0, call: float = 0, cid: int = CID) -> Operation:
    return Operation(client, call, call + 1, kv("create_client", cid), ("ok", {"client": {}}))


def test_a_list_concurrent_with_an_insert_may_or_may_not_show_it() -> None:
    insert = Operation(1, 10, 20, kv("insert_task", title="a", description="x"), OK)
    for seen in (listed(), listed(("a", "x"))):
        history = [created(), insert, Operation(2, 11, 19, kv("list_tasks"), seen)]
        assert_valid(check(history, TASKS), history, TASKS)


def test_insertion_order_is_part_of_the_state() -> None:
    history = [
        created(),
        Operation(1, 2, 3, kv("insert_task", title="a", description="x"), OK),
        Operation(1, 4, 5, kv("insert_task", title="b", description="y"), OK),
        Operation(2, 6, 7, kv("list_tasks"), listed(("b", "y"), ("a", "x"))),
    ]
    result = check(history, TASKS)
    assert result.verdict == NOT_LINEARIZABLE
    assert "client with tasks [('a', 'x'), ('b', 'y')]" in result.explain()


def test_refusals_are_observations_too() -> None:
    history = [
        created(),
        Operation(1, 2, 3, kv("insert_task", title="a", description="x"), OK),
        Operation(2, 4, 5, kv("update_task", title="a", description="y"), ("error", "not_found")),
    ]
    assert check(history, TASKS).verdict == NOT_LINEARIZABLE
    history[2] = Operation(2, 2.5, 5, history[2].input, ("error", "not_found"))
    assert check(history, TASKS).ok  # the update may have come before the insert


def test_an_unavailable_answer_means_the_operation_was_not_applied() -> None:
    insert = Operation(
        1, 2, 3, kv("insert_task", title="a", description="x"), ("error", "unavailable")
    )
    shown = [created(), insert, Operation(2, 4, 5, kv("list_tasks"), listed(("a", "x")))]
    hidden = [created(), insert, Operation(2, 4, 5, kv("list_tasks"), listed())]
    assert check(shown, TASKS).verdict == NOT_LINEARIZABLE
    assert check(hidden, TASKS).ok
    assert all(insert not in part for part in TASKS.partition(shown))


def test_a_timeout_answer_means_the_outcome_is_unknown_even_after_the_answer() -> None:
    insert = Operation(1, 2, 3, kv("insert_task", title="a", description="x"), ("error", "timeout"))
    before = Operation(2, 4, 5, kv("list_tasks"), listed())
    after = Operation(2, 6, 7, kv("list_tasks"), listed(("a", "x")))
    assert check([created(), insert, before, after], TASKS).ok  # applied after its answer
    assert check([created(), insert, before], TASKS).ok  # or never
    assert check([created(), insert, after], TASKS).ok
    unseen = Operation(2, 8, 9, kv("list_tasks"), listed())
    assert check([created(), insert, after, unseen], TASKS).verdict == NOT_LINEARIZABLE


def test_keys_are_checked_independently_and_the_failing_key_is_named() -> None:
    other = 0xBEEF
    history = [
        created(0, 0, CID),
        created(1, 0, other),
        Operation(0, 2, 3, kv("insert_task", CID, title="a", description="x"), OK),
        # The same title under another client is a different key: no conflict.
        Operation(1, 2, 3, kv("insert_task", other, title="a", description="y"), OK),
        Operation(1, 4, 5, kv("list_tasks", other), listed(("a", "y"))),
        Operation(0, 4, 5, kv("list_tasks", CID), listed(("a", "x"))),
    ]
    result = check(history, TASKS)
    assert_valid(result, history, TASKS)
    assert len(result.linearization) == 2
    history.append(Operation(1, 6, 7, kv("delete_tasks", other), ("ok", {"deleted": 2})))
    failed = check(history, TASKS)
    assert failed.counterexample is not None
    assert failed.counterexample.partition == f"CID {other:016x}"


def test_deleting_a_client_empties_its_bag() -> None:
    history = [
        created(),
        Operation(0, 2, 3, kv("insert_task", title="a", description="x"), OK),
        Operation(0, 4, 5, kv("delete_client"), OK),
        Operation(0, 6, 7, kv("list_tasks"), ("error", "not_found")),
        created(0, 8),
        Operation(0, 10, 11, kv("list_tasks"), listed()),
    ]
    assert_valid(check(history, TASKS), history, TASKS)
    history[-1] = Operation(0, 10, 11, kv("list_tasks"), listed(("a", "x")))
    assert not check(history, TASKS).ok


def test_outputs_decoded_from_msgpack_as_lists_are_accepted() -> None:
    history = [created(), Operation(0, 2, 3, kv("list_tasks"), ["ok", {"tasks": []}])]
    assert check(history, TASKS).ok


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (Operation(0, 0, 1, kv("drop_tables"), OK), r"operation 0: operation 'drop_tables'"),
        (Operation(0, 0, 1, kv("insert_task", title="a"), OK), "insert_task needs description"),
        (Operation(0, 0, 1, "list", OK), "the input must be a dict"),
        (Operation(0, 0, 1, kv("list_tasks"), "ok"), "output must be"),
        (Operation(0, 0, 1, kv("list_tasks"), ("error", "oops")), "unknown error code 'oops'"),
        (Operation(0, 0, 1, kv("list_tasks"), ("fine", {})), "status must be 'ok' or 'error'"),
        (Operation(0, 0, 1, kv("list_tasks", -1), OK), "cid -1 is not a CID"),
        (Operation(0, 5, 1, kv("list_tasks"), OK), "returns at 1 before its call at 5"),
        (Operation(0, math.nan, 1, kv("list_tasks"), OK), "call time nan is not a finite"),
        (Operation(0, 0, math.inf, kv("list_tasks"), OK), "return time inf is not a finite"),
    ],
)
def test_a_malformed_history_is_refused_with_a_clear_error(
    operation: Operation, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check([operation], TASKS)


def test_a_history_of_something_else_is_refused() -> None:
    with pytest.raises(TypeError, match="history item 0 is a dict, not an Operation"):
        not_operations: list[Any] = [{"op": "list_tasks"}]
        check(not_operations, REGISTER)


def test_a_search_out_of_time_is_undecided_not_a_verdict() -> None:
    # Twenty concurrent writes and a read no order explains: the search must try them all.
    history = [write(i, 0, 100, i) for i in range(20)] + [read(20, 101, 102, 99)]
    result = check(history, REGISTER, timeout_s=0)
    assert result.verdict == UNDECIDED and not result.ok
    assert result.counterexample is None and "undecided" in result.explain()


# ---- TaskBagModel is KeyValueState --------------------------------------------------------

TITLES = ["a", "b", "c"]
DESCRIPTIONS = ["x", "y"]
OP_NAMES = [
    *["insert_task"] * 4,
    *["list_tasks"] * 3,
    *["update_task", "delete_task"] * 2,
    *["create_client"] * 2,
    "delete_tasks",
    "delete_client",
]


@st.composite
def kv_inputs(draw: st.DrawFn, cids: Sequence[int] = (CID,)) -> dict[str, Any]:
    name = draw(st.sampled_from(OP_NAMES))
    fields: dict[str, Any] = {}
    if name in ("insert_task", "update_task", "delete_task"):
        fields["title"] = draw(st.sampled_from(TITLES))
    if name in ("insert_task", "update_task"):
        fields["description"] = draw(st.sampled_from(DESCRIPTIONS))
    return kv(name, draw(st.sampled_from(cids)), **fields)


def answer(state: KeyValueState, op: dict[str, Any]) -> tuple[str, Any]:
    try:
        return ("ok", state.apply(op)[0])
    except OpError as error:
        return ("error", error.code)


def bag_of(state: KeyValueState, cid: int = CID) -> BagState:
    key = state.keys.get(cid)
    if key is None or key.record is None:
        return NO_CLIENT
    return BagState(True, tuple(key.tasks.items()))


def observably_wrong(op: dict[str, Any], output: tuple[str, Any], pick: int) -> tuple[str, Any]:
    """An output the state machine could not have given in place of `output`."""
    status, value = output
    if status == "error":
        return [OK, ("error", "exists" if value == "not_found" else "not_found")][pick % 2]
    if op["op"] == "list_tasks" and pick % 2:
        extra = {"title": "zz", "description": "x"}
        return ("ok", {"tasks": [*value["tasks"], extra]})
    if op["op"] == "delete_tasks" and pick % 2:
        return ("ok", {"deleted": value["deleted"] + 1})
    return ("error", ["not_found", "exists"][pick % 2])


@given(st.lists(kv_inputs(), max_size=40), st.integers(0, 1))
def test_the_model_steps_exactly_like_key_value_state(ops: list[dict], pick: int) -> None:
    real = KeyValueState()
    state = TASKS.init()
    for op in ops:
        output = answer(real, op)
        assert not TASKS.step(state, op, observably_wrong(op, output, pick))[0]
        fits, state = TASKS.step(state, op, output)
        assert fits, (op, output)
        assert state == bag_of(real)
        assert TASKS.step(state, op, UNKNOWN)[0]


# ---- histories recorded from a sequential run -----------------------------------------------

FATES = ["answered"] * 6 + ["timeout applied", "timeout lost", "unavailable"]


@dataclass(frozen=True)
class Plan:
    input: dict[str, Any]
    fate: str
    lead: int  # how long before the instant it takes effect the call is made
    lag: int  # how long after that instant the answer arrives
    returns: bool  # whether a timed-out call gets its timeout answer at all


def plans(cids: Sequence[int] = (CID, 7), fates: Sequence[str] = FATES) -> st.SearchStrategy:
    return st.builds(
        Plan,
        kv_inputs(cids),
        st.sampled_from(fates),
        st.integers(0, 25),
        st.integers(0, 25),
        st.booleans(),
    )


def record(plan_list: Sequence[Plan], spacing: int = 10) -> list[Operation]:
    """Apply the plans one by one to KeyValueState, operation i at instant i * spacing, and
    record what clients would have seen: each call is made before that instant and answered
    after it, so real-time order never contradicts the order of application."""
    real = KeyValueState()
    spans: list[tuple[float, float | None, Any, Any]] = []
    for i, plan in enumerate(plan_list):
        instant = i * spacing + 100
        call, ret = instant - plan.lead, instant + plan.lag
        if plan.fate == "answered":
            spans.append((call, ret, plan.input, answer(real, plan.input)))
            continue
        if plan.fate == "unavailable":
            spans.append((call, ret, plan.input, ("error", "unavailable")))
            continue
        if plan.fate == "timeout applied":
            answer(real, plan.input)
        # A timeout answer may come before or after the operation takes effect.
        timed_out = call + plan.lag if plan.returns else None
        spans.append((call, timed_out, plan.input, ("error", "timeout")))
    return assign_clients(spans)


def assign_clients(spans: list[tuple[float, float | None, Any, Any]]) -> list[Operation]:
    """Give each call to a client that is idle, so every client is sequential."""
    busy_until: list[float] = []
    history = []
    for call, ret, input, output in sorted(spans, key=lambda s: s[0]):
        idle = [c for c, until in enumerate(busy_until) if until < call]
        client = idle[0] if idle else len(busy_until)
        if not idle:
            busy_until.append(0)
        busy_until[client] = math.inf if ret is None else ret
        history.append(Operation(client, call, ret, input, output))
    return history


@given(st.lists(plans(), max_size=40))
def test_any_history_recorded_from_a_sequential_run_is_linearizable(
    plan_list: list[Plan],
) -> None:
    history = record(plan_list)
    assert_valid(check(history, TASKS), history, TASKS)


@pytest.mark.slow
@settings(max_examples=200)
@given(st.lists(plans(fates=["answered"]), min_size=1, max_size=30), st.data())
def test_one_observably_wrong_output_in_a_sequential_history_is_caught(
    plan_list: list[Plan], data: st.DataObject
) -> None:
    history = record([Plan(p.input, p.fate, 0, 1, True) for p in plan_list])  # no overlaps
    victim = data.draw(st.integers(0, len(history) - 1))
    original = history[victim]
    wrong = observably_wrong(original.input, original.output, data.draw(st.integers(0, 1)))
    history[victim] = Operation(original.client, original.call, original.ret, original.input, wrong)
    result = check(history, TASKS)
    assert result.verdict == NOT_LINEARIZABLE
    assert result.counterexample is not None
    assert result.counterexample.deadline is history[victim]


# ---- agreement with an exhaustive search ---------------------------------------------------


def exhaustive(history: Sequence[Operation], model: Model) -> bool:
    """Linearizability by trying every order that respects real time (small histories only)."""
    for ops in model.partition(history):
        seen: set[tuple[frozenset[int], Any]] = set()

        def orderable(
            left: frozenset[int], state: Any, ops: list[Operation] = ops, seen: set = seen
        ) -> bool:
            if all(ops[i].pending for i in left):
                return True
            if (left, state) in seen:
                return False
            seen.add((left, state))
            placed = [op for i, op in enumerate(ops) if i not in left]
            for i in left:
                first = ops[i]
                returned = (ops[j] for j in left if not ops[j].pending)
                if any(op.ret is not None and op.ret < first.call for op in returned):
                    continue  # something that returned before this call is still to come
                expiry = first.ret if first.pending and first.ret is not None else math.inf
                if any(op.call > expiry for op in placed):
                    continue  # something called after its expiry came before it
                output = UNKNOWN if first.pending else first.output
                fits, after = model.step(state, first.input, output)
                if fits and orderable(left - {i}, after):
                    return True
            return False

        if not orderable(frozenset(range(len(ops))), model.init()):
            return False
    return True


register_inputs = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2)),
    st.tuples(st.just("read")),
    st.tuples(st.just("cas"), st.integers(0, 2), st.integers(0, 2)),
)


@st.composite
def register_histories(draw: st.DrawFn) -> list[Operation]:
    history = []
    for client in range(draw(st.integers(0, 7))):
        input = draw(register_inputs)
        output = None if input[0] == "write" else draw(st.integers(0, 2) | st.booleans())
        call = draw(st.integers(0, 12))
        ret = draw(st.none() | st.integers(call, call + 6))
        if ret is not None and draw(st.integers(0, 5)) == 0:
            output = UNKNOWN  # may have taken effect by `ret`, or never
        history.append(Operation(client, call, ret, input, output))
    return history


@pytest.mark.slow
@settings(max_examples=300)
@given(register_histories())
def test_the_search_agrees_with_trying_every_order_on_registers(history: list[Operation]) -> None:
    assert check(history, REGISTER).ok == exhaustive(history, REGISTER)


@pytest.mark.slow
@settings(max_examples=300)
@given(st.lists(plans(cids=(CID,)), max_size=7), st.data())
def test_the_search_agrees_with_trying_every_order_on_task_bags(
    plan_list: list[Plan], data: st.DataObject
) -> None:
    history = record(plan_list, spacing=data.draw(st.sampled_from([1, 10])))
    if len(history) > 0 and data.draw(st.booleans()):
        victim = data.draw(st.integers(0, len(history) - 1))
        original = history[victim]
        if original.ret is not None and original.output[1] not in ("timeout", "unavailable"):
            wrong = observably_wrong(original.input, original.output, data.draw(st.integers(0, 1)))
            history[victim] = Operation(
                original.client, original.call, original.ret, original.input, wrong
            )
    assert check(history, TASKS).ok == exhaustive(history, TASKS)


# ---- size -----------------------------------------------------------------------------------


def long_history(seed: int, length: int, fates: Sequence[str]) -> list[Operation]:
    """Operations on one key whose bag grows to hundreds of tasks, about five at a time."""
    rng = random.Random(seed)
    plan_list = []
    for _ in range(length):
        name = rng.choice(OP_NAMES[:-1])  # no delete_client: keep the bag growing
        fields: dict[str, Any] = {}
        if name in ("insert_task", "update_task", "delete_task"):
            fields["title"] = f"t{rng.randrange(300)}"
        if name in ("insert_task", "update_task"):
            fields["description"] = rng.choice(DESCRIPTIONS)
        lead, lag = rng.randrange(25), rng.randrange(25)
        plan_list.append(Plan(kv(name, **fields), rng.choice(fates), lead, lag, rng.random() < 0.5))
    return record(plan_list)


def test_a_two_thousand_operation_history_with_timeouts_is_checked() -> None:
    fates = ["answered"] * 96 + ["timeout applied", "timeout lost", "timeout lost", "unavailable"]
    history = long_history(4, 2000, fates)
    assert max(op.client for op in history) >= 4  # genuinely concurrent
    assert sum(op.output == ("error", "timeout") for op in history) >= 20
    result = check(history, TASKS)
    assert_valid(result, history, TASKS)
    assert len(result.linearization[0]) >= 1900


@pytest.mark.slow
def test_a_wrong_answer_late_in_a_two_thousand_operation_history_is_found() -> None:
    history = long_history(5, 2000, ["answered"])
    victim = next(
        k
        for k in range(1500, 2000)
        if history[k].input["op"] == "list_tasks" and history[k].output[0] == "ok"
    )
    original = history[victim]
    wrong = observably_wrong(original.input, original.output, 1)
    history[victim] = Operation(original.client, original.call, original.ret, original.input, wrong)
    result = check(history, TASKS)
    assert result.verdict == NOT_LINEARIZABLE
    assert result.counterexample is not None
    assert result.counterexample.deadline is history[victim]
    assert len(result.counterexample.prefix) >= victim - 10
    text = result.explain(shown=5)
    assert "... the first" in text and len(text.splitlines()) < 20  # readable, not 2,000 lines
