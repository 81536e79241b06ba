"""Who may log in to the broker and what each may do: logins, roles, ACL text, credentials.

One MQTT login per component, named like its client id (`client-portal-1`,
`replica-g1-2`, `status` for `taskring status`, ...), which Mosquitto also takes
as the client id, so no login can take over another's connection. A login's
name says its role, and ROLE_RULES, the one table of what each role may do,
gives it exactly the topics (backend/core/topics.py) its job needs (the table
in SECURITY.md). Passwords are generated into `DATA/broker-credentials.json`
(mode 0600); `broker_url_for` reads a component's URL from there. Everything
here but the credentials file is pure.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from backend.adapters.private_files import write_private
from backend.adapters.settings import (
    BROKER_CREDENTIALS_FILE,
    DEFAULT_BROKER,
    BrokerAddress,
    ConfigError,
    broker_url,
)
from backend.core.topics import ROOT, matches

Rule = tuple[str, str]  # (access, topic filter); access is "read", "write" or "readwrite"

# The topics both kinds of portal need: the ring's requests and replies, and the `local`
# storage mode's replication (backend/adapters/store/local_store.py); {id} is the portal's.
_PORTAL_RULES: tuple[Rule, ...] = (
    ("write", "ring/host/+"),
    ("read", "ring/reply/{id}"),
    ("read", "ring/announce"),
    ("read", "ring/client-changes"),
    ("readwrite", "sync/changes"),
    ("readwrite", "sync/snapshot-request"),
    ("read", "sync/snapshot/{id}"),
    ("write", "sync/snapshot/+"),  # a snapshot for the portal that asked
)

# role -> its rules, topics relative to ROOT; {id} is the login, {group} and {member} a
# replica's. `+` only where the role talks to any of its peers.
ROLE_RULES: dict[str, tuple[Rule, ...]] = {
    "client-portal": (
        *_PORTAL_RULES,
        ("read", "ring/events/+"),  # for its connections that watch a client
        ("write", "heartbeat/client-portal/{id}"),
    ),
    "admin-portal": (*_PORTAL_RULES, ("write", "heartbeat/admin-portal/{id}")),
    "cache-node": (
        ("read", "ring/host/{id}"),
        ("write", "ring/host/+"),  # Chord messages and handovers to the other nodes
        ("readwrite", "ring/announce"),  # its last will is published there too
        ("write", "ring/reply/+"),
        ("write", "ring/events/{id}"),
        ("write", "ring/client-changes"),
        ("write", "raft/+/+"),  # proposals and reads to the members' inboxes
        ("read", "raft/+/reply/{id}/+"),  # one level per incarnation
        ("write", "heartbeat/cache-node/{id}"),
    ),
    "replica": (
        ("read", "raft/{group}/{member}"),
        ("write", "raft/{group}/+"),
        ("write", "raft/{group}/reply/#"),
        ("write", "heartbeat/replica/{group}-{member}"),
    ),
    "web": (
        ("read", "heartbeat/#"),
        ("write", "heartbeat/web/{id}"),
        ("read", "chaos/events"),  # the faults `taskring chaos` injects, for the cluster page
    ),
    # `taskring status`: looks, never touches.
    "status": (("read", "heartbeat/#"),),
    # `taskring chaos`: announces the faults it injects, and touches nothing else.
    "chaos": (("write", "chaos/events"),),
}
ROLES = tuple(ROLE_RULES)

STATUS_LOGIN = "status"
CHAOS_LOGIN = "chaos"
TOOL_LOGINS = (STATUS_LOGIN, CHAOS_LOGIN)  # the broker knows these besides the components
# A login's name gives its role; replicas are named replica-<group>-<member>.
_LEVEL = r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*"  # a topic level: no '/', '+' or '#'
_LOGIN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("replica", re.compile(r"replica-(?P<group>[A-Za-z0-9_.]+)-(?P<member>[0-9]+)")),
    ("client-portal", re.compile(rf"client-portal-{_LEVEL}")),
    ("admin-portal", re.compile(rf"admin-portal-{_LEVEL}")),
    ("cache-node", re.compile(rf"cache-node-{_LEVEL}")),
    ("web", re.compile(rf"web-{_LEVEL}")),
    ("status", re.compile(STATUS_LOGIN)),
    ("chaos", re.compile(CHAOS_LOGIN)),
)
LOGIN_FORMS = (
    "client-portal-<id>, admin-portal-<id>, cache-node-<id>, "
    "replica-<group>-<member>, web-<id>, status, chaos"
)

PASSWORD_BYTES = 24


def role_of(login: str) -> str | None:
    """The role a login's name gives it, or None when it names no taskring component."""
    for role, pattern in _LOGIN_PATTERNS:
        if pattern.fullmatch(login):
            return role
    return None


def checked_role(login: str) -> str:
    role = role_of(login)
    if role is None:
        raise ConfigError(f"{login!r} is not a broker login; logins are {LOGIN_FORMS}")
    return role


