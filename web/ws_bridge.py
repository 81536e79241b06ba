"""WS /ws/client: the browser's connection to a client portal.

Each WebSocket gets its own TCP connection to a client portal, opened at the
browser's first message; text messages are request lines passed on unchanged,
and the portal's lines come back as text messages. Portals are taken in turn
from the live ones the web process may use (web/security.py), failing over to
the next when one cannot be reached. What the bridge answers itself, its close
codes and its origin check are in docs/protocol.md, WS /ws/client; its limits
in SECURITY.md, Limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from backend.adapters.settings import ConfigError, parse_host_port
from backend.core.errors import BAD_REQUEST, TOO_LARGE, UNAVAILABLE
from backend.core.protocol import MAX_LINE_BYTES, error_line

from .security import ORIGINS_SETTING, origin_allowed

log = logging.getLogger(__name__)

PortalList = Callable[[], list[str]]
Explain = Callable[[], str]  # why no portal may be used, when the list is empty

DEFAULT_MAX_SOCKETS = 500

# WebSocket close codes (RFC 6455 section 7.4 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_PORTAL_GONE = 1012  # "service restart": reconnect and you get a live portal
CLOSE_TRY_LATER = 1013
MAX_REASON_BYTES = 123  # the most a close frame's reason may hold


@dataclass(frozen=True)
class BridgeLimits:
    connect_timeout: float = 2.0  # per portal address
    wait_for_portals: float = 3.0  # a just-started web process has heard no heartbeat yet
    poll_interval: float = 0.1
    avoid_failed_for: float = 5.0  # an unreachable address goes last for this long
    max_reply_bytes: int = 64 << 20  # a list_tasks reply can be large; past this, give up
    max_sockets: int = DEFAULT_MAX_SOCKETS  # open WebSockets at once


# ---- choosing a portal ------------------------------------------------------------


@dataclass
class PortalChooser:
    """The order to try portal addresses in: round robin, recently unreachable ones last."""

    portals: PortalList
    limits: BridgeLimits
    clock: Callable[[], float] = time.monotonic
    failed: dict[str, float] = field(default_factory=dict)
    turns: itertools.count[int] = field(default_factory=itertools.count)

    def order(self, addresses: list[str]) -> list[str]:
        if not addresses:
            return []
        start = next(self.turns) % len(addresses)
        rotated = addresses[start:] + addresses[:start]
        now = self.clock()
        recent = {a for a, at in self.failed.items() if now - at < self.limits.avoid_failed_for}
        return [a for a in rotated if a not in recent] + [a for a in rotated if a in recent]

    def mark_failed(self, address: str) -> None:
        self.failed[address] = self.clock()

    def mark_ok(self, address: str) -> None:
        self.failed.pop(address, None)

    async def addresses(self) -> list[str]:
        """The live addresses, waiting a little for the first heartbeats if there are none."""
        addresses = self.portals()
        # Nothing to wait on but the heartbeat view itself, so look again at intervals.
        for _ in range(int(self.limits.wait_for_portals / self.limits.poll_interval)):
            if addresses:
                break
            await asyncio.sleep(self.limits.poll_interval)
            addresses = self.portals()
        return self.order(addresses)


@dataclass(frozen=True)
class PortalStream:
    address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    max_reply_bytes: int


async def connect_to_portal(
    chooser: PortalChooser,
) -> tuple[PortalStream | None, list[str]]:
    """The first portal that accepts a TCP connection, or None and why each one failed."""
    failures: list[str] = []
    for address in await chooser.addresses():
        try:
            host, port = parse_host_port(address)
            async with asyncio.timeout(chooser.limits.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, limit=chooser.limits.max_reply_bytes
                )
        except ConfigError as exc:
            failures.append(f"{address}: unusable address ({exc})")
        except TimeoutError:
            chooser.mark_failed(address)
            failures.append(f"{address}: no connection within {chooser.limits.connect_timeout:g}s")
        except OSError as exc:
            chooser.mark_failed(address)
            failures.append(f"{address}: {exc.strerror or exc}")
        else:
            chooser.mark_ok(address)
            stream = PortalStream(address, reader, writer, chooser.limits.max_reply_bytes)
            return stream, failures
    return None, failures


def no_portal_message(failures: list[str], explanation: str | None = None) -> str:
    if not failures:
        why = explanation or "no client portal is up (the web process hears no heartbeat from one)"
        return f"{why}; try again"
    return "no client portal is reachable (" + "; ".join(failures) + "); try again"


# ---- checking browser messages -----------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Send this line (with its newline) to the portal."""

    line: bytes


