"""MQTT 3.1.1 packets as bytes: what a client sends, and a decoder for what a broker sends.

Encoders return the packet's bytes. `PacketDecoder` is fed bytes as they
arrive and returns the whole packets they complete, in order. It is total:
input that is not a packet a broker may send a QoS-0/1 client (CONNACK,
SUBACK, UNSUBACK, PUBLISH at QoS 0 or 1, PUBACK, PINGRESP) raises one
`ProtocolError` naming what is wrong, and no packet may claim more than
`max_packet_size` bytes, so a broken or hostile peer cannot make it buffer
without bound. After a ProtocolError the connection is beyond repair: drop it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

MAX_REMAINING_LENGTH = 268_435_455  # four 7-bit digits: the most MQTT can say
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5
MAX_PACKET_ID = 0xFFFF
SUBACK_FAILURE = 0x80
CONNACK_ACCEPTED = 0
# What each MQTT 3.1.1 CONNACK return code means, as we report it. Each says only its
# own cause: "server unavailable" is what a clustered broker answers while it cannot
# take clients (RabbitMQ: "client ID registration timed out" during a rolling restart),
# and must not read as a password problem.
CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version (the broker does not speak MQTT 3.1.1)",
    2: "client identifier rejected",
    3: "server unavailable (the broker is up but cannot take clients now)",
    4: "bad user name or password",
    5: "not authorized",
}


def connack_reason(code: int | None) -> str:
    """What a CONNACK return code means; None is no CONNACK at all."""
    if code is None:
        return "no CONNACK (nothing answered, or not an MQTT broker)"
    return CONNACK_REASONS.get(code, f"unknown CONNACK return code {code}")


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

_CONNECT = 0x10
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82  # SUBSCRIBE and UNSUBSCRIBE carry the fixed flags 0b0010
_UNSUBSCRIBE = 0xA2
_SUBACK_CODES = frozenset({0, 1, 2, SUBACK_FAILURE})


class ProtocolError(ValueError):
    """The bytes are not a packet this client can accept; the text says why."""


class ConnAck(NamedTuple):
    session_present: bool
    return_code: int


class SubAck(NamedTuple):
    packet_id: int
    return_codes: tuple[int, ...]  # one per filter, in order: granted QoS or SUBACK_FAILURE


class UnsubAck(NamedTuple):
    packet_id: int


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int | None = None  # set exactly when qos is 1
    retain: bool = False
    dup: bool = False


class PubAck(NamedTuple):
    packet_id: int


class PingResp(NamedTuple):
    pass


Packet = ConnAck | SubAck | UnsubAck | Publish | PubAck | PingResp


# Encoding


def remaining_length(length: int) -> bytes:
    """The variable-length integer a fixed header ends with."""
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"packet body of {length} bytes is more than MQTT can carry")
    if length < 128:
        return bytes((length,))
    encoded = bytearray()
    while True:
        digit, length = length & 0x7F, length >> 7
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes is longer than MQTT allows")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining_length(len(body)) + body


def _check_qos(qos: int) -> None:
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos}: only 0 and 1 are supported")


def _check_packet_id(packet_id: int) -> None:
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet id {packet_id} is not in 1..{MAX_PACKET_ID}")


def connect(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    clean_session: bool = True,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} is not in 0..65535")
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name")
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will_topic is not None:
        _check_qos(will_qos)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += _string(will_topic) + _string(will_payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    variable = _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
    return _packet(_CONNECT, variable + payload)


def publish(
    topic: str, payload: bytes, *, qos: int = 0, packet_id: int | None = None, retain: bool = False
) -> bytes:
    """A PUBLISH; QoS 1 needs a packet id, QoS 0 must have none."""
    _check_qos(qos)
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"cannot publish to {topic!r}: a topic is not empty and has no wildcards")
    topic_bytes = topic.encode()
    if qos:
        if packet_id is None:
            raise ValueError("a QoS-1 PUBLISH needs a packet id")
        _check_packet_id(packet_id)
        variable = _string(topic_bytes) + packet_id.to_bytes(2, "big")
    elif packet_id is not None:
        raise ValueError("a QoS-0 PUBLISH has no packet id")
    else:
        variable = _string(topic_bytes)
    first = _PUBLISH | (qos << 1) | (1 if retain else 0)
    return _packet(first, variable + payload)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE to each (topic filter, maximum QoS)."""
    _check_packet_id(packet_id)
    if not filters:
        raise ValueError("a SUBSCRIBE needs at least one topic filter")
    body = packet_id.to_bytes(2, "big")
    for topic_filter, qos in filters:
        _check_qos(qos)
        body += _string(topic_filter) + bytes((qos,))
    return _packet(_SUBSCRIBE, body)


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    _check_packet_id(packet_id)
    if not filters:
        raise ValueError("an UNSUBSCRIBE needs at least one topic filter")
    body = packet_id.to_bytes(2, "big") + b"".join(_string(f) for f in filters)
    return _packet(_UNSUBSCRIBE, body)


