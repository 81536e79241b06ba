"""Who holds a local TCP port: read from Linux's /proc, to explain "Address already in use".

Ports like 50051 lie in the kernel's ephemeral range (32768-60999), so an
outgoing connection of any program can hold one for a while, and `taskring
up` then cannot listen there although nothing listens. The parsing is pure
(`parse_tcp_table`, `holders_of`, `describe`); `who_holds` reads the files
and, when it may, finds the owning process through the socket's inode in
/proc/<pid>/fd. On systems without /proc it finds nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

# /proc/net/tcp's "st" column (include/net/tcp_states.h)
TCP_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
}
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


@dataclass(frozen=True)
class TcpSocket:
    local: str
    local_port: int
    remote: str
    remote_port: int
    state: str
    inode: int


@dataclass(frozen=True)
class Owner:
    pid: int
    command: str


def parse_address(text: str) -> tuple[str, int]:
    """`0100007F:C383` -> ("127.0.0.1", 50051); IPv6 addresses are 32 hex digits.

    The kernel prints each 32-bit word of the address in host byte order
    (little-endian here), the port in plain hex.
    """
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) not in (4, 16):
        raise ValueError(f"not an address: {text!r}")
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def parse_tcp_table(text: str) -> list[TcpSocket]:
    """The sockets listed in the text of /proc/net/tcp or tcp6; odd lines are skipped."""
    sockets = []
    for line in text.splitlines()[1:]:  # the first line is the column header
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            local, local_port = parse_address(fields[1])
            remote, remote_port = parse_address(fields[2])
            state = TCP_STATES.get(int(fields[3], 16), fields[3])
            inode = int(fields[9])
        except ValueError:
            continue
        sockets.append(TcpSocket(local, local_port, remote, remote_port, state, inode))
    return sockets


def holders_of(sockets: list[TcpSocket], port: int) -> list[TcpSocket]:
    """The sockets using `port` locally, listeners first."""
    found = [s for s in sockets if s.local_port == port]
    return sorted(found, key=lambda s: s.state != "LISTEN")


def describe(sock: TcpSocket, owner: Owner | None) -> str:
    """One holder for a person: what kind of socket, and whose if known."""
    if sock.state == "LISTEN":
        text = f"a listening socket on {sock.local}:{sock.local_port}"
    else:
        text = (
            f"a connection {sock.local}:{sock.local_port} -> "
            f"{sock.remote}:{sock.remote_port} ({sock.state})"
        )
    if owner is not None:
        text += f" of pid {owner.pid} ({owner.command})"
    elif sock.inode == 0:
        text += " owned by no process (the kernel keeps it for a while)"
    return text


def who_holds(port: int, limit: int = 3) -> list[str]:
    """Descriptions of what holds `port` right now, read from /proc; [] if nothing known."""
    sockets: list[TcpSocket] = []
    for table in TABLES:
        with contextlib.suppress(OSError):
            sockets += parse_tcp_table(table.read_text())
    found = holders_of(sockets, port)[:limit]
    owners = _owners({s.inode for s in found if s.inode})
    return [describe(s, owners.get(s.inode)) for s in found]


def listening_pids(port: int) -> dict[str, int]:
    """Local address -> pid of each process we may look into that listens on `port`."""
    sockets: list[TcpSocket] = []
    for table in TABLES:
        with contextlib.suppress(OSError):
            sockets += parse_tcp_table(table.read_text())
    listeners = [s for s in holders_of(sockets, port) if s.state == "LISTEN" and s.inode]
    owners = _owners({s.inode for s in listeners})
    return {s.local: owners[s.inode].pid for s in listeners if s.inode in owners}


def _owners(inodes: set[int]) -> dict[int, Owner]:
    """Socket inode -> the process holding it, among the processes we may look into."""
    owners: dict[int, Owner] = {}
    if not inodes:
        return owners
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(proc / "fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    owners[int(target[8:-1])] = Owner(int(proc.name), _command(proc))
        if len(owners) == len(inodes):
            break
    return owners


def _command(proc: Path) -> str:
    with contextlib.suppress(OSError):
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if text:
            return text[:120]
    return "?"
