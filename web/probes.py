"""Active readiness probes: ask a portal directly whether it answers right now.

Heartbeats say a portal was alive a moment ago; /readyz also wants to know
that a request sent now gets an answer. A client portal is asked `ping` over
its TCP line protocol, an admin portal the standard gRPC health check. Each
probe returns None when the portal answered, else a sentence saying what went
wrong; none of them raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backend.adapters.settings import ConfigError, parse_host_port

PROBE_TIMEOUT = 1.0
MAX_REPLY_BYTES = 65536


async def probe_client_portal(address: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Send `{"op": "ping"}` to a client portal; None if it answers `{"pong": true}`."""
    try:
        host, port = parse_host_port(address)
    except ConfigError as exc:
        return f"its address is unusable: {exc}"
    try:
        async with asyncio.timeout(timeout):
            return await _ping(host, port)
    except TimeoutError:
        return f"no answer to ping from {address} within {timeout:g}s"
    except OSError as exc:
        return f"cannot connect to {address}: {exc.strerror or exc}"


async def _ping(host: str, port: int) -> str | None:
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_BYTES)
    try:
        writer.write(b'{"id": "readyz", "op": "ping"}\n')
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return _check_pong(line)


def _check_pong(line: bytes) -> str | None:
    if not line:
        return "closed the connection without answering ping"
    try:
        reply = json.loads(line)
    except ValueError:
        return "answered ping with something that is not JSON"
    if isinstance(reply, dict) and reply.get("ok") is True and reply.get("pong") is True:
        return None
    return f"answered ping with {line.decode(errors='replace').strip()[:200]}"


async def probe_admin_portal(address: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Ask an admin portal's grpc.health.v1.Health service; None if it says SERVING."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer to the gRPC health check from {address} within {timeout:g}s"
        details = f": {exc.details()}" if exc.details() else ""
        return f"gRPC health check at {address} failed ({exc.code().name}){details}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"gRPC health check at {address} says {status}"
    return None
