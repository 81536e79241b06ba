"""Client identity: CIDs derived from names, and bearer tokens stored only as salted hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

CID_PATTERN = re.compile(r"[0-9a-f]{16}")
MAX_NAME_BYTES = 256
MAX_DATA_BYTES = 16_384
TOKEN_BYTES = 32  # 256 random bits; token_urlsafe gives 43 characters
SALT_BYTES = 16  # made by backend/adapters/random_secrets.py, as the tokens


def normalize_name(name: str) -> str:
    """NFC, then case folding, then stripping: the order the contract fixes."""
    return unicodedata.normalize("NFC", name).casefold().strip()


def cid_for_name(name: str) -> int:
    """The first 8 bytes of SHA-256 over the normalised name, as an unsigned integer."""
    digest = hashlib.sha256(normalize_name(name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def format_cid(cid: int) -> str:
    return f"{cid:016x}"


def parse_cid(text: object) -> int | None:
    """The CID written as exactly 16 lowercase hex digits, or None if it is not one."""
    if not isinstance(text, str) or not CID_PATTERN.fullmatch(text):
        return None
    return int(text, 16)


def hash_token(token: str, salt: bytes) -> bytes:
    # Tokens carry 256 random bits, so a keyed fast hash is enough: no password stretching.
    return hmac.new(salt, token.encode("utf-8"), hashlib.sha256).digest()


def token_matches(token: str, salt: bytes, digest: bytes) -> bool:
    return hmac.compare_digest(hash_token(token, salt), digest)
