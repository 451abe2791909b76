"""Recording on Redis Cluster: each command goes to the master that owns its key's hash slot.

One `RedisLink` (a pipelined connection) per master, and a slot table read with CLUSTER SLOTS from any
node that answers: the URL's node first, then every node the last table named, so a dead seed does not
stop a refresh. A MOVED reply (the slot changed owner: a failover or a resharding) refreshes the table and
the command is sent once more, to the new owner; MOVED means it did not run, so resending cannot append
twice. ASK (a slot half-way through a migration) sends it to the node named, once, after ASKING. A broken
connection marks the table stale (the next command refreshes it) and the caller answers UNAVAILABLE; its
retry is stored once, by event_id, like any retry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.exceptions
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from generation_analytics.service.ingest.redis_link import RedisLink

log = logging.getLogger(__name__)

Address = tuple[str, int]

# Errors after which the command did not run and the slot table is out of date.
_REDIRECTS = ("MOVED ", "ASK ")
# Errors meaning the cluster cannot serve the slot right now (a failover in progress): answer UNAVAILABLE.
_NOT_NOW = ("CLUSTERDOWN", "TRYAGAIN")


class ClusterLink:
    """Commands for keys of a Redis Cluster (reached through the node at `url`), bounded by `timeout_s`."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._scheme = parts.scheme or "redis"
        self._credentials = parts.netloc.rpartition("@")[0]
        self._seed: Address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._timeout_s = timeout_s
        self._owners: list[Address | None] = []  # the master of each slot, once known
        self._nodes: list[Address] = []  # every node the last table named (masters and replicas)
        self._links: dict[Address, RedisLink] = {}
        self._stale = True
        self._refreshing = asyncio.Lock()

    async def execute_for(self, key: str, *args: Any) -> Any:
        """Run one command on the master of `key`'s slot and return its reply.

        Raises:
            redis.exceptions.ConnectionError: the slot's master cannot be reached (or the cluster cannot
                serve the slot now).
            redis.exceptions.ResponseError: Redis answered with an error.
        """
        (reply,) = await self.execute_many_for(key, args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many_for(self, key: str, *commands: tuple[Any, ...]) -> list[Any]:
        """Run several commands in one write on the master of `key`'s slot (see RedisLink.execute_many);
        a command's error is returned in its place."""
        slot = key_slot(key.encode())
        for _ in range(2):
            replies = await self._on(await self._owner(slot), commands)
            redirect = next((r for r in replies if _is(r, _REDIRECTS)), None)
            if redirect is None:
                if any(_is(r, _NOT_NOW) for r in replies):
                    self._stale = True
                    raise redis.exceptions.ConnectionError(f"the cluster cannot serve slot {slot} now")
                return replies
            self._stale = True
            kind, _, target = str(redirect).split(" ")
            if kind == "ASK":  # migrating: this key is already on the target; ask there, once
                asked = await self._on(_address(target), (("ASKING",), *commands))
                if not _is(asked[0], ()):
                    return asked[1:]
            log.info("redis cluster: slot %d moved (%s); refreshing the slot table", slot, redirect)
        raise redis.exceptions.ConnectionError(f"slot {slot} keeps moving; retry later")

    async def _on(self, node: Address, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        try:
            return await self._link(node).execute_many(*commands)
        except redis.exceptions.ConnectionError:
            self._stale = True  # a failover may be under way: look again before the next command
            raise

    async def _owner(self, slot: int) -> Address:
        if self._stale:
            await self._refresh()
        owner = self._owners[slot] if self._owners else None
        if owner is None:
            self._stale = True
            raise redis.exceptions.ConnectionError(f"no Redis Cluster master serves slot {slot}")
        return owner

    async def _refresh(self) -> None:
        """Read the slot table from the first node that answers; keep links only to its masters."""
        async with self._refreshing:
            if not self._stale:  # another caller refreshed it while this one waited
                return
            errors = []
            for node in dict.fromkeys([self._seed, *self._nodes]):
                try:
                    table = await self._link(node).execute("CLUSTER", "SLOTS")
                except redis.exceptions.RedisError as exc:
                    errors.append(f"{node[0]}:{node[1]}: {exc}")
                    continue
                for retired in self._adopt(table):
                    await retired.close()
                return
            raise redis.exceptions.ConnectionError(f"no Redis Cluster node answers: {'; '.join(errors)}")

    def _adopt(self, table: list[Any]) -> list[RedisLink]:
        """Take the table as the truth; returns the links to nodes that are no longer masters."""
        owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        nodes: list[Address] = []
        for start, end, master, *replicas in table:
            owner = _node(master)
            owners[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            nodes += [owner, *(_node(r) for r in replicas)]
        masters = set(owners)
        self._owners, self._nodes, self._stale = owners, nodes, False
        return [self._links.pop(n) for n in list(self._links) if n not in masters and n != self._seed]

    def _link(self, node: Address) -> RedisLink:
        link = self._links.get(node)
        if link is None:
            netloc = f"{self._credentials}@{node[0]}:{node[1]}" if self._credentials else f"{node[0]}:{node[1]}"
            link = self._links[node] = RedisLink(
                urlunsplit((self._scheme, netloc, "", "", "")), timeout_s=self._timeout_s
            )
        return link

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()
        self._stale = True


def _is(reply: Any, prefixes: tuple[str, ...]) -> bool:
    """Whether `reply` is an error reply starting with one of `prefixes` (any error when empty)."""
    return isinstance(reply, redis.exceptions.ResponseError) and (not prefixes or str(reply).startswith(prefixes))


def _node(entry: list[Any]) -> Address:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    return (host, int(entry[1]))


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host, int(port))
