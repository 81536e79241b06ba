"""Which process plays a role right now: the Raft leader, a follower, a key's owner, a
portal, the broker. Asked afresh before every fault, since leaders and owners move."""

from __future__ import annotations

import contextlib
import random

from backend.chaos.recorder import Account, Dropped, Line
from backend.chaos.schedule import BROKER, FOLLOWER, LEADER, OWNER, PORTAL
from backend.chaos.system import System, SystemUnreachable, Target

REPLICA, CACHE_NODE, CLIENT_PORTAL = "replica", "cache-node", "client-portal"


class Roles:
    def __init__(self, system: System, account: Account, rng: random.Random) -> None:
        self.system, self.account, self.rng = system, account, rng

    async def find(self, role: str) -> tuple[Target | None, str]:
        """The process playing `role`, or None and why none was found."""
        try:
            if role == LEADER:
                return await self._leader()
            if role == FOLLOWER:
                return await self._follower()
            if role == OWNER:
                return await self._owner()
            if role == PORTAL:
                return await self._portal()
            if role == BROKER:
                return self._broker()
        except SystemUnreachable as exc:
            return None, f"the web process did not answer: {exc}"
        return None, f"unknown role {role!r}"

    async def _leader(self) -> tuple[Target | None, str]:
        for group in await self.system.replica_groups():
            if group.get("leader"):
                target = await self.system.target(REPLICA, str(group["leader"]))
                if target:
                    return target, ""
        return None, "no replica group has a leader (is the system durable?)"

    async def _follower(self) -> tuple[Target | None, str]:
        candidates = [
            str(m["id"])
            for g in await self.system.replica_groups()
            for m in g.get("members", [])
            if isinstance(m, dict) and m.get("id") != g.get("leader")
        ]
        if not candidates:
            return None, "no replica follows a leader (is the system durable?)"
        target = await self.system.target(REPLICA, self.rng.choice(sorted(candidates)))
        return target, "" if target else "the follower has no pid"

    async def _owner(self) -> tuple[Target | None, str]:
        for port in await self.system.ports(CLIENT_PORTAL):
            owner = await traced_owner(port, self.account)
            if owner:
                target = await self.system.target(CACHE_NODE, owner)
                if target:
                    return target, ""
        return None, f"no portal named the owner of client {self.account.cid}"

    async def _portal(self) -> tuple[Target | None, str]:
        portals = [
            c
            for c in await self.system.components()
            if c.kind == CLIENT_PORTAL and c.alive and c.pid
        ]
        if not portals:
            return None, "no client portal is alive"
        chosen = self.rng.choice(sorted(portals, key=lambda c: c.id))
        return Target(chosen.id, chosen.kind, chosen.pid), ""

    def _broker(self) -> tuple[Target | None, str]:
        found = self.system.broker()
        if found is None:
            return None, "no broker started by `taskring up` (pids.json names none that listens)"
        return Target("broker", "broker", found[0]), ""


async def traced_owner(port: int, account: Account) -> str | None:
    """The cache node a traced list through the portal on `port` names as the owner of the
    account's key, or None if the portal could not answer."""
    with contextlib.suppress(Dropped):
        line = await Line.open(port)
        try:
            auth = await line.call({"op": "auth", "cid": account.cid, "token": account.token})
            listed = await line.call({"op": "list_tasks", "cid": account.cid, "trace": True})
        finally:
            line.close()
        if auth.get("ok") and listed.get("ok"):
            return str(listed.get("trace", {}).get("owner") or "") or None
    return None
