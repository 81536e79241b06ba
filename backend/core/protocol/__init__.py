"""The client protocol as pure code: framing, requests, responses.

The protocol itself is docs/protocol.md, Client protocol.

Nothing here does I/O; `backend/processes/client_portal.py` moves the bytes.
"""

from backend.core.protocol.framing import MAX_LINE_BYTES, Line, LineSplitter, LineTooLong
from backend.core.protocol.requests import (
    MAX_DESCRIPTION_BYTES,
    MAX_TITLE_BYTES,
    OPS,
    InvalidRequest,
    Request,
    Scalar,
    parse_request,
)
from backend.core.protocol.responses import encode_line, error_line, event_line, ok_line

__all__ = [
    "MAX_DESCRIPTION_BYTES",
    "MAX_LINE_BYTES",
    "MAX_TITLE_BYTES",
    "OPS",
    "InvalidRequest",
    "Line",
    "LineSplitter",
    "LineTooLong",
    "Request",
    "Scalar",
    "encode_line",
    "error_line",
    "event_line",
    "ok_line",
    "parse_request",
]