def puback(packet_id: int) -> bytes:
    _check_packet_id(packet_id)
    return bytes((_PUBACK, 2)) + packet_id.to_bytes(2, "big")


# Decoding


class PacketDecoder:
    """Turns a byte stream from a broker into packets, however the stream is cut."""

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2 bytes")
        self.max_packet_size = max_packet_size
        self._rest = b""  # the start of a packet not yet complete

    @property
    def buffered(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes) -> list[Packet]:
        """The packets `data` completes; raise ProtocolError on malformed input."""
        buffer = self._rest + data if self._rest else bytes(data)
        packets: list[Packet] = []
        position = 0
        end = len(buffer)
        while end - position >= 2:
            length = buffer[position + 1]
            header = 2
            if length & 0x80:
                framed = _long_length(buffer, position)
                if framed is None:
                    break
                length, header = framed
            size = header + length
            if size > self.max_packet_size:
                raise ProtocolError(
                    f"packet of {size} bytes is over the limit of {self.max_packet_size}"
                )
            end_at = position + size
            if end_at > end:
                break
            first = buffer[position]
            if first >> 4 == 3:  # PUBLISH, nearly everything: parsed in place, one copy
                packets.append(_decode_publish(first & 0x0F, buffer, position + header, end_at))
            else:
                packets.append(_decode(first, buffer[position + header : end_at]))
            position = end_at
        self._rest = buffer[position:] if position < end else b""
        return packets


def _long_length(buffer: bytes, position: int) -> tuple[int, int] | None:
    """(remaining length, fixed header size) of the packet at `position`; None if cut short."""
    length = 0
    for index in range(4):
        at = position + 1 + index
        if at >= len(buffer):
            return None
        digit = buffer[at]
        length |= (digit & 0x7F) << (7 * index)
        if not digit & 0x80:
            return length, index + 2
    raise ProtocolError("remaining length runs over 4 bytes")


def _decode(first: int, body: bytes) -> Packet:
    decoder = _DECODERS.get(first)
    if decoder is None:
        raise ProtocolError(f"unexpected packet type {first >> 4} with flags {first & 0x0F:#x}")
    return decoder(body)


def _decode_publish(flags: int, buffer: bytes, start: int, end: int) -> Publish:
    """The PUBLISH whose body is buffer[start:end]."""
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise ProtocolError(f"PUBLISH at QoS {qos}: this client takes QoS 0 and 1 only")
    if qos == 0 and flags & 0x08:
        raise ProtocolError("PUBLISH at QoS 0 with the DUP flag")
    if end - start < 2:
        raise ProtocolError("PUBLISH too short for its topic length")
    topic_end = start + 2 + ((buffer[start] << 8) | buffer[start + 1])
    payload_start = topic_end + 2 * qos
    if payload_start > end:
        raise ProtocolError("PUBLISH shorter than its topic and packet id")
    if topic_end == start + 2:
        raise ProtocolError("PUBLISH with an empty topic")
    try:
        topic = buffer[start + 2 : topic_end].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("PUBLISH topic is not UTF-8") from exc
    packet_id = None
    if qos:
        packet_id = _packet_id(buffer[topic_end:payload_start], "PUBLISH")
    return Publish(
        topic, buffer[payload_start:end], qos, packet_id, bool(flags & 0x01), bool(flags & 0x08)
    )


def _packet_id(data: bytes, what: str) -> int:
    packet_id = (data[0] << 8) | data[1]
    if packet_id == 0:
        raise ProtocolError(f"{what} with packet id 0")
    return packet_id


def _exact(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ProtocolError(f"{what} of {len(body)} bytes, not {size}")


def _decode_connack(body: bytes) -> ConnAck:
    _exact(body, 2, "CONNACK")
    if body[0] & 0xFE:
        raise ProtocolError(f"CONNACK with reserved flags {body[0]:#x}")
    return ConnAck(bool(body[0] & 0x01), body[1])


def _decode_suback(body: bytes) -> SubAck:
    if len(body) < 3:
        raise ProtocolError(f"SUBACK of {len(body)} bytes has no return code")
    codes = tuple(body[2:])
    bad = [code for code in codes if code not in _SUBACK_CODES]
    if bad:
        raise ProtocolError(f"SUBACK return code {bad[0]:#x} is not 0, 1, 2 or 0x80")
    return SubAck(_packet_id(body, "SUBACK"), codes)


def _decode_unsuback(body: bytes) -> UnsubAck:
    _exact(body, 2, "UNSUBACK")
    return UnsubAck(_packet_id(body, "UNSUBACK"))


def _decode_puback(body: bytes) -> PubAck:
    _exact(body, 2, "PUBACK")
    return PubAck(_packet_id(body, "PUBACK"))


def _decode_pingresp(body: bytes) -> PingResp:
    _exact(body, 0, "PINGRESP")
    return PingResp()


_DECODERS: dict[int, Callable[[bytes], Packet]] = {
    0x20: _decode_connack,
    0x40: _decode_puback,
    0x90: _decode_suback,
    0xB0: _decode_unsuback,
    0xD0: _decode_pingresp,
}