@dataclass(frozen=True)
class Answer:
    """Answer the browser with this line ourselves; close with `close_code` if set."""

    line: bytes
    close_code: int | None = None


def check_message(message: Mapping[str, Any]) -> Forward | Answer:
    """What to do with one ASGI websocket.receive message holding data."""
    text = message.get("text")
    if text is None:
        return Answer(
            error_line(
                None,
                BAD_REQUEST,
                "send each request as a text message holding one JSON line, not binary",
            )
        )
    if text.endswith("\n"):
        text = text[:-1]
    if "\n" in text:
        return Answer(
            error_line(
                _request_id(text),
                BAD_REQUEST,
                "a message must hold exactly one request line; this one holds a newline",
            )
        )
    line = text.encode("utf-8", "surrogatepass")
    if len(line) > MAX_LINE_BYTES:
        message_text = (
            f"request line is longer than {MAX_LINE_BYTES:,} bytes; the connection is closed"
        )
        return Answer(error_line(None, TOO_LARGE, message_text), CLOSE_TOO_BIG)
    return Forward(line + b"\n")


def _request_id(text: str) -> Any:
    """The id to echo in the bridge's own error answers: the request's, when it has one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, str | int | float | bool) else None


def is_response(line: bytes) -> bool:
    """A portal line is a response (has `ok`), as opposed to a watch event (has neither)."""
    try:
        value = json.loads(line)
    except ValueError:
        return True  # not JSON at all: count it as the answer it must be
    return not (isinstance(value, dict) and "ok" not in value and "event" in value)


def close_reason(text: str) -> str:
    """A close-frame reason, cut to the 123 bytes the frame can carry."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


# ---- one bridged connection --------------------------------------------------------


class Bridge:
    """One WebSocket joined to one TCP connection; `run` returns when either side ends."""

    def __init__(
        self, websocket: WebSocket, portal: PortalStream, first: Mapping[str, Any] | None = None
    ) -> None:
        self.websocket = websocket
        self.portal = portal
        self.first = first  # the browser's message that made the bridge connect, if any
        self.send_lock = asyncio.Lock()
        self.forwarded = 0  # requests sent to the portal
        self.answered = 0  # responses received from it
        self.own_answers: deque[tuple[int, Answer]] = deque()  # (requests before it, answer)
        self.close_code: int | None = None
        self.close_text = ""

    async def run(self) -> None:
        upstream = asyncio.create_task(self._browser_to_portal())
        downstream = asyncio.create_task(self._portal_to_browser())
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            self._close_portal()
        if self.close_code is not None:
            await self._close_browser(self.close_code, self.close_text)

    # ---- browser -> portal ----------------------------------------------------------

    async def _browser_to_portal(self) -> None:
        while True:
            message, self.first = self.first or await self.websocket.receive(), None
            if message["type"] == "websocket.disconnect":
                return
            action = check_message(message)
            if isinstance(action, Forward):
                self.forwarded += 1
                try:
                    self.portal.writer.write(action.line)
                    await self.portal.writer.drain()
                except OSError as exc:
                    self._portal_gone(exc.strerror or str(exc))
                    return
                continue
            if await self._answer_in_order(action):
                return
            if action.close_code is not None:
                # Read nothing more; the answer goes out once earlier ones have.
                await asyncio.Event().wait()

    async def _answer_in_order(self, answer: Answer) -> bool:
        """Send our own answer now if nothing is outstanding, else queue it; True if closing."""
        if self.answered >= self.forwarded and not self.own_answers:
            return await self._send_own(answer)
        self.own_answers.append((self.forwarded, answer))
        return False

    async def _send_own(self, answer: Answer) -> bool:
        await self._send(answer.line)
        if answer.close_code is not None:
            self.close_code, self.close_text = answer.close_code, "request line too long"
            return True
        return False

    # ---- portal -> browser ------------------------------------------------------------

    async def _portal_to_browser(self) -> None:
        reader = self.portal.reader
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                limit = f"{self.portal.max_reply_bytes:,}"
                self._closing(CLOSE_INTERNAL, f"a reply from the client portal exceeds {limit} B")
                return
            except OSError as exc:
                self._portal_gone(exc.strerror or str(exc))
                return
            if not line.endswith(b"\n"):
                self._portal_gone("closed the connection")
                return
            await self._send(line)
            if is_response(line):
                self.answered += 1
                if await self._flush_own_answers():
                    return

    async def _flush_own_answers(self) -> bool:
        while self.own_answers and self.own_answers[0][0] <= self.answered:
            _, answer = self.own_answers.popleft()
            if await self._send_own(answer):
                return True
        return False

    def _portal_gone(self, what: str) -> None:
        self._closing(CLOSE_PORTAL_GONE, f"client portal {self.portal.address} {what}; reconnect")

    def _closing(self, code: int, text: str) -> None:
        self.close_code, self.close_text = code, text

    # ---- sockets ------------------------------------------------------------------

    async def _send(self, line: bytes) -> None:
        text = line.removesuffix(b"\n").decode("utf-8", "replace")
        async with self.send_lock:
            await self.websocket.send_text(text)

    async def _close_browser(self, code: int, text: str) -> None:
        if self.websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.close(code, close_reason(text))

    def _close_portal(self) -> None:
        self.portal.writer.close()


