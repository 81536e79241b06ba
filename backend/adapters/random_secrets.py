"""Random secrets from the operating system's entropy: client bearer tokens and salts.

The cores (backend/core/model/identity.py) only hash and compare them."""

from __future__ import annotations

import secrets

from backend.core.model.identity import SALT_BYTES, TOKEN_BYTES


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)
