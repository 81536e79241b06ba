"""The NATS cluster's configuration: nodes and routes, users, passwords, permissions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backend.adapters import broker_logins, nats_config
from backend.adapters.settings import ConfigError
from backend.core import topics
from backend.core.nats_subjects import topic_subject

ROOT = topics.ROOT
LOGINS = {
    "client-portal": "client-portal-1",
    "admin-portal": "admin-portal-2",
    "cache-node": "cache-node-3",
    "replica": "replica-g1-2",
    "web": "web-1",
    "status": "status",
    "chaos": "chaos",
}
PASSWORDS = {login: f"pw-{n}_x" for n, login in enumerate(LOGINS.values())}
ROUTE_PASSWORD = "route-Secret_1"


def three_nodes() -> tuple[nats_config.NatsNode, ...]:
    return nats_config.plan_nodes(3, ["127.0.0.1"], [4222], [6222], [1883])


def parsed(text: str) -> dict[str, Any]:
    """The JSON object under the file's comment lines (nats-server reads it as it is)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    loaded: dict[str, Any] = json.loads(body)
    return loaded


def config_of(number: int, nodes: tuple[nats_config.NatsNode, ...] | None = None) -> dict[str, Any]:
    nodes = nodes or three_nodes()
    text = nats_config.node_config(nodes, number, f"/js/{number}", PASSWORDS, ROUTE_PASSWORD)
    assert text.startswith("# Written by `taskring broker config`")
    return parsed(text)


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)


def nats_allows(permission: dict[str, list[str]], subject: str) -> bool:
    allowed = any(nats_matches(p, subject) for p in permission.get("allow", [">"]))
    return allowed and not any(nats_matches(p, subject) for p in permission.get("deny", []))


# Topics every role uses or must not, with ids of several components, and the parent
# levels a `#` rule also matches in MQTT.
TOPICS = [
    topics.RING_ANNOUNCE,
    topics.RING_CLIENT_CHANGES,
    topics.SYNC_CHANGES,
    topics.SYNC_SNAPSHOT_REQUEST,
    f"{ROOT}/heartbeat",
    f"{ROOT}/raft/g1/reply",
    f"{ROOT}/ring",
    *(topics.ring_host(node) for node in ("cache-node-1", "cache-node-3")),
    *(topics.ring_events(node) for node in ("cache-node-1", "cache-node-3")),
    *(
        topic(portal)
        for portal in ("client-portal-1", "client-portal-2", "admin-portal-2")
        for topic in (topics.ring_reply, topics.sync_snapshot_reply)
    ),
    *(topics.raft_member(group, member) for group in ("g1", "g2") for member in (1, 2, 3)),
    *(
        topics.raft_reply(g, node, "f00d")
        for g in ("g1", "g2")
        for node in ("cache-node-3", "cache-node-1")
    ),
    *(
        topics.heartbeat(kind, component)
        for kind, component in [
            ("client-portal", "client-portal-1"),
            ("client-portal", "client-portal-2"),
            ("admin-portal", "admin-portal-2"),
            ("cache-node", "cache-node-3"),
            ("cache-node", "cache-node-1"),
            ("replica", "g1-2"),
            ("replica", "g1-1"),
            ("web", "web-1"),
        ]
    ),
]


@pytest.mark.parametrize("role", broker_logins.ROLES)
def test_each_role_s_permissions_allow_exactly_what_its_mosquitto_acl_allows(role: str) -> None:
    login = LOGINS[role]
    (user,) = [u for u in config_of(1)["authorization"]["users"] if u["user"] == login]
    permissions = user["permissions"]
    for topic in TOPICS:
        subject = topic_subject(topic)
        for action, nats_action in (("write", "publish"), ("read", "subscribe")):
            assert nats_allows(permissions[nats_action], subject) == broker_logins.may(
                login, action, topic
            ), (login, action, topic)


def test_a_role_s_permissions_are_its_rules_translated() -> None:
    assert nats_config.login_permissions("web-1") == nats_config.Permissions(
        publish=("taskring.v1.heartbeat.web.web-1",),
        subscribe=("taskring.v1.heartbeat.>", "taskring.v1.heartbeat", "taskring.v1.chaos.events"),
    )
    replica = nats_config.login_permissions("replica-g1-2")
    assert replica.subscribe == ("taskring.v1.raft.g1.2",)
    assert replica.publish == (
        "taskring.v1.raft.g1.*",
        "taskring.v1.raft.g1.reply.>",
        "taskring.v1.raft.g1.reply",
        "taskring.v1.heartbeat.replica.g1-2",
    )
    # "readwrite" rules appear once on each side.
    node = nats_config.login_permissions("cache-node-3")
    assert node.publish.count("taskring.v1.ring.announce") == 1
    assert node.subscribe.count("taskring.v1.ring.announce") == 1


def test_no_user_gets_the_gateway_s_internal_subjects() -> None:
    # QoS-0 subscriptions need no `$MQTT.sub.>`; the gateway stores QoS-1 publishes itself.
    for user in config_of(1)["authorization"]["users"]:
        for side in user["permissions"].values():
            assert not any(s.startswith("$") for s in side.get("allow", [])), user["user"]


