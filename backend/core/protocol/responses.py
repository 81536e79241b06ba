"""Encoding what the portal sends: response lines and event lines, with no I/O.

Every line is compact JSON in UTF-8 (non-ASCII characters as themselves, not
`\\u` escapes) followed by `\\n`. JSON escapes any newline inside a string,
so a line never contains one before its end.

    success  {"id": <echoed>, "ok": true, ...result}
    failure  {"id": <echoed>, "ok": false, "error": {"code": ..., "message": ...}}
    event    {"event": ..., "cid": ..., "title": ..., "description": ...}

A request sent with `"trace": true` gets a `trace` field in its response,
success or failure.
"""

from __future__ import annotations

import json
from typing import Any

from backend.core.errors import CODES
from backend.core.protocol.requests import Scalar

Trace = dict[str, Any]


def encode_line(value: dict[str, Any]) -> bytes:
    """One JSON object as a protocol line."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8; \u escapes keep the line valid JSON.
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def ok_line(request_id: Scalar, result: dict[str, Any], trace: Trace | None = None) -> bytes:
    response = {"id": request_id, "ok": True, **result}
    if trace is not None:
        response["trace"] = trace
    return encode_line(response)


def error_line(request_id: Scalar, code: str, message: str, trace: Trace | None = None) -> bytes:
    assert code in CODES, code
    response: dict[str, Any] = {
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
    if trace is not None:
        response["trace"] = trace
    return encode_line(response)


def event_line(event: dict[str, Any]) -> bytes:
    """A change event (`Event.to_wire()`): a line with no id and no ok."""
    return encode_line(event)
