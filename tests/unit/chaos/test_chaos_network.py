"""The nftables and tc texts the partition and netem faults run, and the socket lookups."""

from __future__ import annotations

from backend.adapters.port_holders import TcpSocket
from backend.chaos.network import (
    delete_table_script,
    lo_root_free,
    local_ports_to,
    netem_commands,
    ours_on_lo,
    parse_delay,
    partition_rules,
    partition_script,
)


def test_partition_rules_follow_the_direction() -> None:
    assert partition_rules({5000, 5001}, {1883}, "both") == [
        "tcp sport { 5000, 5001 } tcp dport { 1883 } drop",
        "tcp sport { 1883 } tcp dport { 5000, 5001 } drop",
    ]
    assert partition_rules({5000}, {1883}, "outbound") == [
        "tcp sport { 5000 } tcp dport { 1883 } drop"
    ]
    assert partition_rules({5000}, {1883}, "inbound") == [
        "tcp sport { 1883 } tcp dport { 5000 } drop"
    ]
    assert partition_rules(set(), {1883}, "both") == []


def test_the_partition_lives_in_a_table_of_its_own() -> None:
    script = partition_script("taskring_chaos_1_ab", ["tcp sport { 1 } drop"], create=True)
    assert script.splitlines()[0] == "add table inet taskring_chaos_1_ab"
    assert "hook output" in script
    assert script.splitlines()[-1] == "add rule inet taskring_chaos_1_ab cut tcp sport { 1 } drop"
    refresh = partition_script("taskring_chaos_1_ab", [], create=False)
    assert refresh == "flush chain inet taskring_chaos_1_ab cut\n"
    assert delete_table_script("taskring_chaos_1_ab") == "delete table inet taskring_chaos_1_ab\n"


def test_netem_delays_both_directions_of_each_connection() -> None:
    commands = netem_commands({5000}, "100ms", "20ms")
    assert commands[1][-4:] == ["netem", "delay", "100ms", "20ms"]
    filters = [c for c in commands if c[1] == "filter"]
    assert [c[c.index("match") + 2 : c.index("match") + 4] for c in filters] == [
        ["sport", "5000"],
        ["dport", "5000"],
    ]
    assert parse_delay("300ms/100ms") == ("300ms", "100ms")
    assert parse_delay("50ms") == ("50ms", "0ms")


def test_lo_is_touched_only_when_free_and_only_our_qdisc_is_removed() -> None:
    assert lo_root_free("qdisc noqueue 0: root refcnt 2 \n")
    assert not lo_root_free("qdisc htb 1: root refcnt 2 r2q 10\n")
    assert ours_on_lo("qdisc prio 7c01: root refcnt 2 bands 4\nqdisc netem 7c02: parent 7c01:4\n")
    assert not ours_on_lo("qdisc htb 1: root refcnt 2\n")


def test_a_process_connections_to_the_broker_by_its_socket_inodes() -> None:
    sockets = [
        TcpSocket("127.0.0.1", 5000, "127.0.0.1", 1883, "ESTABLISHED", 11),
        TcpSocket("127.0.0.1", 5001, "127.0.0.1", 7001, "ESTABLISHED", 12),
        TcpSocket("127.0.0.1", 5002, "127.0.0.1", 1883, "ESTABLISHED", 99),
        TcpSocket("0.0.0.0", 7001, "0.0.0.0", 0, "LISTEN", 13),
    ]
    assert local_ports_to(sockets, {11, 12, 13}, {1883}) == {5000}
