"""The error codes of the public protocol and the one exception that carries them.

What each code means: docs/protocol.md, Error codes.

Pure cores raise `OpError(code, message)`; each adapter maps it to its wire:
the TCP protocol writes the code, the gRPC portal a status code.
"""

from __future__ import annotations

from typing import Final

BAD_REQUEST: Final = "bad_request"
UNAUTHORIZED: Final = "unauthorized"
NOT_FOUND: Final = "not_found"
EXISTS: Final = "exists"
TOO_LARGE: Final = "too_large"
UNAVAILABLE: Final = "unavailable"
TIMEOUT: Final = "timeout"
INTERNAL: Final = "internal"

CODES: Final = frozenset(
    {BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, EXISTS, TOO_LARGE, UNAVAILABLE, TIMEOUT, INTERNAL}
)


class OpError(Exception):
    """An operation failed with one of the contract's error codes."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"OpError({self.code!r}, {self.message!r})"
