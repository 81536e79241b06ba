"""The client portal's flood limits as pure bookkeeping: the caller passes the clock in.

- `ConnectionCounts`: how many connections are open, in total and per source IP.
- `AuthFailureBudget`: a token bucket of failed `auth` attempts per source IP.
- `WatchBudget`: bytes queued for watching connections, per connection and per client.

backend/processes/client_portal.py and client_connection.py apply them; nothing here
does I/O or sleeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


class ConnectionCounts:
    """Open connections in total and per source IP, against a cap on each."""

    def __init__(self, total_cap: int, per_ip_cap: int) -> None:
        self.total_cap = total_cap
        self.per_ip_cap = per_ip_cap
        self.total = 0
        self.by_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> str | None:
        """Count a new connection from `ip`, or say which limit refuses it (nothing counted)."""
        if self.total >= self.total_cap:
            return (
                f"the portal already serves {self.total} connections, its limit "
                "(--max-connections); try again later or another portal"
            )
        if self.by_ip[ip] >= self.per_ip_cap:
            return (
                f"{ip} already has {self.by_ip[ip]} connections to this portal, the limit "
                "per address (--max-connections-per-ip); close some first"
            )
        self.total += 1
        self.by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]  # the table holds only addresses with open connections


@dataclass
class _Bucket:
    tokens: float
    at: float


class AuthFailureBudget:
    """Each source IP may fail `auth` `burst` times at once, then `rate` times a second.

    Within budget an attempt goes to the store at once and a failure takes a token.
    Over budget an attempt first reserves the next token (the bucket goes below zero)
    and waits until it would have been refilled, so attempts from one IP reach the
    store no faster than `rate` a second however many connections it opens; a
    reserved attempt that succeeds gives its token back. A wait longer than
    `max_wait` is not queued at all: the attempt is refused without being tried.
    """

    PRUNE_AT = 10_000  # buckets kept before the full ones are forgotten

    def __init__(self, burst: int, rate: float, max_wait: float = 30.0) -> None:
        self.burst = burst
        self.rate = rate
        self.max_wait = max_wait
        self.buckets: dict[str, _Bucket] = {}

    def reserve(self, ip: str, now: float) -> float | None:
        """None: within budget, try now (call `failed` if it fails). Else the seconds to
        wait before trying, a token being reserved for it; inf if over even that."""
        bucket = self._refilled(ip, now)
        if bucket.tokens >= 1:
            return None
        wait = (1 - bucket.tokens) / self.rate
        if wait > self.max_wait:
            return float("inf")
        bucket.tokens -= 1
        return wait

    def failed(self, ip: str, now: float) -> None:
        """An attempt that was within budget failed: it costs a token."""
        self._refilled(ip, now).tokens -= 1

    def refund(self, ip: str, now: float) -> None:
        """A reserved attempt succeeded: a right token costs nothing."""
        bucket = self._refilled(ip, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1)

    def _refilled(self, ip: str, now: float) -> _Bucket:
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= self.PRUNE_AT:
                self._prune(now)
            bucket = self.buckets[ip] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        return bucket

    def _prune(self, now: float) -> None:
        """Forget the IPs whose bucket has refilled: they would start full anyway."""
        for ip in [ip for ip, b in self.buckets.items() if b.tokens + (now - b.at) * self.rate
                   >= self.burst]:  # fmt: skip
            del self.buckets[ip]


class WatchBudget:
    """Bytes queued (written but not yet taken by the client, or held back) for watching
    connections: at most `per_connection` for one, `per_client` for all of one client's.

    Over the client's budget, only a connection queueing at least its share (the
    client's total over its watching connections) is refused, so the one that reads
    along is not closed for the others that do not.
    """

    def __init__(self, per_connection: int, per_client: int) -> None:
        self.per_connection = per_connection
        self.per_client = per_client
        self.queued: dict[object, tuple[int, int]] = {}  # connection -> (cid, bytes)
        self.by_client: Counter[int] = Counter()
        self.watching: Counter[int] = Counter()  # client -> its connections here

    def update(self, connection: object, cid: int, queued: int) -> str | None:
        """Record what `connection`, watching `cid`, has queued now; say which limit it
        breaks, if any."""
        if connection not in self.queued:
            self.watching[cid] += 1
        _, before = self.queued.get(connection, (cid, 0))
        self.queued[connection] = (cid, queued)
        self.by_client[cid] += queued - before
        total = self.by_client[cid]
        if queued > self.per_connection:
            return (
                f"{queued:,} bytes of events queued for this connection, more than its "
                f"limit of {self.per_connection:,}; read faster or watch from fewer connections"
            )
        if total > self.per_client and queued * self.watching[cid] >= total:
            return (
                f"{total:,} bytes of events queued for this client's watching "
                f"connections, more than the limit of {self.per_client:,}"
            )
        return None

    def release(self, connection: object) -> None:
        if connection not in self.queued:
            return
        cid, before = self.queued.pop(connection)
        self.by_client[cid] -= before
        self.watching[cid] -= 1
        if self.watching[cid] <= 0:  # the tables hold only clients being watched
            del self.watching[cid], self.by_client[cid]
