"""The RabbitMQ cluster's configuration: topic regexes, users, permissions, rabbitmq.conf."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from backend.adapters import broker_logins, rabbitmq_config
from backend.adapters.settings import ConfigError
from backend.core import topics
from backend.core.rabbitmq_topics import filter_regex, filters_regex, routing_key
from tests.unit.adapters.test_nats_config import LOGINS, PASSWORDS, TOPICS

ROOT = topics.ROOT
SALT = b"salt"


def three_nodes() -> tuple[rabbitmq_config.RabbitNode, ...]:
    return rabbitmq_config.plan_nodes(3, ["localhost"], [5672], [1883], [25672], "127.0.0.1")


def allows(regex: str, key: str) -> bool:
    # RabbitMQ runs the expression unanchored (re:run); ours carry their own anchors.
    return re.search(regex, key) is not None


@pytest.mark.parametrize("role", broker_logins.ROLES)
def test_each_role_s_regexes_allow_exactly_what_its_mosquitto_acl_allows(role: str) -> None:
    login = LOGINS[role]
    permission = rabbitmq_config.topic_permission(login)
    for topic in TOPICS:
        key = routing_key(topic)
        assert allows(permission.write, key) == broker_logins.may(login, "write", topic), (
            login,
            "write",
            topic,
        )
        assert allows(permission.read, key) == broker_logins.may(login, "read", topic), (
            login,
            "read",
            topic,
        )


@pytest.mark.parametrize("role", broker_logins.ROLES)
def test_each_role_may_bind_its_own_filters_and_nothing_wider(role: str) -> None:
    login = LOGINS[role]
    read = rabbitmq_config.topic_permission(login).read
    for access, topic_filter in broker_logins.login_rules(login):
        if "read" in access:
            assert allows(read, routing_key(topic_filter)), (login, topic_filter)
    # A `#` where the rule has `+` or a name reaches topics the rule does not.
    for wider in (f"{ROOT}/#", "#", f"{ROOT}/ring/host/#", f"{ROOT}/raft/#", f"{ROOT}/+/#"):
        assert not allows(read, routing_key(wider)), (login, wider)


def test_a_filter_s_regex_by_its_levels() -> None:
    assert filter_regex("a/b-c/+") == r"a\.b\-c\.[^.#]+"
    assert filter_regex("a/#") == r"a(?:\..*)?"
    assert filter_regex("#") == ".*"
    assert filters_regex([]) == "^$"
    assert filters_regex(["a/+", "a/+"]) == r"^(?:a\.[^.#]+)$"
    assert routing_key("a/+/b/#") == "a.*.b.#"


def test_a_hash_rule_covers_its_parent_and_everything_below() -> None:
    regex = filters_regex([f"{ROOT}/heartbeat/#"])
    for key in (
        "taskring.v1.heartbeat",
        "taskring.v1.heartbeat.web.web-1",
        "taskring.v1.heartbeat.#",
    ):
        assert allows(regex, key)
    assert not allows(regex, "taskring.v1.heartbeats")
    assert not allows(regex, "taskring.v1.ring.announce")


@pytest.mark.parametrize(
    ("login", "reason"),
    [
        ("cache-node-a.b", r"'\.'"),
        ("portal", "not a broker login"),
    ],
)
def test_a_login_a_routing_key_cannot_carry_is_refused_by_name(login: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        rabbitmq_config.topic_permission(login)


def test_definitions_hold_one_user_per_login_with_rabbitmq_s_salted_hash() -> None:
    defs = rabbitmq_config.definitions(PASSWORDS, lambda: SALT)
    assert defs["vhosts"] == [{"name": "taskring"}]
    users = {user["name"]: user for user in defs["users"]}
    assert set(users) == set(PASSWORDS)
    for login, password in PASSWORDS.items():
        raw = base64.b64decode(users[login]["password_hash"])
        assert raw == SALT + hashlib.sha256(SALT + password.encode()).digest()
        assert users[login]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert users[login]["tags"] == ""
    assert "pw-" not in json.dumps(defs)  # hashes only, never a password


def test_every_user_has_a_topic_permission_even_with_nothing_to_publish() -> None:
    # RabbitMQ lets a user without an entry for the exchange publish and bind anything.
    defs = rabbitmq_config.definitions(PASSWORDS, lambda: SALT)
    entries = {entry["user"]: entry for entry in defs["topic_permissions"]}
    assert set(entries) == set(PASSWORDS)
    assert all(e["exchange"] == "amq.topic" and e["vhost"] == "taskring" for e in entries.values())
    assert entries["status"]["write"] == "^$"


def test_vhost_permissions_name_only_the_login_s_qos0_queue_and_the_exchange() -> None:
    permission = rabbitmq_config.vhost_permission("web-1")
    assert allows(permission["configure"], "mqtt-subscription-web-1qos0")
    for other in ("mqtt-subscription-web-1qos1", "mqtt-subscription-web-2qos0", "amq.topic"):
        assert not allows(permission["configure"], other), other
    for side in ("read", "write"):
        assert allows(permission[side], "amq.topic")
        assert allows(permission[side], "mqtt-subscription-web-1qos0")
        assert not allows(permission[side], "mqtt-subscription-web-1qos1")
        assert not allows(permission[side], "amq.direct")


def test_an_empty_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="'web-1'"):
        rabbitmq_config.definitions({"web-1": ""}, lambda: SALT)


def test_each_node_s_conf_lists_every_node_and_its_own_ports() -> None:
    nodes = three_nodes()
    text = rabbitmq_config.node_config(nodes, 2, "/etc/taskring/definitions.json")
    lines = set(text.splitlines())
    for line in (
        "listeners.tcp.default = 127.0.0.1:5673",
        "mqtt.listeners.tcp.default = 127.0.0.1:1884",
        "mqtt.allow_anonymous = false",
        "mqtt.vhost = taskring",
        "mqtt.exchange = amq.topic",
        "load_definitions = /etc/taskring/definitions.json",
        "cluster_formation.peer_discovery_backend = classic_config",
        "cluster_formation.classic_config.nodes.1 = rabbit-1@localhost",
        "cluster_formation.classic_config.nodes.3 = rabbit-3@localhost",
    ):
        assert line in lines, line
    env = rabbitmq_config.node_environment(nodes[1], "/c", "/p", "/m", "/l")
    assert env["RABBITMQ_NODENAME"] == "rabbit-2@localhost"
    assert env["RABBITMQ_DIST_PORT"] == "25673"
    assert rabbitmq_config.enabled_plugins() == "[rabbitmq_mqtt].\n"


def test_nodes_on_many_hosts_share_ports_and_listen_everywhere() -> None:
    nodes = rabbitmq_config.plan_nodes(3, ["mq1", "mq2", "mq3"], [5672], [1883], [25672])
    assert {(n.amqp_port, n.mqtt_port, n.dist_port) for n in nodes} == {(5672, 1883, 25672)}
    assert [n.name for n in nodes] == ["rabbit-1@mq1", "rabbit-2@mq2", "rabbit-3@mq3"]
    assert "mqtt.listeners.tcp.default = 1883" in rabbitmq_config.node_config(nodes, 1, "/d")


@pytest.mark.parametrize(
    ("hosts", "ports", "error"),
    [
        (["10.0.0.1"], [1883], "short host name"),
        (["localhost"], [1883, 1884], "2 MQTT ports for 3 nodes"),
        (["localhost"], [25672], "also node"),
    ],
)
def test_plans_rabbitmq_cannot_run_are_refused(hosts: list[str], ports: list[int], error: str):
    with pytest.raises(ConfigError, match=error):
        rabbitmq_config.plan_nodes(3, hosts, [5672], ports, [25672])