async def serve_socket(
    websocket: WebSocket, chooser: PortalChooser, explain: Explain | None = None
) -> None:
    """Accept one browser socket; at its first message, bridge it to a portal until
    either side leaves."""
    await websocket.accept()
    try:
        first = await websocket.receive()
    except (WebSocketDisconnect, OSError):
        return
    if first["type"] == "websocket.disconnect":
        return
    portal, failures = await connect_to_portal(chooser)
    if portal is None:
        message = no_portal_message(failures, explain() if explain else None)
        log.warning("client bridge: %s", message)
        request_id = _request_id(first.get("text") or "")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.send_text(error_line(request_id, UNAVAILABLE, message).decode()[:-1])
            await websocket.close(CLOSE_TRY_LATER, close_reason("no client portal is reachable"))
        return
    try:
        await Bridge(websocket, portal, first).run()
    except (WebSocketDisconnect, OSError) as exc:
        log.debug("client bridge to %s ended: %s", portal.address, exc)
        portal.writer.close()


def refusal(websocket: WebSocket, origins: frozenset[str]) -> str | None:
    """Why this handshake may not proceed (its Origin), or None."""
    origin = websocket.headers.get("origin")
    if origin is None or origin_allowed(origin, websocket.headers.get("host"), origins):
        return None
    return f"origin {origin[:100]!r} is neither this server's nor in {ORIGINS_SETTING}"


def create_ws_router(
    portals: PortalList,
    limits: BridgeLimits | None = None,
    explain: Explain | None = None,
    origins: frozenset[str] = frozenset(),
) -> APIRouter:
    """An APIRouter serving WS /ws/client over the client portals `portals()` names;
    `explain()` says why when it names none; `origins` are allowed besides the same one."""
    limits = limits or BridgeLimits()
    chooser = PortalChooser(portals, limits)
    router = APIRouter()
    open_sockets = 0

    @router.websocket("/ws/client")
    async def client_bridge(websocket: WebSocket) -> None:
        nonlocal open_sockets
        refused = refusal(websocket, origins)
        if refused is not None:
            log.warning("client bridge: refused a handshake: %s", refused)
            await websocket.close(CLOSE_POLICY)  # before accept: the handshake gets HTTP 403
            return
        if open_sockets >= limits.max_sockets:
            await websocket.accept()
            reason = f"too many open sockets (at most {limits.max_sockets}); try again later"
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await websocket.close(CLOSE_TRY_LATER, close_reason(reason))
            return
        open_sockets += 1
        try:
            await serve_socket(websocket, chooser, explain)
        finally:
            open_sockets -= 1

    return router
