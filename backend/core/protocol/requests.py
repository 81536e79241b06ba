"""Parsing and checking one request line of the client protocol, with no I/O.

`parse_request(line)` turns the bytes of one line into a `Request` whose
arguments all have the right types and sizes, or raises `InvalidRequest`
(code `bad_request`) with a message saying what to change. The rules checked
(framing, `id`, `trace`, titles, descriptions, tokens) are those of
docs/protocol.md, Client protocol ("Framing", "Requests and responses").
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.core.errors import BAD_REQUEST, OpError
from backend.core.model.identity import MAX_DATA_BYTES, MAX_NAME_BYTES, parse_cid

Scalar = str | int | float | bool | None

MAX_TITLE_BYTES = MAX_NAME_BYTES
MAX_DESCRIPTION_BYTES = MAX_DATA_BYTES

# op -> the arguments it needs, in the order the contract lists them
OPS: dict[str, tuple[str, ...]] = {
    "auth": ("cid", "token"),
    "insert_task": ("cid", "title", "description"),
    "update_task": ("cid", "title", "description"),
    "list_tasks": ("cid",),
    "delete_task": ("cid", "title"),
    "delete_tasks": ("cid",),
    "watch": ("cid",),
    "ping": (),
}
KNOWN_OPS = ", ".join(sorted(OPS))


@dataclass(frozen=True)
class Request:
    id: Scalar
    op: str
    # Arguments the op does not take keep these neutral values.
    cid: int = 0
    token: str = ""
    title: str = ""
    description: str = ""
    trace: bool = False


class InvalidRequest(OpError):
    """A line that is not a valid request; carries what can be echoed back."""

    def __init__(self, message: str, request_id: Scalar = None, op: str | None = None) -> None:
        super().__init__(BAD_REQUEST, message)
        self.request_id = request_id
        self.op = op


def parse_request(line: bytes) -> Request:
    """Decode and check one request line (without its newline); raise InvalidRequest."""
    fields = _decode_object(line)
    request_id = _request_id(fields)
    op = _op(fields, request_id)
    try:
        arguments = {name: _argument(op, name, fields) for name in OPS[op]}
        trace = _trace(fields.get("trace", False))
    except ValueError as exc:
        raise InvalidRequest(str(exc), request_id, op) from None
    return Request(request_id, op, trace=trace, **arguments)


# ---- the line as a whole ----------------------------------------------------


def _decode_object(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = line[exc.start]
        raise InvalidRequest(
            f"request line is not valid UTF-8 (byte 0x{byte:02x} at offset {exc.start})"
        ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request line is not valid JSON: {exc.msg} at column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request line is not valid JSON: {_reason(exc)}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"a request must be a JSON object, got {json_type(value)}")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _request_id(fields: dict[str, Any]) -> Scalar:
    request_id = fields.get("id")
    if request_id is None or isinstance(request_id, bool | int):
        return request_id
    if isinstance(request_id, float) and math.isfinite(request_id):
        return request_id
    if isinstance(request_id, str):
        if _is_utf8(request_id):
            return request_id
        raise InvalidRequest("id is not valid UTF-8 (it holds a lone surrogate)")
    raise InvalidRequest(
        f"id must be a string, number, boolean or null, got {json_type(request_id)}"
    )


def _op(fields: dict[str, Any], request_id: Scalar) -> str:
    if "op" not in fields:
        raise InvalidRequest(f"the request has no op; known ops: {KNOWN_OPS}", request_id)
    op = fields["op"]
    if not isinstance(op, str):
        raise InvalidRequest(f"op must be a string, got {json_type(op)}", request_id)
    if op not in OPS:
        raise InvalidRequest(f"unknown op {quote(op)}; known ops: {KNOWN_OPS}", request_id)
    return op


# ---- arguments ----------------------------------------------------------------


def _argument(op: str, name: str, fields: dict[str, Any]) -> Any:
    if name not in fields:
        raise ValueError(f"{op} needs {_EXPECTED[name]}")
    return _CHECKS[name](fields[name])


def _cid(value: Any) -> int:
    cid = parse_cid(value)
    if cid is None:
        got = quote(value) if isinstance(value, str) else json_type(value)
        raise ValueError(f'cid must be 16 lowercase hex digits like "9f86d081884c7d65", got {got}')
    return cid


def _token(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"token must be a string, got {json_type(value)}")
    if not _is_utf8(value):
        raise ValueError("token is not valid UTF-8 (it holds a lone surrogate)")
    return value


def _title(value: Any) -> str:
    text = _string("title", value)
    size = _utf8_size("title", text)
    if not 1 <= size <= MAX_TITLE_BYTES:
        raise ValueError(f"title must be 1 to {MAX_TITLE_BYTES} bytes of UTF-8, got {size} bytes")
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            raise ValueError(
                f"title must not contain control characters, found U+{ord(char):04X} "
                f"at character {position}"
            )
    return text


def _description(value: Any) -> str:
    text = _string("description", value)
    size = _utf8_size("description", text)
    if size > MAX_DESCRIPTION_BYTES:
        raise ValueError(
            f"description must be at most {MAX_DESCRIPTION_BYTES:,} bytes of UTF-8, "
            f"got {size:,} bytes"
        )
    return text


def _trace(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"trace must be true or false, got {json_type(value)}")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {json_type(value)}")
    return value


def _utf8_size(name: str, text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 (it holds a lone surrogate)") from None


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "cid": _cid,
    "token": _token,
    "title": _title,
    "description": _description,
}
_EXPECTED = {
    "cid": "a cid (16 lowercase hex digits)",
    "token": "a token (string)",
    "title": "a title (string)",
    "description": "a description (string, may be empty)",
}


# ---- helpers for messages -------------------------------------------------------


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def quote(text: str, limit: int = 40) -> str:
    """A user-supplied string made safe to show: escaped, and cut if long."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(shown)
