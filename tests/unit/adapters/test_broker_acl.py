"""The broker's logins, roles and ACL, its credentials file and configuration, the probe's bytes."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from backend.adapters import broker_logins
from backend.adapters.bus.memory import MemoryHub
from backend.adapters.bus.probe import connect_packet, parse_connack
from backend.adapters.random_secrets import new_salt
from backend.adapters.settings import BrokerAddress, ConfigError
from backend.adapters.store.local_store import LocalStore
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.model.identity import hash_token
from backend.core.ring.cache_core import CacheNode, Publish
from backend.processes.broker import MosquittoSettings, mosquitto_conf
from tests.unit.core.test_cache_core import Cluster

ROOT = topics.ROOT
# One login of each role, named as `taskring up` names its components.
LOGINS = {
    "client-portal": "client-portal-1",
    "admin-portal": "admin-portal-2",
    "cache-node": "cache-node-3",
    "replica": "replica-g1-2",
    "web": "web-1",
    "status": "status",
    "chaos": "chaos",
}
# (heartbeat kind, component id) each login announces itself with.
HEARTBEATS = {
    "client-portal-1": ("client-portal", "client-portal-1"),
    "admin-portal-2": ("admin-portal", "admin-portal-2"),
    "cache-node-3": ("cache-node", "cache-node-3"),
    "replica-g1-2": ("replica", "g1-2"),
    "web-1": ("web", "web-1"),
}


def test_a_login_s_name_gives_its_role() -> None:
    assert {broker_logins.role_of(login) for login in LOGINS.values()} == set(broker_logins.ROLES)
    for role, login in LOGINS.items():
        assert broker_logins.role_of(login) == role
    # The old per-role logins, and names that could not be a topic level, are none.
    for name in ("portal", "cachenode", "cli", "web", "root", "client-portal-1/x", "web-+"):
        assert broker_logins.role_of(name) is None, name


def test_acl_block_starts_with_the_user_and_lists_one_topic_rule_per_line() -> None:
    assert broker_logins.acl_lines("web-1") == [
        "user web-1",
        "topic read taskring/v1/heartbeat/#",
        "topic write taskring/v1/heartbeat/web/web-1",
        "topic read taskring/v1/chaos/events",
    ]


def test_acl_text_has_one_block_per_login() -> None:
    logins = list(LOGINS.values())
    blocks = broker_logins.acl_text(logins).strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [f"user {login}" for login in logins]
    for block in blocks:
        for line in block.splitlines()[1:]:
            keyword, access, topic_filter = line.split(" ")
            assert keyword == "topic"
            assert access in ("read", "write", "readwrite")
            assert topic_filter.startswith(ROOT + "/")


def test_unknown_login_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="'portal'"):
        broker_logins.acl_lines("portal")
    assert not broker_logins.may("portal", "read", topics.heartbeat("web", "web-1"))


def test_every_topic_a_portal_uses_is_allowed() -> None:
    hub = MemoryHub()
    for login in ("client-portal-1", "admin-portal-2"):
        ring, local = hub.attach(), hub.attach()
        RingStore(ring, login)
        LocalStore(local, login)
        subscribed = [topic_filter for topic_filter, _ in ring.handlers + local.handlers]
        assert {topics.ring_reply(login), topics.sync_snapshot_reply(login)} <= set(subscribed)
        if login.startswith("client-portal"):
            subscribed.append(topics.RING_EVENTS)  # while a connection watches a client
        for topic_filter in subscribed:
            assert broker_logins.may(login, "read", topic_filter), (login, topic_filter)
        kind, component = HEARTBEATS[login]
        for topic in (
            topics.ring_host("cache-node-9"),
            topics.SYNC_CHANGES,
            topics.SYNC_SNAPSHOT_REQUEST,
            topics.sync_snapshot_reply("client-portal-7"),
            topics.heartbeat(kind, component),
        ):
            assert broker_logins.may(login, "write", topic), (login, topic)


def test_every_topic_a_cache_node_uses_is_allowed() -> None:
    login = "cache-node-3"
    node = CacheNode(login, incarnation="i", bootstrap=True)
    for topic_filter in [*node.subscriptions(), topics.raft_replies(login, "f00d")]:
        assert broker_logins.may(login, "read", topic_filter), topic_filter
    for topic in (
        topics.ring_host("cache-node-1"),
        topics.RING_ANNOUNCE,  # announcements, and the broker publishes its will there
        topics.ring_reply("admin-portal-1"),
        topics.ring_events(login),
        topics.RING_CLIENT_CHANGES,
        topics.raft_member("g2", 3),
        topics.heartbeat("cache-node", login),
    ):
        assert broker_logins.may(login, "write", topic), topic


class RecordingCluster(Cluster):
    """The cache-ring cluster of test_cache_core, noting who publishes on which topic."""

    def __init__(self) -> None:
        super().__init__()
        self.published: set[tuple[str, str]] = set()

    def emit(self, publisher: str, items: Iterable[Publish]) -> None:
        items = list(items)
        self.published |= {(publisher, item.topic) for item in items}
        super().emit(publisher, items)


def test_every_topic_a_ring_of_cache_nodes_publishes_on_is_allowed() -> None:
    cluster = RecordingCluster()
    cluster.add("cache-node-1", bootstrap=True)
    cluster.run(1.0)
    for name in ("cache-node-2", "cache-node-3"):
        cluster.add(name)
    cluster.settle()
    cid = 0x1234_5678_9ABC_DEF0
    salt = new_salt()
    for op in (
        {"op": "create_client", "cid": cid, "name": "a", "data": "", "created_at": 1,
         "token_salt": salt, "token_hash": hash_token("t", salt)},
        {"op": "insert_task", "cid": cid, "title": "t", "description": ""},
        {"op": "rotate_token", "cid": cid, "token_salt": salt, "token_hash": b"h"},
        {"op": "delete_client", "cid": cid},
    ):  # fmt: skip
        assert cluster.call("cache-node-2", cid, op)["ok"]
    cluster.crash("cache-node-3")
    cluster.run(3.0)
    by_nodes = {(who, topic) for who, topic in cluster.published if who != "test"}
    published = {topic for _, topic in by_nodes}
    assert {topics.RING_CLIENT_CHANGES, topics.ring_reply("test-portal")} <= published
    assert any(topic.startswith(topics.ring_events("")) for topic in published)
    for node, topic in by_nodes:
        assert broker_logins.may(node, "write", topic), (node, topic)


def test_every_topic_a_replica_uses_is_allowed() -> None:
    login = "replica-g1-2"
    assert broker_logins.may(login, "read", topics.raft_member("g1", 2))
    for topic in (
        topics.raft_member("g1", 1),
        topics.raft_member("g1", 3),
        topics.raft_reply("g1", "cache-node-3", "f00d"),
        topics.heartbeat("replica", "g1-2"),
    ):
        assert broker_logins.may(login, "write", topic), topic


def test_heartbeats_are_read_by_web_and_status() -> None:
    for login in ("web-1", "status"):
        assert broker_logins.may(login, "read", topics.HEARTBEATS)
    assert broker_logins.may("web-1", "write", topics.heartbeat("web", "web-1"))


def test_each_login_may_publish_its_own_heartbeat_only() -> None:
    for login in LOGINS.values():
        for kind, component in [*HEARTBEATS.values(), ("client-portal", "client-portal-2")]:
            allowed = broker_logins.may(login, "write", topics.heartbeat(kind, component))
            assert allowed == (HEARTBEATS.get(login) == (kind, component)), (login, component)


def test_only_portals_may_publish_changes() -> None:
    writers = {
        login for login in LOGINS.values() if broker_logins.may(login, "write", topics.SYNC_CHANGES)
    }
    assert writers == {"client-portal-1", "admin-portal-2"}


def test_each_role_is_denied_what_its_job_does_not_need() -> None:
    denied = {
        "web-1": [
            ("read", f"{ROOT}/ring/#"),
            ("read", topics.ring_reply("client-portal-1")),
            ("read", topics.raft_member("g1", 1)),
            ("read", topics.SYNC_CHANGES),
            ("write", topics.heartbeat("client-portal", "client-portal-1")),
        ],
        "client-portal-1": [
            ("read", topics.ring_reply("client-portal-2")),
            ("read", topics.ring_reply("+")),
            ("read", topics.ring_host("cache-node-1")),
            ("read", topics.sync_snapshot_reply("client-portal-2")),
            ("read", topics.HEARTBEATS),
            ("read", topics.raft_member("g1", 1)),
            ("write", topics.raft_member("g1", 1)),
            ("write", topics.ring_reply("client-portal-2")),
            ("write", topics.RING_ANNOUNCE),
            ("write", topics.RING_CLIENT_CHANGES),
            ("write", topics.ring_events("cache-node-1")),
        ],
        "admin-portal-2": [
            ("read", topics.RING_EVENTS),  # nobody watches a client through it
            ("read", topics.ring_reply("admin-portal-1")),
            ("read", topics.HEARTBEATS),
        ],
        "cache-node-3": [
            ("read", topics.ring_host("cache-node-1")),
            ("read", topics.ring_reply("client-portal-1")),
            ("read", topics.raft_replies("cache-node-1", "f00d")),
            ("read", topics.raft_member("g1", 1)),
            ("read", topics.SYNC_CHANGES),
            ("write", topics.ring_events("cache-node-1")),
            ("write", topics.raft_reply("g1", "cache-node-1", "f00d")),
            ("write", topics.SYNC_CHANGES),
        ],
        "replica-g1-2": [
            ("read", topics.raft_member("g1", 1)),
            ("read", topics.raft_member("g2", 2)),
            ("read", topics.raft_replies("cache-node-1", "f00d")),
            ("write", topics.raft_member("g2", 1)),
            ("write", topics.raft_reply("g2", "cache-node-1", "f00d")),
            ("read", f"{ROOT}/ring/#"),
            ("write", topics.ring_reply("client-portal-1")),
            ("read", topics.SYNC_CHANGES),
        ],
        "status": [
            ("read", f"{ROOT}/ring/#"),
            ("read", topics.SYNC_CHANGES),
            *(
                ("write", topic)
                for topic in (topics.SYNC_CHANGES, topics.heartbeat("web", "web-1"))
            ),
            ("write", topics.ring_host("cache-node-1")),
        ],
    }
    for login, rules in denied.items():
        for action, topic in rules:
            assert not broker_logins.may(login, action, topic), (login, action, topic)


def test_credentials_are_generated_once_and_private(tmp_path: Path) -> None:
    first = broker_logins.ensure_credentials(tmp_path, LOGINS.values())
    second = broker_logins.ensure_credentials(tmp_path, LOGINS.values())
    assert first == second
    assert set(first) == set(LOGINS.values())
    assert len(set(first.values())) == len(first)
    assert all(len(password) >= 30 for password in first.values())
    mode = stat.S_IMODE((tmp_path / "broker-credentials.json").stat().st_mode)
    assert mode == 0o600


def test_missing_logins_are_added_and_the_others_kept(tmp_path: Path) -> None:
    # A file from before there was a login per component holds one per role.
    path = tmp_path / "broker-credentials.json"
    stored = {"portal": "old", "cli": "old-too", "web-1": "kept-password"}
    path.write_text(json.dumps({"passwords": stored}))
    path.chmod(0o644)
    passwords = broker_logins.ensure_credentials(tmp_path, ["web-1", "client-portal-1"])
    assert passwords["web-1"] == "kept-password"
    assert set(passwords) == {"portal", "cli", "web-1", "client-portal-1"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The broker accepts only logins that name a component.
    assert set(broker_logins.component_logins(passwords)) == {"web-1", "client-portal-1"}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"passwords": {"portal": 3}}'])
def test_a_damaged_credentials_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "broker-credentials.json").write_text(text)
    with pytest.raises(ConfigError, match=r"broker-credentials\.json"):
        broker_logins.ensure_credentials(tmp_path)


def test_login_url_round_trips_through_the_broker_address_parser(tmp_path: Path) -> None:
    url = broker_logins.login_url("web-1", "p@ss:w/rd%", "127.0.0.1", 1884)
    address = BrokerAddress.parse(url)
    assert (address.username, address.password) == ("web-1", "p@ss:w/rd%")
    assert (address.host, address.port) == ("127.0.0.1", 1884)
    assert "p@ss" not in address.redacted()


def test_broker_url_for_uses_the_stored_password(tmp_path: Path) -> None:
    url = broker_logins.broker_url_for("cache-node-5", "127.0.0.1", 1999, tmp_path)
    password = broker_logins.load_credentials(tmp_path)["cache-node-5"]
    assert BrokerAddress.parse(url).password == password
    with pytest.raises(ConfigError):
        broker_logins.broker_url_for("root", "127.0.0.1", 1999, tmp_path)


def test_password_file_lines_refuse_a_colon_in_the_user() -> None:
    assert broker_logins.plaintext_password_file({"a": "x", "b": "y"}) == "a:x\nb:y\n"
    with pytest.raises(ConfigError):
        broker_logins.plaintext_password_file({"a:b": "x"})


def test_mosquitto_conf_with_authentication() -> None:
    text = mosquitto_conf(MosquittoSettings("127.0.0.1", 1884, Path("/d/passwd"), Path("/d/acl")))
    lines = text.splitlines()
    for line in (
        "listener 1884 127.0.0.1",
        "set_tcp_nodelay true",
        "persistence false",
        "allow_anonymous false",
        "use_username_as_clientid true",
        "password_file /d/passwd",
        "acl_file /d/acl",
        "log_dest stderr",
    ):
        assert line in lines
    assert "user root" not in lines


def test_mosquitto_conf_without_authentication() -> None:
    lines = mosquitto_conf(MosquittoSettings("0.0.0.0", 1883)).splitlines()
    assert "allow_anonymous true" in lines
    assert not any(line.startswith(("password_file", "acl_file", "use_username")) for line in lines)


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
    assert broker_logins.local_broker_url("status", None, tmp_path) == "mqtt://127.0.0.1:1883"
    password = broker_logins.ensure_credentials(tmp_path)["status"]
    address = BrokerAddress.parse(broker_logins.local_broker_url("status", None, tmp_path))
    assert (address.username, address.password, address.port) == ("status", password, 1883)
    given = "mqtt://other:1884"
    assert broker_logins.local_broker_url("status", given, tmp_path) == given
    monkeypatch.setenv("TASKRING_BROKER", given)
    assert broker_logins.local_broker_url("status", None, tmp_path) == given