def test_a_role_with_nothing_to_publish_is_denied_every_subject() -> None:
    (status,) = [u for u in config_of(2)["authorization"]["users"] if u["user"] == "status"]
    assert status["permissions"]["publish"] == {"deny": [">"]}


def test_one_mqtt_only_user_per_login_with_its_password() -> None:
    users = config_of(3)["authorization"]["users"]
    assert {u["user"]: u["password"] for u in users} == PASSWORDS
    assert all(u["allowed_connection_types"] == ["MQTT"] for u in users)


@pytest.mark.parametrize("password", ["", "$2a$11$hash", 'a"b', "a\\b", "a b", "a@b", "a:b", "é"])
def test_a_password_nats_would_misread_is_refused(password: str) -> None:
    with pytest.raises(ConfigError, match="'web-1'"):
        nats_config.node_config(three_nodes(), 1, "/js", {"web-1": password}, ROUTE_PASSWORD)
    with pytest.raises(ConfigError, match="route password"):
        nats_config.node_config(three_nodes(), 1, "/js", PASSWORDS, password)


def test_a_login_nats_cannot_carry_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"'cache-node-a\.b'.*'\.'"):
        nats_config.login_permissions("cache-node-a.b")
    with pytest.raises(ConfigError, match="not a broker login"):
        nats_config.login_permissions("portal")


def test_each_node_routes_to_every_other_with_the_cluster_password() -> None:
    nodes = three_nodes()
    for node in nodes:
        cluster = config_of(node.number)["cluster"]
        assert cluster["name"] == "taskring"
        assert cluster["listen"] == f"127.0.0.1:{node.cluster_port}"
        assert cluster["authorization"] == {"user": "taskring-route", "password": ROUTE_PASSWORD}
        assert sorted(cluster["routes"]) == sorted(
            f"nats-route://taskring-route:{ROUTE_PASSWORD}@127.0.0.1:{other.cluster_port}"
            for other in nodes
            if other is not node
        )


def test_a_node_s_names_listeners_and_store() -> None:
    config = config_of(2)
    assert config["server_name"] == "taskring-2"
    assert config["listen"] == "127.0.0.1:4223"
    assert config["jetstream"] == {"store_dir": "/js/2"}
    assert config["mqtt"] == {"listen": "127.0.0.1:1884", "stream_replicas": 3}
    assert config["max_payload"] == 64 << 20  # Raft snapshots are far above NATS's 1 MiB


@pytest.mark.parametrize(("count", "replicas"), [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_stream_replicas_are_the_node_count_up_to_three(count: int, replicas: int) -> None:
    nodes = nats_config.plan_nodes(count, ["127.0.0.1"], [4222], [6222], [1883])
    assert config_of(1, nodes)["mqtt"]["stream_replicas"] == replicas
    if count == 1:  # standalone: JetStream refuses a cluster without routes
        assert "cluster" not in config_of(1, nodes)


def test_nodes_on_one_host_take_consecutive_ports_and_on_many_hosts_the_same() -> None:
    assert [(n.client_port, n.cluster_port, n.mqtt_port) for n in three_nodes()] == [
        (4222, 6222, 1883),
        (4223, 6223, 1884),
        (4224, 6224, 1885),
    ]
    spread = nats_config.plan_nodes(3, ["n1", "n2", "n3"], [4222], [6222], [1883])
    assert [(n.host, n.mqtt_port) for n in spread] == [("n1", 1883), ("n2", 1883), ("n3", 1883)]
    mixed = nats_config.plan_nodes(3, ["a", "b", "a"], [4222], [6222], [1883])
    assert [n.mqtt_port for n in mixed] == [1883, 1883, 1884]
    listed = nats_config.plan_nodes(2, ["h"], [1, 2], [3, 4], [5, 6])
    assert [(n.client_port, n.cluster_port, n.mqtt_port) for n in listed] == [(1, 3, 5), (2, 4, 6)]


def test_an_ipv6_host_is_bracketed() -> None:
    (node,) = nats_config.plan_nodes(1, ["::1"], [4222], [6222], [1883])
    assert config_of(1, (node,))["mqtt"]["listen"] == "[::1]:1883"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, ["h"], [1], [2], [3]), "at least one node"),
        ((3, ["a", "b"], [1], [2], [3]), "2 hosts for 3 nodes"),
        ((3, ["h"], [1, 2], [10], [20]), "2 client ports for 3 nodes"),
        ((2, ["h"], [1883], [6222], [1883]), "also node 1's client port"),
        (
            (2, ["h"], [4222], [6222], [4223]),
            "node 2's client port h:4223 is also node 1's mqtt port",
        ),
        ((1, ["h"], [70000], [1], [2]), "out of range"),
    ],
)
def test_a_bad_layout_is_refused_with_the_reason(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        nats_config.plan_nodes(*args)