def login_rules(login: str) -> tuple[Rule, ...]:
    """ROLE_RULES for the login's role, with its own id (and group, member) filled in."""
    role = checked_role(login)
    fields = {"id": login}
    if role == "replica":
        found = _LOGIN_PATTERNS[0][1].fullmatch(login)
        assert found is not None
        fields.update(found.groupdict())
    return tuple((access, f"{ROOT}/{topic.format(**fields)}") for access, topic in ROLE_RULES[role])


def acl_lines(login: str) -> list[str]:
    """The Mosquitto acl_file lines for one login."""
    return [f"user {login}", *(f"topic {access} {topic}" for access, topic in login_rules(login))]


def acl_text(logins: Iterable[str]) -> str:
    """A whole Mosquitto acl_file: one block per login, blank lines between."""
    return "\n\n".join("\n".join(acl_lines(login)) for login in logins) + "\n"


def may(login: str, action: str, topic: str) -> bool:
    """Whether `login` may "read" (receive) or "write" (publish) on `topic`."""
    if role_of(login) is None:
        return False
    return any(
        access in (action, "readwrite") and matches(topic_filter, topic)
        for access, topic_filter in login_rules(login)
    )


def component_logins(passwords: Mapping[str, str]) -> dict[str, str]:
    """The stored logins that name a component: older files also hold one login per
    role (`portal`, `cachenode`, ...), which the broker no longer accepts."""
    return {login: pw for login, pw in passwords.items() if role_of(login) is not None}


def plaintext_password_file(passwords: Mapping[str, str]) -> str:
    """`user:password` lines, the input `mosquitto_passwd -U` turns into hashes."""
    for login, password in passwords.items():
        if ":" in login or "\n" in login or "\n" in password:
            raise ConfigError(f"broker user {login!r}: name or password has a forbidden character")
    return "".join(f"{login}:{password}\n" for login, password in passwords.items())


def login_url(login: str, password: str, host: str, port: int) -> str:
    """`mqtt://login:password@host:port`, with both parts URL-quoted."""
    return f"mqtt://{quote(login, safe='')}:{quote(password, safe='')}@{host}:{port}"


def login_urls(login: str, password: str, nodes: Iterable[tuple[str, int]]) -> str:
    """`login_url` for every (host, port) node of one broker, comma-separated: the
    broker list a component takes (settings.BrokerAddresses)."""
    return ",".join(login_url(login, password, host, port) for host, port in nodes)


def with_login(url: str, login: str, password: str) -> str:
    """`url` (one broker URL without a login) logged in as `login`: its scheme, host,
    port and query (TLS, ?ca=...) kept, both login parts URL-quoted."""
    parts = urlsplit(url)
    netloc = f"{quote(login, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def rotated(urls: Sequence[str], start: int) -> list[str]:
    """`urls` starting at index `start` (modulo their number), the rest in order after."""
    if not urls:
        return []
    start %= len(urls)
    return [*urls[start:], *urls[:start]]


def credentials_path(data_dir: Path) -> Path:
    return data_dir / BROKER_CREDENTIALS_FILE


def load_credentials(data_dir: Path) -> dict[str, str]:
    """The login passwords stored in the data directory; empty when there are none."""
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
        raise ConfigError(f'{path}: expected {{"passwords": {{login: password}}}}')
    return passwords


def ensure_credentials(data_dir: Path, logins: Iterable[str] = (STATUS_LOGIN,)) -> dict[str, str]:
    """Load the passwords, generating one for each of `logins` that has none (the file is
    mode 0600). Logins already stored stay, so components started by hand keep theirs."""
    wanted = list(logins)
    for login in wanted:
        checked_role(login)
    passwords = load_credentials(data_dir)
    missing = [login for login in wanted if login not in passwords]
    if missing:
        for login in missing:
            passwords[login] = secrets.token_urlsafe(PASSWORD_BYTES)
        write_private(credentials_path(data_dir), json.dumps({"passwords": passwords}, indent=2))
    return passwords


def broker_url_for(
    login: str, host: str, port: int, data_dir: Path, more: Iterable[tuple[str, int]] = ()
) -> str:
    """The URL component `login` uses to reach taskring's own broker on host:port; with
    `more` (host, port) nodes of the same clustered broker, the list of them all, its
    login in every URL."""
    passwords = ensure_credentials(data_dir, [login])
    return login_urls(login, passwords[login], [(host, port), *more])


def local_broker_url(login: str, flag: str | None, data_dir: Path) -> str:
    """The broker URL component or tool `login` on this host should use.

    --broker or TASKRING_BROKER when given; else the default broker, logged in
    as `login` when `data_dir` holds a password for it.
    """
    url = broker_url(flag)
    if flag or url != DEFAULT_BROKER:
        return url
    password = load_credentials(data_dir).get(login)
    if not password:
        return url
    address = BrokerAddress.parse(url)
    return login_url(login, password, address.host, address.port)
