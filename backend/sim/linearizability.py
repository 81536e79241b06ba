"""Linearizability checking of recorded histories, one key at a time.

A history is a list of `Operation`s (call, return time if any, output); it is
linearizable when each can take effect at one instant between its call and
return such that a sequential `Model` gives the recorded outputs. The search
(Wing & Gong with Lowe's memoisation, arranged as Porcupine does), how calls of
unknown outcome are handled, and what a failure reports: docs/architecture.md,
"Checking linearizability". Pure: no I/O, no clocks except the optional search
deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

from backend.core.errors import CODES, TIMEOUT, UNAVAILABLE, OpError
from backend.core.model.kv import Key, KeyValueState
from backend.core.model.records import ClientRecord

__all__ = [
    "LINEARIZABLE",
    "NOT_LINEARIZABLE",
    "NO_CLIENT",
    "UNDECIDED",
    "UNKNOWN",
    "BagState",
    "Counterexample",
    "Model",
    "Operation",
    "RegisterModel",
    "Result",
    "TaskBagModel",
    "Unplaced",
    "check",
]

LINEARIZABLE = "linearizable"
NOT_LINEARIZABLE = "not linearizable"
UNDECIDED = "undecided"  # the search ran out of time: neither verdict holds


class _Unknown:
    """The output of an operation whose outcome is unknown."""

    def __repr__(self) -> str:
        return "?"

    def __reduce__(self) -> str:
        return "UNKNOWN"  # pickles as the module's singleton


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Operation:
    """One call by one client: `ret` is None when the call never returned."""

    client: int
    call: float
    ret: float | None
    input: Any
    output: Any

    @property
    def pending(self) -> bool:
        """Whether its outcome is unknown: it may have taken effect, or not."""
        return self.ret is None or self.output is UNKNOWN


class Model(Protocol):
    """A sequential specification. States must be hashable and compare by value.

    `step(state, input, output)` says whether `output` is what the operation
    `input` answers in `state`, and gives the state after it. For a pending
    operation `output` is `UNKNOWN`: step must then apply the input and accept.
    Subclasses inherit the defaults below.
    """

    def init(self) -> Hashable: ...

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Hashable]: ...

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        """Independent parts of the history (one per key), each checked alone."""
        return [list(history)]

    def describe_partition(self, history: Sequence[Operation]) -> str:
        return f"{len(history)} operations"

    def describe_operation(self, input: Any, output: Any) -> str:
        return f"{input!r} -> {output!r}"

    def describe_state(self, state: Any) -> str:
        return repr(state)


# ---- results -----------------------------------------------------------------------


@dataclass(frozen=True)
class Unplaced:
    """An operation that could have come right after the prefix, and why it did not fit."""

    operation: Operation
    reason: str


@dataclass(frozen=True)
class Counterexample:
    """Where the search got furthest before every order failed."""

    partition: str  # the model's description of the failing part (e.g. its key)
    prefix: tuple[Operation, ...]  # the longest order found, in linearization order
    state: str  # the model state after the prefix, described
    deadline: Operation  # the first to return of the completed operations not in the prefix
    unplaced: tuple[Unplaced, ...]  # every candidate to come next, none of which fits
    assumption: str = ""  # what the search assumed, if anything, about pending operations


@dataclass(frozen=True)
class Result:
    verdict: str  # LINEARIZABLE, NOT_LINEARIZABLE or UNDECIDED
    # One order per part when linearizable; pending operations left out never took effect.
    linearization: tuple[tuple[Operation, ...], ...] = ()
    # Why not, when NOT_LINEARIZABLE; when UNDECIDED, why not under an assumption, if known.
    counterexample: Counterexample | None = None
    model: Model | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == LINEARIZABLE

    def explain(self, shown: int = 20) -> str:
        """For a person: the verdict and, when there is one, the counter-example, showing
        the last `shown` operations of its prefix."""
        if self.verdict == LINEARIZABLE:
            parts = len(self.linearization)
            ops = sum(len(p) for p in self.linearization)
            return f"linearizable: {ops} operations linearized in {parts} independent parts"
        example, model = self.counterexample, self.model
        if self.verdict == NOT_LINEARIZABLE and example and model:
            return _explain_counterexample(example, model, shown)
        text = "undecided: the search ran out of time before reaching a verdict"
        if example and model:
            text += f"; {example.assumption}, it is\n"
            text += _explain_counterexample(example, model, shown)
        return text

    def __str__(self) -> str:
        return self.explain()


def _explain_counterexample(example: Counterexample, model: Model, shown: int) -> str:
    show = _describer(model)
    lines = [f"not linearizable ({example.partition}):"]
    if example.prefix:
        lines.append(f"  these {len(example.prefix)} operations can be ordered:")
        hidden = max(0, len(example.prefix) - shown)
        if hidden:
            lines.append(f"    ... the first {hidden} ...")
        numbered = list(enumerate(example.prefix, 1))[hidden:]
        lines += [f"    {n}. {show(op)}" for n, op in numbered]
    else:
        lines.append("  no operation can be ordered first.")
    lines.append(f"  state after them: {example.state}")
    lines.append(
        f"  then one of these must take effect before {show(example.deadline)} "
        "returns, and none can:"
    )
    lines += [f"    {show(u.operation)}: {u.reason}" for u in example.unplaced]
    return "\n".join(lines)


def _describer(model: Model) -> Callable[[Operation], str]:
    def show(op: Operation) -> str:
        ret = "..." if op.ret is None else f"{op.ret:g}"
        text = model.describe_operation(op.input, UNKNOWN if op.pending else op.output)
        return f"client {op.client} [{op.call:g}, {ret}] {text}"

    return show


# ---- checking ------------------------------------------------------------------------


class _TimedOut(Exception):
    def __init__(self, hint: Counterexample | None = None) -> None:
        super().__init__("the search ran out of time")
        self.hint = hint


def check(history: Sequence[Operation], model: Model, timeout_s: float | None = None) -> Result:
    """Whether `history` is linearizable under `model`, part by part.

    Stops at the first part that is not. With `timeout_s`, a search that runs
    longer gives an UNDECIDED result instead of a verdict.
    """
    for index, op in enumerate(history):
        _validate(index, op)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    orders: list[tuple[Operation, ...]] = []
    try:
        for part in model.partition(history):
            order, failed = _check_part(part, model, deadline)
            if failed is not None:
                return Result(NOT_LINEARIZABLE, counterexample=failed, model=model)
            orders.append(order)
    except _TimedOut as stop:
        return Result(UNDECIDED, counterexample=stop.hint, model=model)
    return Result(LINEARIZABLE, linearization=tuple(orders), model=model)


def _check_part(
    ops: Sequence[Operation], model: Model, deadline: float | None
) -> tuple[tuple[Operation, ...], Counterexample | None]:
    """The two passes over one part (docs/architecture.md, "Checking linearizability")."""
    expiry = [op.ret if op.pending and op.ret is not None else math.inf for op in ops]
    spans = [op.ret - op.call for op in ops if op.ret is not None and not op.pending]
    window = 2 * max(spans, default=0)
    soon = [min(t, op.call + window) for t, op in zip(expiry, ops, strict=True)]
    if soon == expiry:
        return _search(ops, model, deadline, expiry)
    order, hint = _search(ops, model, deadline, soon)
    if hint is None:
        return order, None  # an order found under the assumption is an order
    try:
        return _search(ops, model, deadline, expiry)
    except _TimedOut:
        assumption = (
            f"if every operation with an unknown outcome took effect within {window:g} "
            "of its call, or never"
        )
        raise _TimedOut(replace(hint, assumption=assumption)) from None


def _validate(index: int, op: Any) -> None:
    if not isinstance(op, Operation):
        raise TypeError(f"history item {index} is a {type(op).__name__}, not an Operation")
    if not _is_time(op.call):
        raise ValueError(f"operation {index}: call time {op.call!r} is not a finite number")
    if op.ret is not None and not _is_time(op.ret):
        raise ValueError(f"operation {index}: return time {op.ret!r} is not a finite number")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation {index}: returns at {op.ret} before its call at {op.call}")


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---- the search ----------------------------------------------------------------------


# Node numbers: the two list heads, then every entry in time order.
_HEAD = 0  # the list of completed operations' calls and returns
_PENDING_HEAD = 1  # the list of pending operations' calls
_END = -1
_RETURN = -1  # `match` of a return entry
_NO_RETURN = -2  # `match` of a pending call
_CALL, _RET = 0, 1  # entry kinds, in the order they sort at equal times


class _Entries(NamedTuple):
    """The entries sorted by time on two doubly linked lists, over array indices.

    Node numbers follow time order, so `a < b` means entry a comes first.
    `match[n]` is the return node of a completed call, or _RETURN / _NO_RETURN.
    `expiry[i]` is the node after which pending operation i can no longer
    take effect (past every node if it may take effect at any time).
    """

    nxt: list[int]
    prv: list[int]
    match: list[int]
    op_of: list[int]
    expiry: list[int]


def _link(ops: Sequence[Operation], expiry: Sequence[float]) -> _Entries:
    # An expiry sorts like a return: a call at that very instant may still follow it.
    items = [(op.call, _CALL, i) for i, op in enumerate(ops)]
    items += [
        (op.ret, _RET, i) for i, op in enumerate(ops) if op.ret is not None and not op.pending
    ]
    items += [(t, _RET, ~i) for i, t in enumerate(expiry) if t != math.inf]
    items.sort()
    size = len(items) + 2
    nxt, prv = [_END] * size, [_END] * size
    match, op_of = [_RETURN] * size, [-1] * size
    expiry_node = [size] * len(ops)
    tails = [_HEAD, _PENDING_HEAD]
    call_node: dict[int, int] = {}
    for node, (_, kind, i) in enumerate(items, 2):
        if i < 0:
            expiry_node[~i] = node
            continue
        op_of[node] = i
        pending = ops[i].pending
        if kind == _RET:
            match[call_node[i]] = node
        elif pending:
            match[node] = _NO_RETURN
        else:
            call_node[i] = node
        nxt[tails[pending]], prv[node], tails[pending] = node, tails[pending], node
    return _Entries(nxt, prv, match, op_of, expiry_node)


def _search(
    ops: Sequence[Operation], model: Model, deadline: float | None, expiry: Sequence[float]
) -> tuple[tuple[Operation, ...], Counterexample | None]:
    """One part: a linearization of `ops`, or the counter-example when there is none.

    The candidates at each point are the completed calls before the first
    return on the completed list, in time order, then the pending calls made
    before that return and not yet expired.
    """
    nxt, prv, match, op_of, expiry_node = _link(ops, expiry)
    bits = [1 << i for i in range(len(ops))]
    pending = [op.pending for op in ops]
    outputs = [UNKNOWN if op.pending else op.output for op in ops]
    inputs = [op.input for op in ops]
    step = model.step
    state = model.init()
    _require_hashable(state)
    done = 0  # bitset of the completed operations linearized so far
    taken = 0  # bitset of the pending operations linearized so far
    frontier = 0  # the latest call among the operations linearized so far
    remaining = pending.count(False)  # completed operations still to place
    # For each choice made: (call node, state before it, bound it was chosen under, frontier).
    calls: list[tuple[int, Any, int, int]] = []
    explored: dict[tuple[int, Any], list[int]] = {}
    longest: list[int] = []
    budget = _CLOCK_EVERY
    node = nxt[_HEAD]
    bound = _END  # _END: walking the completed list; else the return that bounds pending calls
    while remaining:
        budget -= 1
        if not budget:
            budget = _CLOCK_EVERY
            if deadline is not None and time.monotonic() > deadline:
                raise _TimedOut
        if bound == _END and match[node] == _RETURN:
            bound, node = node, nxt[_PENDING_HEAD]  # no completed call fits: try pending ones
        if bound == _END or (node != _END and node < bound):
            i = op_of[node]
            if pending[i] and frontier > expiry_node[i]:
                node = nxt[node]  # an operation called after its expiry is already in
                continue
            fits, after = step(state, inputs[i], outputs[i])
            if fits and not (pending[i] and after == state):
                placed = (done, taken | bits[i]) if pending[i] else (done | bits[i], taken)
                if _first_visit(explored, (placed[0], after), placed[1]):
                    calls.append((node, state, bound, frontier))
                    state, (done, taken) = after, placed
                    frontier = max(frontier, node)
                    remaining -= not pending[i]
                    _lift(nxt, prv, node, match[node])
                    node, bound = nxt[_HEAD], _END
                    continue
            node = nxt[node]
            continue
        # Every candidate failed here: undo the last choice and try the one after it.
        if len(calls) > len(longest):
            longest = [op_of[n] for n, _, _, _ in calls]
        if not calls:
            return (), _counterexample(ops, model, longest, expiry)
        node, state, bound, frontier = calls.pop()
        i = op_of[node]
        if pending[i]:
            taken ^= bits[i]
        else:
            done ^= bits[i]
            remaining += 1
        _unlift(nxt, prv, node, match[node])
        node = nxt[node]
    return tuple(ops[op_of[n]] for n, _, _, _ in calls), None


_CLOCK_EVERY = 1024  # search steps between looks at the clock


def _first_visit(
    explored: dict[tuple[int, Any], list[int]], key: tuple[int, Any], taken: int
) -> bool:
    """Record a configuration; False if it, or one that covers it, was explored before.

    Having taken the same completed operations to the same state with fewer of
    the pending ones linearized leaves more choices, never fewer: the pending
    ones may still take effect, or not. So once that configuration failed,
    this one must fail too.
    """
    seen = explored.get(key)
    if seen is None:
        explored[key] = [taken]
        return True
    if any(earlier & ~taken == 0 for earlier in seen):
        return False
    seen.append(taken)
    return True


def _lift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    """Take a call (and its return, if any) out of its list; _unlift puts them back."""
    nxt[prv[call]] = nxt[call]
    if nxt[call] != _END:
        prv[nxt[call]] = prv[call]
    if ret >= 0:
        nxt[prv[ret]] = nxt[ret]
        if nxt[ret] != _END:
            prv[nxt[ret]] = prv[ret]


def _unlift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    if ret >= 0:
        nxt[prv[ret]] = ret
        if nxt[ret] != _END:
            prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    if nxt[call] != _END:
        prv[nxt[call]] = call


def _require_hashable(state: Any) -> None:
    try:
        hash(state)
    except TypeError:
        raise TypeError(f"model states must be hashable; got a {type(state).__name__}") from None


# ---- counter-examples -----------------------------------------------------------------


def _counterexample(
    ops: Sequence[Operation], model: Model, prefix: list[int], expiry: Sequence[float]
) -> Counterexample:
    state = model.init()
    for i in prefix:
        _, state = model.step(state, ops[i].input, _output(ops[i]))
    placed = set(prefix)
    rest = [i for i in range(len(ops)) if i not in placed]
    # Times as the search saw them: (time, kind), so ties break the same way.
    call = {i: (op.call, _CALL) for i, op in enumerate(ops)}
    ret = {i: (op.ret if not op.pending else expiry[i], _RET) for i, op in enumerate(ops)}
    deadline = min((i for i in rest if not ops[i].pending), key=ret.__getitem__)
    latest_call = max((call[i] for i in prefix), default=(-math.inf, _CALL))
    candidates = [
        i
        for i in sorted(rest, key=call.__getitem__)
        if call[i] < ret[deadline] and (not ops[i].pending or latest_call < ret[i])
    ]
    return Counterexample(
        partition=model.describe_partition(ops),
        prefix=tuple(ops[i] for i in prefix),
        state=model.describe_state(state),
        deadline=ops[deadline],
        unplaced=tuple(Unplaced(ops[i], _why_not(model, state, ops[i])) for i in candidates),
    )


def _output(op: Operation) -> Any:
    return UNKNOWN if op.pending else op.output


def _why_not(model: Model, state: Any, op: Operation) -> str:
    fits, after = model.step(state, op.input, _output(op))
    if not fits:
        return "its output cannot happen in this state"
    if op.pending:
        return "it may take effect here, but that does not help"
    return f"it fits (giving {model.describe_state(after)}), but nothing fits after it"


# ---- models ---------------------------------------------------------------------------


class RegisterModel(Model):
    """One register, for testing the checker on textbook histories.

    Inputs and outputs: ("write", v) -> anything; ("read",) -> the value;
    ("cas", expected, new) -> whether the value was `expected` (and is now `new`).
    """

    def __init__(self, initial: Hashable = 0) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Hashable]:
        kind = input[0]
        if kind == "write":
            return True, input[1]
        if kind == "read":
            return output is UNKNOWN or output == state, state
        if kind == "cas":
            swapped = state == input[1]
            return output is UNKNOWN or output == swapped, input[2] if swapped else state
        raise ValueError(f"unknown register operation {input!r}")

    def describe_operation(self, input: Any, output: Any) -> str:
        if input[0] == "write":
            return f"write {input[1]!r}"
        if input[0] == "read":
            return f"read -> {output!r}"
        return f"cas {input[1]!r} -> {input[2]!r}: {output!r}"


class BagState(NamedTuple):
    """One key of the task store as the checker sees it."""

    exists: bool  # whether the client record exists
    tasks: tuple[tuple[str, str], ...]  # (title, description) in insertion order


NO_CLIENT = BagState(False, ())

# Fields each modelled operation needs besides "op" (and "cid", which picks the key).
_TASK_OPS: dict[str, tuple[str, ...]] = {
    "create_client": (),
    "delete_client": (),
    "insert_task": ("title", "description"),
    "update_task": ("title", "description"),
    "delete_task": ("title",),
    "delete_tasks": (),
    "list_tasks": (),
}
# The client record's fields are not modelled: only whether it exists.
_RECORD_DEFAULTS = {"name": "", "data": "", "created_at": 0, "token_salt": b"", "token_hash": b""}
_PLACEHOLDER = ClientRecord(0, "", "", 0, b"", b"")


class TaskBagModel(Model):
    """One key of backend/core/model/kv.py: whether the client exists, and its ordered tasks.

    Inputs are kv operations `{"op": ..., "cid": ..., ...}` (create_client,
    delete_client, insert_task, update_task, delete_task, delete_tasks,
    list_tasks); outputs are `("ok", result)` with the result exactly as
    KeyValueState.apply returns it, or `("error", code)`. Each step runs
    KeyValueState itself on a copy of the state, so the model is the real state
    machine. A create_client's result is not compared: the record's fields
    are not part of the state.

    `partition` splits the history by CID (an input without one is CID 0)
    and also reads the answers that say something about the outcome:
    - `unavailable` means the operation was certainly not applied: it is
      dropped from the history;
    - `timeout` means the outcome is unknown: the operation is made pending
      (`ret=None`), since it may still take effect after the answer;
    - a pending list_tasks is dropped: it cannot change the state, and the
      search would otherwise keep trying it.
    """

    def __init__(self, initial: BagState = NO_CLIENT) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_key: dict[int, list[Operation]] = {}
        for index, op in enumerate(history):
            if isinstance(op, Operation) and isinstance(op.output, list):
                op = replace(op, output=tuple(op.output))  # as msgpack gives it back
            _validate_task_op(index, op)
            if op.output == ("error", UNAVAILABLE):
                continue
            if op.output == ("error", TIMEOUT):
                op = replace(op, ret=None)  # it may still take effect after the answer
            if op.pending and op.input["op"] == "list_tasks":
                continue  # a read whose answer never came constrains nothing
            by_key.setdefault(op.input.get("cid", 0), []).append(op)
        return list(by_key.values())

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Hashable]:
        answer, after = _apply(state, input)
        if output is UNKNOWN:
            return True, after
        status, value = output
        if status != answer[0]:
            return False, after
        if status == "ok" and input["op"] == "create_client":
            return True, after  # the record's fields are not modelled
        return value == answer[1], after

    def describe_partition(self, history: Sequence[Operation]) -> str:
        cid = history[0].input.get("cid", 0) if history else 0
        return f"CID {cid:016x}"

    def describe_operation(self, input: Any, output: Any) -> str:
        args = " ".join(repr(input[f]) for f in _TASK_OPS.get(input.get("op"), ()))
        call = f"{input.get('op')} {args}".rstrip()
        if output is UNKNOWN:
            return f"{call} -> ? (outcome unknown)"
        status, value = output
        if status == "ok" and input["op"] == "list_tasks":
            value = [(t["title"], t["description"]) for t in value["tasks"]]
        return f"{call} -> {status} {value!r}"

    def describe_state(self, state: Any) -> str:
        if not state.exists:
            return "no client"
        return f"client with tasks {list(state.tasks)!r}"


def _apply(state: BagState, input: dict[str, Any]) -> tuple[tuple[str, Any], BagState]:
    """Run one operation through KeyValueState: its answer, and the state after it."""
    cid = input.get("cid", 0)
    kv = KeyValueState()
    if state.exists:
        kv.keys[cid] = Key(_PLACEHOLDER, dict(state.tasks))
    op = {**_RECORD_DEFAULTS, **input} if input["op"] == "create_client" else input
    try:
        result, _ = kv.apply({**op, "cid": cid})
    except OpError as error:
        return ("error", error.code), state  # a refused operation changes nothing
    if input["op"] == "list_tasks":
        return ("ok", result), state
    key = kv.keys.get(cid)
    if key is None or key.record is None:
        return ("ok", result), NO_CLIENT
    return ("ok", result), BagState(True, tuple(key.tasks.items()))


def _validate_task_op(index: int, op: Operation) -> None:
    _validate(index, op)
    where = f"operation {index}"
    if not isinstance(op.input, dict):
        raise ValueError(f"{where}: the input must be a dict, not {type(op.input).__name__}")
    name = op.input.get("op")
    if name not in _TASK_OPS:
        known = ", ".join(sorted(_TASK_OPS))
        raise ValueError(f"{where}: operation {name!r} is not modelled (known: {known})")
    cid = op.input.get("cid", 0)
    if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
        raise ValueError(f"{where}: cid {cid!r} is not a CID")
    missing = [f for f in _TASK_OPS[name] if f not in op.input]
    if missing:
        raise ValueError(f"{where}: {name} needs {', '.join(missing)}")
    if op.pending:
        return  # the output of a call that never returned says nothing
    output = op.output
    if not (isinstance(output, tuple) and len(output) == 2):
        raise ValueError(f"{where}: output must be ('ok', result) or ('error', code)")
    if output[0] == "error" and output[1] not in CODES:
        raise ValueError(f"{where}: unknown error code {output[1]!r}")
    if output[0] == "ok" and not isinstance(output[1], dict):
        raise ValueError(f"{where}: an ok output carries the result dict")
    if output[0] not in ("ok", "error"):
        raise ValueError(f"{where}: output status must be 'ok' or 'error', not {output[0]!r}")
