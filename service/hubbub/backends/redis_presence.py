"""Presence on Redis: per-room entries that expire unless their node keeps refreshing them.

`<prefix>:{room}:presence` (hash: client → entry JSON) and `<prefix>:{room}:presence:exp`
(sorted set: client → expiry, ms). Reads drop expired entries as they go.

Every `presence_ttl / 3` a node moves its own clients' expiries forward: one ZADD per room for all
of its clients there, not a write per entry (100,000 idle connections with presence on must not
cost a core). The ZADD answers how many members were new: any at all means Redis lost that room's
entries (it restarted empty, or failed over to a replica that never had them), and the node writes
the room's entries again, so a Redis that lost them is repopulated within a refresh. The keys
themselves live `KEY_TTL_FACTOR × presence_ttl` and have that renewed every `presence_ttl`: keys
of rooms whose nodes all died go away on their own (their entries have long expired and are
filtered out by every read).

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

#: Rooms per round trip of a refresh (one ZADD each).
REFRESH_CHUNK = 500
#: A room's presence keys expire this many `presence_ttl`s after they were last renewed...
KEY_TTL_FACTOR = 4
#: ...which every this many-th refresh does (refreshes come every presence_ttl / 3).
KEY_RENEW_EVERY = 3
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
        self._key_ttl_ms = self._ttl_ms * KEY_TTL_FACTOR
        #: This node's own entries, room → client → entry JSON, kept alive by the refresher.
        self._local: dict[Room, dict[ClientId, str]] = {}
        self._refreshes = 0
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
        members = self._local.setdefault(room, {})
        members[client] = encoded
        try:
            await self._write(room, {client: encoded})
        except BaseException:
            # The join fails with the write (the session rolls it back). A local entry left behind would be
            # refreshed into Redis for as long as the node runs: a member everyone sees and no one can remove.
            # Whatever the failed write may have stored expires after presence_ttl.
            if members.get(client) is encoded:
                self._forget(room, client)
            raise

    def _forget(self, room: Room, client: ClientId) -> None:
        members = self._local.get(room)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._local[room]

    def _queue_write(self, pipe: Any, room: Room, members: dict[ClientId, str], expires: int) -> None:
        """Queue on `pipe` the whole of `members`' entries in `room`: entries, expiries, this node's index."""
        entries, expiry = self._keys(room)
        pipe.hset(entries, mapping=members)
        pipe.zadd(expiry, dict.fromkeys(members, expires))
        pipe.pexpire(entries, self._key_ttl_ms)
        pipe.pexpire(expiry, self._key_ttl_ms)
        pipe.sadd(self._index(self._node), *(protocol.dumps([room, client]) for client in members))

    async def _write(self, room: Room, members: dict[ClientId, str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_write(pipe, room, members, int(time.time() * 1000) + self._ttl_ms)
        pipe.pexpire(self._index(self._node), self._key_ttl_ms)
        await self._call(pipe.execute)

    async def remove(self, room: Room, client: ClientId) -> None:
        self._forget(room, client)
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
            if node != self._node or client not in self._local.get(room, ()):
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
        return sum(map(len, self._local.values()))

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
            try:
                await self.refresh()
            except BackendUnavailable as exc:
                self._refresh_failed.failed(str(exc))
            else:
                self._refresh_failed.recovered()

    async def _write_index(self) -> None:
        index = self._index(self._node)
        pairs = [protocol.dumps([room, client]) for room, members in list(self._local.items()) for client in members]
        for start in range(0, len(pairs), PURGE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            pipe.sadd(index, *pairs[start : start + PURGE_CHUNK])
            pipe.pexpire(index, self._key_ttl_ms)
            await self._call(pipe.execute)

    async def refresh(self) -> int:
        """Move this node's entries' expiries forward; write again the rooms Redis lost. How many rooms it wrote."""
        self._refreshes += 1
        renew_keys = self._refreshes % KEY_RENEW_EVERY == 1
        rooms = list(self._local)
        rewritten = 0
        for start in range(0, len(rooms), REFRESH_CHUNK):
            chunk = rooms[start : start + REFRESH_CHUNK]
            expires = int(time.time() * 1000) + self._ttl_ms
            pipe = self._redis.pipeline(transaction=False)
            sent: list[tuple[Room, list[ClientId]]] = []
            for room in chunk:
                members = self._local.get(room)
                if not members:
                    continue
                entries, expiry = self._keys(room)
                clients = list(members)
                sent.append((room, clients))
                pipe.zadd(expiry, dict.fromkeys(clients, expires))
                if renew_keys:
                    pipe.pexpire(entries, self._key_ttl_ms)
                    pipe.pexpire(expiry, self._key_ttl_ms)
            if renew_keys:
                pipe.pexpire(self._index(self._node), self._key_ttl_ms)
            replies = await self._call(pipe.execute)
            added = replies[:: 3 if renew_keys else 1][: len(sent)]
            if renew_keys and not replies[-1] and start == 0:
                # This node's index is gone (PEXPIRE found no key) while its rooms may not be: list them all
                # again, or a purge after this node dies would leave its clients as ghosts for presence_ttl.
                await self._write_index()
            # A member new to its room's expiries: Redis lost the room's entries. Write every entry this
            # node still has there (not the ones that left while the ZADD was on its way).
            lost = [(room, self._local.get(room)) for (room, _), new in zip(sent, added, strict=True) if new]
            lost_rooms = [(room, members) for room, members in lost if members]
            if lost_rooms:
                pipe = self._redis.pipeline(transaction=False)
                for room, members in lost_rooms:
                    self._queue_write(pipe, room, dict(members), expires)
                pipe.pexpire(self._index(self._node), self._key_ttl_ms)
                await self._call(pipe.execute)
                rewritten += len(lost_rooms)
        if rewritten:
            log.info("presence: wrote the entries of %d rooms again (Redis restarted or failed over?)", rewritten)
        return rewritten
