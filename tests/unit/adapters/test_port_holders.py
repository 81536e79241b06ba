"""What holds a port, read from /proc/net/tcp: the pure parsing, and `up` waiting for a port."""

from __future__ import annotations

import os
import socket
import threading
import time

import click
import pytest

from backend.adapters.port_holders import (
    Owner,
    TcpSocket,
    describe,
    holders_of,
    parse_address,
    parse_tcp_table,
    who_holds,
)
from backend.processes.launch_plan import ChildSpec
from backend.processes.supervisor import check_ports

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)
TCP = HEADER + (
    "   0: 0100007F:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000"
    "        0 4242 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0100007F:C384 0100007F:075B 01 00000000:00000000 00:00000000 00000000  1000"
    "        0 777 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 0100007F:C384 0100007F:075B 06 00000000:00000000 03:00000F9D 00000000     0"
    "        0 0 3 0000000000000000\n"
    "   3: garbage line\n"
)
TCP6 = HEADER + (
    "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A"
    " 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0000000000000000FFFF00000100007F:C383 0000000000000000FFFF00000100007F:1F90 01"
    " 00000000:00000000 00:00000000 00000000  1000        0 98 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A"
    " 00000000:00000000 00:00000000 00000000  1000        0 97 1 0000000000000000 100 0 0 10 0\n"
)


def test_ipv4_addresses_are_read_in_host_byte_order() -> None:
    assert parse_address("0100007F:C383") == ("127.0.0.1", 50051)
    assert parse_address("00000000:0000") == ("0.0.0.0", 0)


def test_ipv6_addresses_are_read_word_by_word() -> None:
    assert parse_address("00000000000000000000000001000000:1F91") == ("::1", 8081)
    assert parse_address("0000000000000000FFFF00000100007F:C383") == ("127.0.0.1", 50051)


def test_the_tcp_table_gives_state_ends_and_inode_and_skips_odd_lines() -> None:
    sockets = parse_tcp_table(TCP)
    assert sockets == [
        TcpSocket("127.0.0.1", 50051, "0.0.0.0", 0, "LISTEN", 4242),
        TcpSocket("127.0.0.1", 50052, "127.0.0.1", 1883, "ESTABLISHED", 777),
        TcpSocket("127.0.0.1", 50052, "127.0.0.1", 1883, "TIME_WAIT", 0),
    ]
    six = parse_tcp_table(TCP6)
    assert [(s.local, s.local_port, s.state) for s in six] == [
        ("::", 8080, "LISTEN"),
        ("127.0.0.1", 50051, "ESTABLISHED"),
        ("::1", 8081, "LISTEN"),
    ]
    assert parse_tcp_table("") == [] and parse_tcp_table(HEADER) == []


def test_holders_of_a_port_list_listeners_first() -> None:
    sockets = parse_tcp_table(TCP) + parse_tcp_table(TCP6)
    found = holders_of(sockets, 50051)
    assert [s.state for s in found] == ["LISTEN", "ESTABLISHED"]
    assert holders_of(sockets, 1883) == []


def test_a_holder_is_described_for_a_person() -> None:
    listening, outgoing, waiting = parse_tcp_table(TCP)
    assert describe(listening, Owner(12, "mosquitto -p 50051")) == (
        "a listening socket on 127.0.0.1:50051 of pid 12 (mosquitto -p 50051)"
    )
    assert describe(outgoing, None) == (
        "a connection 127.0.0.1:50052 -> 127.0.0.1:1883 (ESTABLISHED)"
    )
    assert describe(waiting, None).endswith("(TIME_WAIT) owned by no process (the kernel "
                                            "keeps it for a while)")  # fmt: skip


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_who_holds_finds_our_own_listener_and_its_pid() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        [found] = who_holds(port)
    assert found.startswith(f"a listening socket on 127.0.0.1:{port} of pid {os.getpid()}")


def spec_on(port: int) -> ChildSpec:
    return ChildSpec("admin-portal-2", ("admin-portal",), port=port)


def test_up_waits_for_a_port_held_for_a_moment() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    threading.Timer(0.5, sock.close).start()
    started = time.monotonic()
    check_ports([spec_on(port)], "127.0.0.1", wait=5.0)
    assert 0.3 < time.monotonic() - started < 4.0


def test_up_names_what_holds_a_port_that_stays_taken() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(click.ClickException) as failure:
            check_ports([spec_on(port)], "127.0.0.1", wait=0.5)
    assert time.monotonic() - started >= 0.45
    message = failure.value.message
    assert f"admin-portal-2 cannot listen on 127.0.0.1:{port}" in message
    if os.path.exists("/proc/net/tcp"):
        assert f"held by a listening socket on 127.0.0.1:{port} of pid {os.getpid()}" in message
