"""The web process's edge: which portals the bridges may use, which origins may open
a WebSocket, and the headers every HTTP response carries.

The bridges pass on admin tokens and client `auth` lines, and anyone who can
publish on the broker could announce a portal, so they use only addresses
allowed by `--allow-portals` / `TASKRING_ALLOW_PORTALS` (`*`: any heard address;
unset: none). A WebSocket handshake must come from the same origin or one in
`--allow-origins`; one without `Origin` (not a browser) is admitted. The rules
and why: SECURITY.md, "Heartbeats are not believed" and Limits; docs/protocol.md,
WS /ws/client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.adapters.settings import ConfigError
from backend.core.cluster_view import HeartbeatError, check_portal_address

ANY = "*"
PORTALS_SETTING = "--allow-portals (TASKRING_ALLOW_PORTALS)"
ORIGINS_SETTING = "--allow-origins (TASKRING_ALLOW_ORIGINS)"
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


# ---- portals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalAllowList:
    """The portal addresses the bridges may send to; `configured` False: none at all."""

    addresses: frozenset[str] = frozenset()
    any_address: bool = False
    configured: bool = False

    @classmethod
    def parse(cls, setting: str | None) -> PortalAllowList:
        """From the setting's text; raise ConfigError naming a bad entry."""
        if setting is None or not setting.strip():
            return cls()
        entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
        if ANY in entries:
            return cls(any_address=True, configured=True)
        for entry in entries:
            try:
                check_portal_address(entry)
            except HeartbeatError:
                raise ConfigError(f"{entry!r} is not host:port (or '*')") from None
        return cls(frozenset(entries), configured=True)

    def allows(self, address: str) -> bool:
        return self.any_address or address in self.addresses

    def why_none(self, kind_name: str, heard: Iterable[tuple[str, str]]) -> str:
        """Why no `kind_name` may be used, given the (id, address) pairs heard from."""
        heard = list(heard)
        if not self.configured:
            return (
                f"the web process may use no {kind_name}: {PORTALS_SETTING} is not set"
                " (list the portals' host:port addresses)"
            )
        if heard:
            named = ", ".join(f"{pid} at {address}" for pid, address in heard)
            return f"no {kind_name} at an address in {PORTALS_SETTING} is up (heard {named})"
        return f"no {kind_name} is up (the web process hears no heartbeat from one)"


# ---- origins ----------------------------------------------------------------------------


def parse_origins(setting: str | None) -> frozenset[str]:
    """The extra allowed origins, normalised; raise ConfigError naming a bad entry."""
    if setting is None:
        return frozenset()
    origins = set()
    for entry in (e.strip() for e in setting.split(",")):
        if not entry:
            continue
        if entry == ANY:
            origins.add(ANY)
            continue
        normal = normalise_origin(entry)
        if normal is None:
            raise ConfigError(f"{entry!r} is not an origin like https://host[:port] (or '*')")
        origins.add(normal)
    return frozenset(origins)


def normalise_origin(origin: str) -> str | None:
    """`scheme://host:port` in lower case with the port explicit, or None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}"


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a WebSocket handshake with this Origin (None: no such header) and Host
    header may proceed."""
    if origin is None:
        return True  # not a browser, which could send any Origin it liked anyway
    if ANY in allowed:
        return True
    normal = normalise_origin(origin)
    if normal is None:
        return False  # includes "null", which sandboxed and file: pages send
    if normal in allowed:
        return True
    # Same origin: the Host header names the same host and port. A Host without a port
    # means the default port of the page's own scheme (behind a TLS proxy the page is
    # https while this hop is plain ws, so the request's scheme cannot tell).
    scheme = normal.split("://", 1)[0]
    return host is not None and normalise_origin(f"{scheme}://{host}") == normal


# ---- response headers ---------------------------------------------------------------------

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        # The client page opens its WebSocket to this same host; CSP Level 3 browsers count
        # ws: and wss: of the same host as 'self', older ones need them spelled out, which
        # the middleware does per request from the Host header.
        "connect-src 'self' {ws}",
        "img-src 'self' data:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
# Only a plain host[:port] Host header is repeated into the policy, never anything that
# could end a directive and start another.
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?", re.ASCII)
STATIC_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def content_security_policy(host: str | None) -> str:
    """The CSP for a response to a request with this Host header."""
    ws = f"ws://{host} wss://{host}" if host and _HOST_HEADER.fullmatch(host) else ""
    return CONTENT_SECURITY_POLICY.format(ws=ws).replace("'self' ;", "'self';")


class SecurityHeaders:
    """Adds the CSP, nosniff, no-referrer and frame-denial headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        policy = content_security_policy(host)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = policy
                for name, value in STATIC_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
