"""Ask whether an MQTT broker answers at an address, and whether it lets us in.

`taskring up` uses this to decide between an existing broker and starting
its own. It speaks just enough MQTT 3.1.1 for that (CONNECT, CONNACK,
DISCONNECT) over a plain socket, so it works against any broker without
setting up a client library.
"""

from __future__ import annotations

import os
import socket
import struct

from backend.core.mqtt_packets import CONNACK_ACCEPTED, CONNACK_REASONS, connack_reason

__all__ = ["CONNACK_ACCEPTED", "CONNACK_REASONS", "connack_reason", "probe_broker"]
DISCONNECT = b"\xe0\x00"


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None, keepalive: int = 5
) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def parse_connack(data: bytes) -> int | None:
    """The return code of a CONNACK, or None when `data` is not one."""
    if len(data) < 4 or data[0] != 0x20 or data[1] != 2:
        return None
    return data[3]


def probe_broker(
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 1.0,
) -> int | None:
    """The CONNACK return code the broker at host:port gives us; None if no MQTT broker answers."""
    client_id = f"taskring-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(connect_packet(client_id, username, password))
            data = b""
            while len(data) < 4:
                chunk = sock.recv(4 - len(data))
                if not chunk:
                    break
                data += chunk
            code = parse_connack(data)
            if code == CONNACK_ACCEPTED:
                sock.sendall(DISCONNECT)
            return code
    except OSError:
        return None
