"""What the node plans of a clustered broker share (nats_config.py, rabbitmq_config.py):
a setting given once or once per node, and ports that do not collide. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from backend.adapters.settings import ConfigError

T = TypeVar("T")


def per_node(what: str, given: Sequence[T], nodes: int) -> list[T]:
    """`given` for each of `nodes` nodes: one value for all, or exactly one per node."""
    if len(given) == 1:
        return [given[0]] * nodes
    if len(given) != nodes:
        raise ConfigError(f"{len(given)} {what} for {nodes} nodes: give one, or one per node")
    return list(given)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_distinct_ports(nodes: Iterable[tuple[int, str, Sequence[tuple[str, int]]]]) -> None:
    """Each (node number, host, its (kind, port) pairs): every port in range, and no two
    on one host alike; the error names both uses of a port."""
    taken: dict[tuple[str, int], str] = {}
    for number, host, ports in nodes:
        for kind, port in ports:
            if not 0 < port < 65536:
                raise ConfigError(f"node {number}: {kind} port {port} is out of range")
            where = (host, port)
            if where in taken:
                raise ConfigError(
                    f"node {number}'s {kind} port {host_port(host, port)} is also {taken[where]}"
                )
            taken[where] = f"node {number}'s {kind} port"
