"""The broker's roles, ACL text, credentials file, configuration and the MQTT probe's bytes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from backend import broker_auth
from backend.broker import MosquittoSettings, mosquitto_conf
from backend.bus import topics
from backend.bus.probe import connect_packet, parse_connack
from backend.config import BrokerAddress, ConfigError

HEARTBEAT_KINDS = {
    "portal": ("client-portal", "admin-portal"),
    "cachenode": ("cache-node",),
    "replica": ("replica",),
    "web": ("web",),
}


def test_the_roles_are_the_documented_five() -> None:
    assert set(broker_auth.ROLES) == {"portal", "cachenode", "replica", "web", "cli"}


def test_acl_block_starts_with_the_user_and_lists_one_topic_rule_per_line() -> None:
    lines = broker_auth.acl_lines("web")
    assert lines == [
        "user web",
        "topic read taskring/v1/#",
        "topic write taskring/v1/heartbeat/web/#",
    ]


def test_acl_text_has_one_block_per_role() -> None:
    blocks = broker_auth.acl_text().strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        f"user {role}" for role in broker_auth.ROLES
    ]
    for block in blocks:
        for line in block.splitlines()[1:]:
            keyword, access, topic_filter = line.split(" ")
            assert keyword == "topic"
            assert access in ("read", "write", "readwrite")
            assert topic_filter.startswith(topics.ROOT + "/")


def test_unknown_role_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="'admin'"):
        broker_auth.acl_lines("admin")


def test_only_portals_may_publish_changes() -> None:
    writers = {r for r in broker_auth.ROLES if broker_auth.may(r, "write", topics.SYNC_CHANGES)}
    assert writers == {"portal"}
    assert broker_auth.may("portal", "read", topics.SYNC_CHANGES)
    assert broker_auth.may("portal", "write", topics.sync_snapshot_reply("client-portal-2"))
    assert broker_auth.may("portal", "write", topics.SYNC_SNAPSHOT_REQUEST)


def test_each_role_may_publish_its_own_heartbeats_only() -> None:
    all_kinds = {kind for kinds in HEARTBEAT_KINDS.values() for kind in kinds}
    for role, kinds in HEARTBEAT_KINDS.items():
        for kind in all_kinds:
            allowed = broker_auth.may(role, "write", topics.heartbeat(kind, "x-1"))
            assert allowed == (kind in kinds), (role, kind)


def test_cli_role_reads_heartbeats_and_nothing_else() -> None:
    assert broker_auth.may("cli", "read", topics.heartbeat("client-portal", "client-portal-1"))
    assert not broker_auth.may("cli", "read", topics.SYNC_CHANGES)
    assert not broker_auth.may("cli", "read", f"{topics.ROOT}/ring/x")
    for topic in (topics.SYNC_CHANGES, topics.heartbeat("web", "web")):
        assert not broker_auth.may("cli", "write", topic)


def test_web_reads_everything_under_the_root_but_writes_only_heartbeats() -> None:
    for topic in (topics.SYNC_CHANGES, f"{topics.ROOT}/raft/g1", topics.heartbeat("web", "w")):
        assert broker_auth.may("web", "read", topic)
    assert not broker_auth.may("web", "write", topics.SYNC_CHANGES)
    assert not broker_auth.may("web", "read", "other/topic")


def test_replicas_stay_off_the_ring_and_sync_topics() -> None:
    assert broker_auth.may("replica", "write", f"{topics.ROOT}/raft/group-1/append")
    assert not broker_auth.may("replica", "read", f"{topics.ROOT}/ring/x")
    assert not broker_auth.may("replica", "read", topics.SYNC_CHANGES)


def test_credentials_are_generated_once_and_private(tmp_path: Path) -> None:
    first = broker_auth.ensure_credentials(tmp_path)
    second = broker_auth.ensure_credentials(tmp_path)
    assert first == second
    assert set(first) == set(broker_auth.ROLES)
    assert len(set(first.values())) == len(first)
    assert all(len(password) >= 30 for password in first.values())
    mode = stat.S_IMODE((tmp_path / "broker-credentials.json").stat().st_mode)
    assert mode == 0o600


def test_a_missing_role_is_added_and_the_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "broker-credentials.json"
    path.write_text(json.dumps({"passwords": {"portal": "kept-password"}}))
    path.chmod(0o644)
    passwords = broker_auth.ensure_credentials(tmp_path)
    assert passwords["portal"] == "kept-password"
    assert set(passwords) == set(broker_auth.ROLES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"passwords": {"portal": 3}}'])
def test_a_damaged_credentials_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "broker-credentials.json").write_text(text)
    with pytest.raises(ConfigError, match=r"broker-credentials\.json"):
        broker_auth.ensure_credentials(tmp_path)


def test_role_url_round_trips_through_the_broker_address_parser(tmp_path: Path) -> None:
    url = broker_auth.role_url("web", "p@ss:w/rd%", "127.0.0.1", 1884)
    address = BrokerAddress.parse(url)
    assert (address.username, address.password) == ("web", "p@ss:w/rd%")
    assert (address.host, address.port) == ("127.0.0.1", 1884)
    assert "p@ss" not in address.redacted()


def test_broker_url_for_uses_the_stored_password(tmp_path: Path) -> None:
    url = broker_auth.broker_url_for("cli", "127.0.0.1", 1999, tmp_path)
    password = broker_auth.load_credentials(tmp_path)["cli"]
    assert BrokerAddress.parse(url).password == password
    with pytest.raises(ConfigError):
        broker_auth.broker_url_for("root", "127.0.0.1", 1999, tmp_path)


def test_password_file_lines_refuse_a_colon_in_the_user() -> None:
    assert broker_auth.plaintext_password_file({"a": "x", "b": "y"}) == "a:x\nb:y\n"
    with pytest.raises(ConfigError):
        broker_auth.plaintext_password_file({"a:b": "x"})


def test_mosquitto_conf_with_authentication() -> None:
    text = mosquitto_conf(MosquittoSettings("127.0.0.1", 1884, Path("/d/passwd"), Path("/d/acl")))
    lines = text.splitlines()
    for line in (
        "listener 1884 127.0.0.1",
        "set_tcp_nodelay true",
        "persistence false",
        "allow_anonymous false",
        "password_file /d/passwd",
        "acl_file /d/acl",
        "log_dest stderr",
    ):
        assert line in lines
    assert "user root" not in lines


def test_mosquitto_conf_without_authentication() -> None:
    lines = mosquitto_conf(MosquittoSettings("0.0.0.0", 1883)).splitlines()
    assert "allow_anonymous true" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)


def test_connect_packet_bytes() -> None:
    packet = connect_packet("c", "u", "p", keepalive=5)
    assert packet == (
        b"\x10\x13"  # CONNECT, 19 bytes follow
        b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)
        b"\xc2\x00\x05"  # user name, password, clean session; keepalive 5
        b"\x00\x01c\x00\x01u\x00\x01p"
    )
    anonymous = connect_packet("c")
    assert anonymous[9] == 0x02


def test_long_connect_packet_uses_a_multi_byte_length() -> None:
    packet = connect_packet("c", "u", "p" * 200)
    assert packet[1] & 0x80
    assert len(packet) == 3 + (packet[1] & 0x7F) + 128 * packet[2]


def test_parse_connack() -> None:
    assert parse_connack(b"\x20\x02\x00\x00") == 0
    assert parse_connack(b"\x20\x02\x00\x05") == 5
    assert parse_connack(b"HTTP") is None
    assert parse_connack(b"") is None


def test_local_broker_url_logs_in_with_the_data_directory_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKRING_BROKER", raising=False)
    assert broker_auth.local_broker_url("cli", None, tmp_path) == "mqtt://127.0.0.1:1883"
    password = broker_auth.ensure_credentials(tmp_path)["cli"]
    address = BrokerAddress.parse(broker_auth.local_broker_url("cli", None, tmp_path))
    assert (address.username, address.password, address.port) == ("cli", password, 1883)
    given = "mqtt://other:1884"
    assert broker_auth.local_broker_url("cli", given, tmp_path) == given
    monkeypatch.setenv("TASKRING_BROKER", given)
    assert broker_auth.local_broker_url("cli", None, tmp_path) == given
