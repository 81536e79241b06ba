"""MQTT 3.1.1 packets: the bytes each encoder makes, and a decoder that is total."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.core import mqtt_packets as mqtt
from backend.core.mqtt_packets import (
    ConnAck,
    PacketDecoder,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    UnsubAck,
)

FUZZ = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_connect_with_everything() -> None:
    packet = mqtt.connect(
        "c1",
        username="u",
        password="p",
        keepalive=10,
        will_topic="w",
        will_payload=b"\x01",
        will_qos=1,
    )
    body = b"\x00\x04MQTT\x04" + bytes([0x80 | 0x40 | 0x08 | 0x04 | 0x02]) + b"\x00\x0a"
    body += b"\x00\x02c1" + b"\x00\x01w" + b"\x00\x01\x01" + b"\x00\x01u" + b"\x00\x01p"
    assert packet == bytes([0x10, len(body)]) + body


def test_connect_bare_matches_the_probe() -> None:
    from backend.adapters.bus.probe import connect_packet

    assert mqtt.connect("x", username="u", password="p", keepalive=5) == connect_packet(
        "x", "u", "p", 5
    )


def test_connect_refuses_a_password_without_a_user() -> None:
    with pytest.raises(ValueError, match="user name"):
        mqtt.connect("c", password="p")


def test_publish_subscribe_unsubscribe_puback_bytes() -> None:
    assert mqtt.publish("a/b", b"hi") == b"\x30\x07\x00\x03a/bhi"
    assert mqtt.publish("a", b"", qos=1, packet_id=258) == b"\x32\x05\x00\x01a\x01\x02"
    assert mqtt.publish("a", b"", retain=True) == b"\x31\x03\x00\x01a"
    assert (
        mqtt.subscribe(1, [("a/#", 0), ("b", 1)]) == b"\x82\x0c\x00\x01\x00\x03a/#\x00\x00\x01b\x01"
    )
    assert mqtt.unsubscribe(7, ["a/#"]) == b"\xa2\x07\x00\x07\x00\x03a/#"
    assert mqtt.puback(1) == b"\x40\x02\x00\x01"
    assert mqtt.PINGREQ == b"\xc0\x00" and mqtt.DISCONNECT == b"\xe0\x00"


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_examples_from_the_standard(length: int, encoded: bytes) -> None:
    assert mqtt.remaining_length(length) == encoded


def test_encoders_refuse_what_mqtt_cannot_say() -> None:
    with pytest.raises(ValueError):
        mqtt.remaining_length(268_435_456)
    with pytest.raises(ValueError):
        mqtt.publish("a", b"", qos=2, packet_id=1)
    with pytest.raises(ValueError):
        mqtt.publish("a", b"", qos=1)
    with pytest.raises(ValueError):
        mqtt.publish("a", b"", packet_id=1)
    with pytest.raises(ValueError):
        mqtt.subscribe(0, [("a", 0)])
    with pytest.raises(ValueError):
        mqtt.subscribe(1, [])
    with pytest.raises(ValueError):
        mqtt.publish("x" * 70_000, b"")
    for topic in ("", "a/+", "a/#"):
        with pytest.raises(ValueError, match="wildcards"):
            mqtt.publish(topic, b"")


BROKER_BYTES = [
    (b"\x20\x02\x00\x00", ConnAck(False, 0)),
    (b"\x20\x02\x01\x05", ConnAck(True, 5)),
    (b"\x90\x04\x00\x09\x00\x80", SubAck(9, (0, 0x80))),
    (b"\xb0\x02\x01\x00", UnsubAck(256)),
    (b"\x40\x02\x00\x01", PubAck(1)),
    (b"\xd0\x00", PingResp()),
    (b"\x30\x05\x00\x01ahi", Publish("a", b"hi")),
    (b"\x3b\x07\x00\x01a\x00\x02hi", Publish("a", b"hi", 1, 2, True, True)),
]


@pytest.mark.parametrize(("data", "packet"), BROKER_BYTES)
def test_decodes_each_packet_a_broker_sends(data: bytes, packet: mqtt.Packet) -> None:
    assert PacketDecoder().feed(data) == [packet]


def test_decodes_a_stream_however_it_is_cut() -> None:
    stream = b"".join(data for data, _ in BROKER_BYTES)
    packets = [packet for _, packet in BROKER_BYTES]
    assert PacketDecoder().feed(stream) == packets
    for cut in range(len(stream) + 1):
        decoder = PacketDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == packets
    decoder = PacketDecoder()
    assert [p for i in range(len(stream)) for p in decoder.feed(stream[i : i + 1])] == packets
    assert decoder.buffered == 0


MALFORMED = [
    (b"\x30\xff\xff\xff\xff\x01", "over 4 bytes"),
    (b"\x10\x00", "unexpected packet type 1"),
    (b"\x82\x00", "unexpected packet type 8"),
    (b"\x21\x02\x00\x00", "unexpected packet type 2"),
    (b"\x20\x03\x00\x00\x00", "CONNACK of 3 bytes"),
    (b"\x20\x02\x02\x00", "reserved flags"),
    (b"\x90\x02\x00\x01", "no return code"),
    (b"\x90\x03\x00\x01\x03", "return code 0x3"),
    (b"\x90\x03\x00\x00\x00", "packet id 0"),
    (b"\x40\x03\x00\x01\x00", "PUBACK of 3"),
    (b"\xd0\x01\x00", "PINGRESP of 1"),
    (b"\x34\x05\x00\x01a\x00\x01", "QoS 2"),
    (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
    (b"\x38\x03\x00\x01a", "DUP"),
    (b"\x30\x01\x00", "too short"),
    (b"\x30\x03\x00\x05a", "shorter than its topic"),
    (b"\x32\x04\x00\x01a\x00", "shorter than its topic"),
    (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
    (b"\x30\x03\x00\x01\xff", "not UTF-8"),
    (b"\x30\x02\x00\x00", "empty topic"),
]


@pytest.mark.parametrize(("data", "why"), MALFORMED)
def test_malformed_input_raises_one_protocol_error_naming_it(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        PacketDecoder().feed(data)


def test_a_packet_over_the_limit_is_refused_from_its_header() -> None:
    decoder = PacketDecoder(max_packet_size=100)
    assert decoder.feed(b"\x30\x62\x00\x01a") == []  # 100 bytes: allowed, not yet complete
    with pytest.raises(ProtocolError, match="over the limit of 100"):
        PacketDecoder(max_packet_size=100).feed(b"\x30\x63")


topics = st.text(min_size=1, max_size=30).filter(lambda t: "+" not in t and "#" not in t)
publishes = st.builds(
    lambda topic, payload, qos, packet_id, retain: Publish(
        topic, payload, qos, packet_id if qos else None, retain
    ),
    topics,
    st.binary(max_size=300),
    st.integers(0, 1),
    st.integers(1, 0xFFFF),
    st.booleans(),
)


def _encode(packet: mqtt.Packet) -> bytes:
    if isinstance(packet, Publish):
        return mqtt.publish(
            packet.topic,
            packet.payload,
            qos=packet.qos,
            packet_id=packet.packet_id,
            retain=packet.retain,
        )
    assert isinstance(packet, PubAck)
    return mqtt.puback(packet.packet_id)


@FUZZ
@given(st.lists(publishes | st.builds(PubAck, st.integers(1, 0xFFFF)), max_size=8), st.data())
def test_round_trip_through_any_cuts(packets: list[mqtt.Packet], data: st.DataObject) -> None:
    stream = b"".join(_encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = PacketDecoder()
    decoded: list[mqtt.Packet] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded += decoder.feed(stream[start:end])
    assert decoded == packets


@FUZZ
@given(st.binary(max_size=200), st.integers(2, 64))
def test_any_bytes_give_packets_or_a_protocol_error(data: bytes, limit: int) -> None:
    decoder = PacketDecoder(max_packet_size=limit)
    try:
        decoder.feed(data)
    except ProtocolError:
        return
    assert decoder.buffered <= max(limit, 5)
