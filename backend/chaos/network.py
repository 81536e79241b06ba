"""The network side of the faults: a process's broker connections, and the nftables and tc
commands that cut or slow them. The command texts are pure (unit-tested); `run` runs one.

A process's connections are found as backend/adapters/port_holders.py finds a port's
holder: its socket inodes from /proc/<pid>/fd, matched against /proc/net/tcp{,6}.
Every rule lives in a table of our own with a unique name, and every qdisc under a
handle of our own, so removing ours never touches anyone else's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from backend.adapters.port_holders import TABLES, TcpSocket, parse_tcp_table

COMMAND_TIMEOUT = 10.0
NETEM_HANDLE = "7c01"  # our root qdisc on lo; netem under band 4
# pfifo_fast's mapping of priorities to bands 0-2: band 3 (1:4) stays free for netem
PRIOMAP = ("1", "2", "2", "2", "1", "2", "0", "0", "1", "1", "1", "1", "1", "1", "1", "1")


class NetworkToolMissing(Exception):
    """nft or tc is not installed, or may not be run here."""


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets() -> list[TcpSocket]:
    sockets: list[TcpSocket] = []
    for table in TABLES:
        with contextlib.suppress(OSError):
            sockets += parse_tcp_table(Path(table).read_text())
    return sockets


def listening_ports(sockets: Iterable[TcpSocket], inodes: set[int]) -> set[int]:
    return {s.local_port for s in sockets if s.inode in inodes and s.state == "LISTEN"}


def local_ports_to(sockets: Iterable[TcpSocket], inodes: set[int], ports: set[int]) -> set[int]:
    """The local ports of the connections among `inodes` whose far end is one of `ports`."""
    return {
        s.local_port
        for s in sockets
        if s.inode in inodes and s.state != "LISTEN" and s.remote_port in ports
    }


def connections_of(pid: int, broker_ports: set[int]) -> set[int]:
    """The local ports of process `pid`'s connections to the broker, right now."""
    return local_ports_to(tcp_sockets(), socket_inodes(pid), broker_ports)


# ---- nftables ---------------------------------------------------------------------------


def _set(ports: Iterable[int]) -> str:
    return "{ " + ", ".join(str(p) for p in sorted(ports)) + " }"


def partition_rules(local: set[int], broker: set[int], direction: str) -> list[str]:
    """The drop rules cutting the connections on `local` ports off the `broker` ports:
    `outbound` what the process sends, `inbound` what it receives, `both` either."""
    if not local or not broker:
        return []
    rules = []
    if direction in ("both", "outbound"):
        rules.append(f"tcp sport {_set(local)} tcp dport {_set(broker)} drop")
    if direction in ("both", "inbound"):
        rules.append(f"tcp sport {_set(broker)} tcp dport {_set(local)} drop")
    return rules


def partition_script(table: str, rules: list[str], create: bool) -> str:
    """An `nft -f` script that (creates and) fills our table's chain with `rules`, at once.
    The chain sits on the output hook: on loopback every packet passes it once."""
    lines = []
    if create:
        lines += [
            f"add table inet {table}",
            f"add chain inet {table} cut {{ type filter hook output priority -150 ; "
            "policy accept ; }",
        ]
    lines.append(f"flush chain inet {table} cut")
    lines += [f"add rule inet {table} cut {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def delete_table_script(table: str) -> str:
    return f"delete table inet {table}\n"


# ---- tc netem ---------------------------------------------------------------------------


def parse_delay(option: str) -> tuple[str, str]:
    """`100ms/20ms` -> ("100ms", "20ms"): the delay and its jitter."""
    delay, _, jitter = option.partition("/")
    return delay or "100ms", jitter or "0ms"


def netem_commands(local: set[int], delay: str, jitter: str) -> list[list[str]]:
    """tc commands that delay every packet of the connections on `local` ports, both ways:
    a prio root of four bands whose default mapping is the usual three, netem on band 4,
    and u32 filters sending those ports there."""
    root = f"{NETEM_HANDLE}:"
    commands = [
        ["tc", "qdisc", "add", "dev", "lo", "root", "handle", root, "prio", "bands", "4",
         "priomap", *PRIOMAP],
        ["tc", "qdisc", "add", "dev", "lo", "parent", f"{NETEM_HANDLE}:4", "handle", "7c02:",
         "netem", "delay", delay, jitter],
    ]  # fmt: skip
    for port in sorted(local):
        for field in ("sport", "dport"):
            commands.append(
                ["tc", "filter", "add", "dev", "lo", "parent", root, "protocol", "ip", "prio",
                 "1", "u32", "match", "ip", field, str(port), "0xffff",
                 "flowid", f"{NETEM_HANDLE}:4"]
            )  # fmt: skip
    return commands


def netem_remove_command() -> list[str]:
    return ["tc", "qdisc", "del", "dev", "lo", "root", "handle", f"{NETEM_HANDLE}:"]


def lo_root_free(qdiscs: str) -> bool:
    """Whether `tc qdisc show dev lo` says lo has no root qdisc but the default one."""
    roots = [line for line in qdiscs.splitlines() if " root " in f" {line} "]
    return all("noqueue" in line or "pfifo_fast" in line for line in roots)


def ours_on_lo(qdiscs: str) -> bool:
    """Whether `tc qdisc show dev lo` shows our root qdisc (so removing it removes ours)."""
    return any(
        f" {NETEM_HANDLE}: " in f" {line} " and " root " in f" {line} "
        for line in qdiscs.splitlines()
    )


# ---- running ----------------------------------------------------------------------------


def run(command: list[str], stdin: str | None = None) -> str:
    """Run one command; its output, or raise NetworkToolMissing / RuntimeError."""
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError as exc:
        raise NetworkToolMissing(
            f"{command[0]} is not installed (Debian: apt-get install -y "
            f"{'nftables' if command[0] == 'nft' else 'iproute2'})"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(command)} did not finish") from exc
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        if "Operation not permitted" in message:
            raise NetworkToolMissing(f"{command[0]} needs root here: {message}")
        if "qdisc kind is unknown" in message:
            raise NetworkToolMissing(
                f"this kernel lacks a queueing discipline needed ({' '.join(command[5:9])}; "
                "netem is the sch_netem module)"
            )
        raise RuntimeError(f"{' '.join(command)}: {message}")
    return done.stdout
