"""`free_port`: tests and the bench pick several ports before their servers bind them."""

from __future__ import annotations

import socket

from backend.bench.targets.peers import free_port


def test_ports_picked_one_after_another_are_all_different() -> None:
    # The kernel hands a just-closed port to the next bind to port 0 now and then; among
    # 1,000 picks from about 14,000 candidates, repeats are all but certain without a guard.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_a_picked_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
