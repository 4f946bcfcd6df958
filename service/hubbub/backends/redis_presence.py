"""Presence on Redis: per-room entries that expire unless their node keeps refreshing them.

`<prefix>:{room}:presence` (hash: client → entry JSON) and `<prefix>:{room}:presence:exp`
(sorted set: client → expiry, ms). Each node re-adds its own clients every `presence_ttl / 3`,
so a Redis that restarted empty is repopulated within a refresh. Reads drop expired entries as they go.

A node that dies (SIGKILL, a lost Kubernetes node) cannot remove its clients' entries, and waiting
for `presence_ttl` shows ghosts for half a minute. So each node also lists its entries in
`<prefix>:presence-of:<node>` (a set of `[room, client]` JSON pairs, refreshed with them), and
`purge(node)` removes them: the cluster view calls it for a node whose heartbeat stopped (within
seconds, see redis_cluster). A process restarted under the same name within that time (a crashed
container restarting in its pod: the node name is the pod's) is not seen to have gone, so a starting
node purges what its own name lists before it refreshes anything: its previous process's entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hubbub import protocol
from hubbub.backends.base import BackendUnavailable, PresenceStats
from hubbub.backends.redis_pool import error_kind
from hubbub.metrics import RedisMetrics
from hubbub.throttle import RepeatedError
from hubbub.types import ClientId, JSONObject, Room

log = logging.getLogger("hubbub.redis")

T = TypeVar("T")

READ = """
local entries, expiry = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
  redis.call('HDEL', entries, unpack(gone))
end
return redis.call('HGETALL', entries)
"""

REFRESH_CHUNK = 500
#: Entries removed per round trip by `purge`.
PURGE_CHUNK = 500


class RedisPresence:
    """Implements Presence."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl: float,
        timeout: float,
        node: str = "",
        metrics: RedisMetrics | None = None,
    ) -> None:
        self._redis = client
        self._node = node
        self._metrics = metrics or RedisMetrics()
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._ttl = ttl
        self._timeout = timeout
        self._read = client.register_script(READ)
        #: This node's own entries, re-added by the refresher.
        self._local: dict[tuple[Room, ClientId], str] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_failed = RepeatedError(log, "presence refresh failed")

    def _index(self, node: str) -> str:
        return f"{self._prefix}:presence-of:{node}"

    def _keys(self, room: Room) -> tuple[str, str]:
        base = f"{self._prefix}:{{{room}}}:presence"
        return base, base + ":exp"

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await asyncio.wait_for(make(), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._metrics.error("presence", error_kind(exc))
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc
        self._metrics.latency["presence"].observe(loop.time() - started)
        return result

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def add(self, room: Room, client: ClientId, entry: JSONObject) -> None:
        encoded = protocol.dumps(entry)
        key = (room, client)
        self._local[key] = encoded
        try:
            await self._write([(room, client, encoded)])
        except BaseException:
            # The join fails with the write (the session rolls it back). A local entry left behind would be
            # refreshed into Redis for as long as the node runs: a member everyone sees and no one can remove.
            # Whatever the failed write may have stored expires after presence_ttl.
            if self._local.get(key) is encoded:
                del self._local[key]
            raise

    async def _write(self, items: list[tuple[Room, ClientId, str]]) -> None:
        expires = int(time.time() * 1000) + self._ttl_ms
        pipe = self._redis.pipeline(transaction=False)
        index = self._index(self._node)
        for room, client, encoded in items:
            entries, expiry = self._keys(room)
            pipe.hset(entries, client, encoded)
            pipe.zadd(expiry, {client: expires})
            pipe.pexpire(entries, self._ttl_ms * 2)
            pipe.pexpire(expiry, self._ttl_ms * 2)
            pipe.sadd(index, protocol.dumps([room, client]))
        pipe.pexpire(index, self._ttl_ms * 2)
        await self._call(pipe.execute)

    async def remove(self, room: Room, client: ClientId) -> None:
        self._local.pop((room, client), None)
        entries, expiry = self._keys(room)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(entries, client)
        pipe.zrem(expiry, client)
        pipe.srem(self._index(self._node), protocol.dumps([room, client]))
        await self._call(pipe.execute)

    async def purge(self, node: str) -> int:
        """Remove the entries `node` listed (its heartbeats stopped); how many there were.

        Only the pairs read are removed from the list: entries added meanwhile (a node of that name that came
        back) stay. No leave event is published for them, as none is when an entry merely expires.
        """
        index = self._index(node)
        members = await self._call(lambda: self._redis.smembers(index))
        pairs: list[tuple[Any, Room, ClientId]] = []
        for member in members:
            room, client = protocol.loads(member)
            # A restarted node's own live entries are not its previous process's: they stay.
            if node != self._node or (room, client) not in self._local:
                pairs.append((member, Room(room), ClientId(client)))
        for start in range(0, len(pairs), PURGE_CHUNK):
            chunk = pairs[start : start + PURGE_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            for _member, room, client in chunk:
                entries, expiry = self._keys(room)
                pipe.hdel(entries, client)
                pipe.zrem(expiry, client)
            pipe.srem(index, *(member for member, _room, _client in chunk))
            await self._call(pipe.execute)
        return len(pairs)

    async def get(self, room: Room) -> dict[ClientId, JSONObject]:
        entries, expiry = self._keys(room)
        now = int(time.time() * 1000)
        flat = await self._call(lambda: self._read(keys=[entries, expiry], args=[now]))
        result: dict[ClientId, JSONObject] = {}
        for i in range(0, len(flat), 2):
            client = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            result[ClientId(client)] = protocol.loads(flat[i + 1])
        return result

    async def stats(self, room: Room) -> PresenceStats:
        clients = await self.get(room)
        return PresenceStats(len(clients), len({entry.get("user") for entry in clients.values()}))

    def local_entries(self) -> int:
        return len(self._local)

    async def _purge_previous_process(self) -> None:
        """Until it succeeds (Redis may not answer yet): remove what an earlier process of this node's
        name listed. Entries of clients that joined meanwhile are this process's and stay (see purge)."""
        while True:
            try:
                cleared = await self.purge(self._node)
            except BackendUnavailable as exc:
                self._refresh_failed.failed(str(exc))
                await asyncio.sleep(min(self._ttl / 3, 1.0))
                continue
            if cleared:
                log.warning("removed %d presence entries left by this node's previous process", cleared)
            return

    async def _refresh_forever(self) -> None:
        if self._node:
            await self._purge_previous_process()
        while True:
            await asyncio.sleep(self._ttl / 3)
            items = [(room, client, encoded) for (room, client), encoded in list(self._local.items())]
            for start in range(0, len(items), REFRESH_CHUNK):
                try:
                    await self._write(items[start : start + REFRESH_CHUNK])
                except BackendUnavailable as exc:
                    self._refresh_failed.failed(str(exc))
                    break
            else:
                self._refresh_failed.recovered()
