"""Who may log in to the broker and what each may do: roles, ACL text, credentials.

taskring's Mosquitto runs with one MQTT user per role. Each role may publish
only on its own subtrees of `taskring/v1/` (backend/bus/topics.py), so a
compromised web process cannot forge a portal's changes and `taskring status`
can only read heartbeats. The passwords are generated once into
`DATA/broker-credentials.json` (mode 0600); whoever runs a component on this
host reads its role's URL from there with `broker_url_for`.

Everything here but the credentials file is pure.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from .bus.topics import ROOT, matches
from .config import (
    BROKER_CREDENTIALS_FILE,
    DEFAULT_BROKER,
    BrokerAddress,
    ConfigError,
    broker_url,
)

# role -> ACL rules as (access, topic filter); access is "read", "write" or "readwrite".
ROLE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "portal": (
        ("readwrite", f"{ROOT}/sync/#"),
        ("readwrite", f"{ROOT}/ring/#"),
        ("read", f"{ROOT}/heartbeat/#"),
        ("write", f"{ROOT}/heartbeat/client-portal/#"),
        ("write", f"{ROOT}/heartbeat/admin-portal/#"),
    ),
    "cachenode": (
        ("readwrite", f"{ROOT}/ring/#"),
        ("readwrite", f"{ROOT}/raft/#"),
        ("write", f"{ROOT}/heartbeat/cache-node/#"),
    ),
    "replica": (
        ("readwrite", f"{ROOT}/raft/#"),
        ("write", f"{ROOT}/heartbeat/replica/#"),
    ),
    "web": (
        ("read", f"{ROOT}/#"),
        ("write", f"{ROOT}/heartbeat/web/#"),
    ),
    # `taskring status`: looks, never touches.
    "cli": (("read", f"{ROOT}/heartbeat/#"),),
}
ROLES = tuple(ROLE_RULES)

# Which role each component logs in as.
COMPONENT_ROLES = {
    "client-portal": "portal",
    "admin-portal": "portal",
    "cache-node": "cachenode",
    "replica": "replica",
    "web": "web",
    "status": "cli",
}

PASSWORD_BYTES = 24


def acl_lines(role: str) -> list[str]:
    """The Mosquitto acl_file lines for one role."""
    if role not in ROLE_RULES:
        raise ConfigError(f"unknown broker role {role!r}; roles are {', '.join(ROLES)}")
    return [f"user {role}", *(f"topic {access} {topic}" for access, topic in ROLE_RULES[role])]


def acl_text(roles: tuple[str, ...] = ROLES) -> str:
    """A whole Mosquitto acl_file: one block per role, blank lines between."""
    return "\n\n".join("\n".join(acl_lines(role)) for role in roles) + "\n"


def may(role: str, action: str, topic: str) -> bool:
    """Whether `role` may "read" (receive) or "write" (publish) on `topic` under ROLE_RULES."""
    return any(
        access in (action, "readwrite") and matches(topic_filter, topic)
        for access, topic_filter in ROLE_RULES.get(role, ())
    )


def plaintext_password_file(passwords: Mapping[str, str]) -> str:
    """`user:password` lines, the input `mosquitto_passwd -U` turns into hashes."""
    for role, password in passwords.items():
        if ":" in role or "\n" in role or "\n" in password:
            raise ConfigError(f"broker user {role!r}: name or password has a forbidden character")
    return "".join(f"{role}:{password}\n" for role, password in passwords.items())


def role_url(role: str, password: str, host: str, port: int) -> str:
    """`mqtt://role:password@host:port`, with both parts URL-quoted."""
    return f"mqtt://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}"


def credentials_path(data_dir: Path) -> Path:
    return data_dir / BROKER_CREDENTIALS_FILE


def load_credentials(data_dir: Path) -> dict[str, str]:
    """The role passwords stored in the data directory; empty when there are none."""
    path = credentials_path(data_dir)
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read broker credentials ({exc})") from exc
    passwords = stored.get("passwords") if isinstance(stored, dict) else None
    if not isinstance(passwords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in passwords.items()
    ):
        raise ConfigError(f'{path}: expected {{"passwords": {{role: password}}}}')
    return passwords


def ensure_credentials(data_dir: Path) -> dict[str, str]:
    """Load the role passwords, generating any that are missing; the file is mode 0600."""
    passwords = load_credentials(data_dir)
    missing = [role for role in ROLES if role not in passwords]
    if missing:
        for role in missing:
            passwords[role] = secrets.token_urlsafe(PASSWORD_BYTES)
        write_private(credentials_path(data_dir), json.dumps({"passwords": passwords}, indent=2))
    return passwords


def broker_url_for(role: str, host: str, port: int, data_dir: Path) -> str:
    """The URL a component of `role` uses to reach taskring's own broker on host:port."""
    passwords = ensure_credentials(data_dir)
    if role not in passwords:
        raise ConfigError(f"unknown broker role {role!r}; roles are {', '.join(ROLES)}")
    return role_url(role, passwords[role], host, port)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(temporary, 0o600)  # O_CREAT keeps an existing file's mode
    os.replace(temporary, path)


def local_broker_url(role: str, flag: str | None, data_dir: Path) -> str:
    """The broker URL a component or tool of `role` on this host should use.

    --broker or TASKRING_BROKER when given; else the default broker, logged in
    as `role` when `data_dir` holds the passwords `taskring up` made for it.
    """
    url = broker_url(flag)
    if flag or url != DEFAULT_BROKER:
        return url
    password = load_credentials(data_dir).get(role)
    if not password:
        return url
    address = BrokerAddress.parse(url)
    return role_url(role, password, address.host, address.port)
