"""Broker and History on Redis: streams for history, pub/sub for fan-out, Lua for atomicity.

Keys of one room share the hash tag `{room}`, so in a Redis Cluster they are in one slot and the
room's scripts run on one master: `<prefix>:{room}:meta` (hash: epoch, offset), `:stream` (stream;
entry id = offset), `:idem:<key>` (idempotency results), and the channel `<prefix>:{room}:ch` (a
shard channel of that slot in a cluster: SPUBLISH, SSUBSCRIBE).

Publish is one script: check the idempotency key, take the next offset, append to the stream
(capped at `history_size`, expiring after `history_ttl`), publish, remember the key. A room whose
meta is gone (Redis restarted empty, or the room idled past `meta_ttl`) gets a new epoch.

Commands go over one pipelined connection (`redis_link.Link`) per Redis master (one on a single
Redis; `redis_shards` in a cluster): a publication costs one script call written together with every
other command of the same loop iteration, and the publishes of one node to one room reach Redis in
the order they were made. Pub/sub is `redis_subscriber`'s.

Pub/sub is at-most-once, so the subscriber tracks, per room, the last offset it handed to the
node. A gap, a returned subscriber connection, or a periodic position check that finds the
stream ahead triggers a backfill from the stream, in offset order and without duplicates; when
the stream can no longer fill the gap (trimmed, expired, or a new epoch) the room's local
members are closed with 4011 so they reconnect and recover (or learn they cannot).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError

from hubbub import protocol
from hubbub.backends.base import (
    BackendUnavailable,
    BrokerEventHandler,
    HistoryResult,
    InsufficientStateCause,
    PublishResult,
    StreamOptions,
    TracingEventHandler,
)
from hubbub.backends.redis_link import Arg, Link
from hubbub.backends.redis_pool import RedisClients, error_kind, stop_tasks
from hubbub.backends.redis_shards import Address, Shards
from hubbub.backends.redis_subscriber import Subscriber
from hubbub.metrics import RedisMetrics
from hubbub.protocol import Encoded, Publication
from hubbub.throttle import RepeatedError
from hubbub.types import JSONObject, Room

log = logging.getLogger("hubbub.redis")

PUBLISH = """
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 1}
  end
end
local position = redis.call('HMGET', meta, 'epoch', 'offset')
local epoch = position[1]
if not epoch then
  epoch = ARGV[8]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
elseif epoch == ARGV[10] and tonumber(position[2]) < tonumber(ARGV[11]) then
  -- This node already saw a higher offset in this epoch: Redis lost acknowledged writes
  -- (a failover to a lagging replica). Never hand those offsets out again under the same epoch.
  epoch = ARGV[8]
  redis.call('HSET', meta, 'epoch', epoch)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
redis.call('PEXPIRE', meta, ARGV[7])
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, offset .. '-1', 'd', ARGV[1], 't', ARGV[3], 'i', ARGV[2])
  redis.call('PEXPIRE', stream, ARGV[5])
else
  redis.call('DEL', stream)
end
-- ARGV[12], from a tracing node only: the publisher's W3C traceparent, which other nodes continue
-- (a field that nodes without tracing, and older nodes, ignore).
local trace = ''
if ARGV[12] then
  trace = ',"tp":"' .. ARGV[12] .. '"'
end
-- "il" and "dl", the byte lengths of info and data, let a node cut data out of the message without
-- parsing it (nodes before them read the message as a whole and ignore them).
redis.call('PUBLISH', ARGV[9],
  '{"e":"' .. epoch .. '","o":' .. offset .. ',"t":' .. ARGV[3] .. trace .. ',"il":' .. #ARGV[2]
  .. ',"dl":' .. #ARGV[1] .. ',"i":' .. ARGV[2] .. ',"d":' .. ARGV[1] .. '}')
if idem then
  redis.call('SET', idem, epoch .. ':' .. offset, 'PX', ARGV[6])
end
return {epoch, offset, 0}
"""

READ = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta, ARGV[4])
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local limit = tonumber(ARGV[2])
local entries = {}
if limit > 0 then
  if ARGV[1] == '' then
    entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', stream, (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', limit)
  end
end
return {epoch, offset, entries}
"""

#: The (epoch, offset) of every room in KEYS (their meta hashes), flattened; nil for a missing one.
POSITIONS = """
local out = {}
for i, meta in ipairs(KEYS) do
  local position = redis.call('HMGET', meta, 'epoch', 'offset')
  out[2 * i - 1] = position[1]
  out[2 * i] = position[2]
end
return out
"""

RENEW_EPOCH = """
local meta = KEYS[1]
if redis.call('HGET', meta, 'epoch') == ARGV[1] then
  redis.call('HSET', meta, 'epoch', ARGV[2])
end
return {redis.call('HGET', meta, 'epoch'), tonumber(redis.call('HGET', meta, 'offset') or '0')}
"""

#: Rooms whose newest published position a node remembers, to notice Redis going backwards.
SEEN_ROOMS = 10_000
#: Timestamps of at most this many recent offsets per room are kept to tell a duplicate from a reused
#: offset...
RECENT = 256
#: ...and of none older than this (ms) next to the room's newest. Offsets are reused only between a loss
#: of acknowledged writes in Redis and its detection (the next publish of a node that saw more, or a
#: position check), so a minute (or three check intervals) covers it; a count alone kept 256 entries
#: in every busy room, ~25 KB each: 250 MB a node for 10,000 rooms.
RECENT_MS = 60_000
#: Position checks read this many rooms per round trip: the replies of a batch are handled in one
#: go, and a batch of 500 held the event loop long enough to show in the many-rooms p99.
POSITION_BATCH = 100
#: Attempts to close a gap before the room's members are told to recover (4011).
BACKFILL_ATTEMPTS = 3


class _Script:
    """A Lua script called by its SHA, sent whole only when Redis does not know it (flushed)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # the name Redis gives the script, not a secret


@dataclass(slots=True)
class _Subscription:
    """What this node has handed to its hub for one room."""

    epoch: str = ""
    offset: int = 0
    ready: bool = False
    backfilling: bool = False
    pending: list[tuple[str, Publication]] = field(default_factory=list)
    #: Offset seen by the previous position check while the stream was ahead (two strikes before a backfill).
    suspect: int = -1
    #: offset -> ts of recently delivered publications: the same offset with another ts is a reused offset.
    recent: dict[int, int] = field(default_factory=dict)
    #: Epochs given up after their history went backwards; late messages of them are dropped.
    abandoned: set[str] = field(default_factory=set)


def remember_recent(recent: dict[int, int], offset: int, ts: int, window_ms: int) -> None:
    """Record that `offset` was delivered with timestamp `ts`; forget the oldest entries beyond RECENT and
    those older than `window_ms` before `ts` (entries are in delivery order, so the oldest come first)."""
    recent[offset] = ts
    if len(recent) > RECENT:
        del recent[next(iter(recent))]
    forget_recent(recent, ts - window_ms)


def forget_recent(recent: dict[int, int], before_ts: int) -> None:
    """Forget the entries of `recent` (offset -> ts, oldest first) older than `before_ts`."""
    while recent:
        first = next(iter(recent))
        if recent[first] >= before_ts:
            return
        del recent[first]


def _new_epoch() -> str:
    # A candidate sent with every publish and used only when a room starts an epoch. Epochs must
    # differ, not be secret: the PRNG (seeded from the OS per process) spares a system call per publish.
    return f"{random.getrandbits(32):08x}"


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pub_from_entry(entry: Any) -> Publication:
    entry_id, fields = entry
    values = {_decode(fields[i]): fields[i + 1] for i in range(0, len(fields), 2)}
    offset = int(_decode(entry_id).split("-", 1)[0])
    info = protocol.loads(values["i"])
    return Publication(offset, Encoded(_decode(values["d"])), int(_decode(values["t"])), info)


#: The fixed head of a publication message, up to its info: epoch, offset, ts, trace context, and the
#: byte lengths of info and data that follow (see PUBLISH).
_HEAD = re.compile(
    rb'\{"e":"([^"\\]*)","o":([0-9]+),"t":([0-9]+)(?:,"tp":"([^"\\]*)")?,"il":([0-9]+),"dl":([0-9]+),"i":'
)


def _split(raw: bytes) -> tuple[str, Publication, str | None] | None:
    """(epoch, publication, traceparent) cut out of a publication message, data left encoded; None
    when `raw` is not one in this layout (a presence event, or a message of an older node)."""
    head = _HEAD.match(raw)
    if head is None:
        return None
    start = head.end()
    info_end = start + int(head[5])
    data_end = info_end + 5 + int(head[6])
    if raw[info_end : info_end + 5] != b',"d":' or len(raw) != data_end + 1 or raw[data_end] != 0x7D:  # "}"
        return None
    info_text = raw[start:info_end]
    info = None if info_text == b"null" else protocol.loads(info_text)
    if info is not None and not isinstance(info, dict):
        return None
    pub = Publication(int(head[2]), Encoded(raw[info_end + 5 : data_end].decode()), int(head[3]), info)
    trace = head[4]
    return head[1].decode(), pub, None if trace is None else trace.decode()


class RedisEngine:
    """Implements Broker and History."""

    def __init__(
        self,
        clients: RedisClients,
        *,
        prefix: str,
        timeout: float,
        position_check_interval: float,
        metrics: RedisMetrics | None = None,
    ) -> None:
        self._clients = clients
        self._metrics = metrics = metrics or RedisMetrics()
        metrics.available.source = lambda: 1 if self.available else 0
        self._prefix = prefix
        self._timeout = timeout
        self._check_interval = position_check_interval
        self._recent_ms = max(RECENT_MS, int(3000 * position_check_interval))
        #: A Redis Cluster's masters (None on a single Redis): a room's publications are its slot's shard channel.
        self._shards: Shards | None = None
        self._publish_command = "SPUBLISH" if clients.seeds else "PUBLISH"
        self._publish = _Script(PUBLISH.replace("redis.call('PUBLISH'", f"redis.call('{self._publish_command}'"))
        self._read = _Script(READ)
        self._renew = _Script(RENEW_EPOCH)
        self._positions = _Script(POSITIONS)
        scripts = (self._publish, self._read, self._renew, self._positions)
        greeting = [("SCRIPT", "LOAD", script.source) for script in scripts]
        latency = metrics.latency["broker"]
        self._link: Link | None = None
        if clients.seeds:
            self._shards = Shards(
                clients.seeds, clients.node_factory(), timeout=timeout, greeting=greeting, latency=latency
            )
        else:
            self._link = Link(clients.connection_factory(), timeout=timeout, greeting=greeting, latency=latency)
        if clients.seeds:
            node_factory = clients.node_factory(subscriber=True)

            def open_link(address: Address, on_push: Callable[[list[Any]], None]) -> Link:
                return Link(lambda: node_factory(address), timeout=timeout, on_push=on_push, latency=latency)

        else:
            single_factory = clients.connection_factory(subscriber=True)

            def open_link(address: Address, on_push: Callable[[list[Any]], None]) -> Link:
                return Link(single_factory, timeout=timeout, on_push=on_push, latency=latency)

        self._sub = Subscriber(
            open_link,
            shards=self._shards,
            on_message=lambda channel, raw: self._on_message(self._room_of(channel), raw),
            on_restored=self._restored,
            metrics=metrics,
        )
        #: Newest (epoch, offset) this node published per room, most recent rooms last (bounded).
        self._seen: OrderedDict[Room, tuple[str, int]] = OrderedDict()
        self._rooms: dict[Room, _Subscription] = {}
        self._handler: BrokerEventHandler | None = None
        #: Set when the node traces: publications then carry their trace context through Redis.
        self._traced: TracingEventHandler | None = None
        self._commands_up = True
        #: An outage is logged once, then with backoff and a count (not every second), then its end.
        self._unreachable = RepeatedError(log, "redis unreachable", recovery="redis reachable again")
        self._tasks: list[asyncio.Task[None]] = []

    # --- keys -----------------------------------------------------------------------------------

    def _key(self, room: Room, suffix: str) -> str:
        return f"{self._prefix}:{{{room}}}:{suffix}"

    def _channel(self, room: Room) -> str:
        return self._key(room, "ch")

    def _room_of(self, channel: str) -> Room:
        start = channel.index("{") + 1
        return Room(channel[start : channel.rindex("}")])

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._traced = handler if isinstance(handler, TracingEventHandler) else None
        loop = asyncio.get_running_loop()
        await self._sub.start()
        self._tasks = [
            loop.create_task(self._health_forever(), name="hubbub-redis-health"),
            loop.create_task(self._positions_forever(), name="hubbub-redis-positions"),
        ]

    async def aclose(self) -> None:
        await stop_tasks(self._tasks)
        await self._sub.aclose()
        if self._link is not None:
            await self._link.aclose()
        if self._shards is not None:
            await self._shards.aclose()
        await self._clients.aclose()

    @property
    def available(self) -> bool:
        return self._commands_up and self._sub.up

    def _command(self, key: str, *args: Arg) -> Awaitable[Any]:
        """One command, to the master of `key`'s slot in a cluster (to the one Redis otherwise)."""
        if self._link is not None:
            return self._link.call(*args)
        assert self._shards is not None
        return self._shards.call(key, *args)

    async def _call(self, reply: Awaitable[Any]) -> Any:
        try:
            return await reply
        except (RedisError, OSError) as exc:
            self._metrics.error("broker", error_kind(exc))
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc

    async def _script(self, script: _Script, keys: list[str], args: list[Arg]) -> Any:
        try:
            return await self._command(keys[0], "EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                self._metrics.error("broker", "response")
                raise BackendUnavailable(f"redis: {exc}") from exc
        except (RedisError, OSError) as exc:
            self._metrics.error("broker", error_kind(exc))
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc
        # Redis forgot the script (SCRIPT FLUSH) since this connection loaded it.
        return await self._call(self._command(keys[0], "EVAL", script.source, len(keys), *keys, *args))

    async def _health_forever(self) -> None:
        while True:
            try:
                await self._ping()
                self._unreachable.recovered()
                self._commands_up = True
            except (TimeoutError, RedisError, OSError) as exc:
                self._metrics.error("broker", error_kind(exc))
                # A changed reason is logged at once: a first attempt that merely timed out (a slow start)
                # must not hide the cause an operator has to fix (a certificate, a password).
                self._unreachable.failed(str(exc))
                self._commands_up = False
            await asyncio.sleep(1.0)

    async def _ping(self) -> None:
        if self._link is not None:
            await self._link.call("PING")
            return
        assert self._shards is not None
        slots = self._shards.map or await self._shards.refresh()
        if not slots.covered():
            slots = await self._shards.refresh()
            if not slots.covered():
                raise ResponseError("CLUSTERDOWN not every hash slot is served")
        # Every master: a cluster with one of them unreachable cannot serve that master's rooms.
        try:
            await asyncio.gather(*(link.call("PING") for link in self._shards.links().values()))
        except (RedisError, OSError):
            # A failover replaces the master in the map only once a replica is promoted: look again.
            with contextlib.suppress(RedisError, OSError):
                await self._shards.refresh()
            raise

    # --- Broker -----------------------------------------------------------------------------------

    async def publish(
        self,
        room: Room,
        data: object,
        *,
        info: JSONObject | None,
        idempotency_key: str | None,
        options: StreamOptions,
        encoded: str | None = None,
    ) -> PublishResult:
        keys = [self._key(room, "meta"), self._key(room, "stream")]
        if idempotency_key is not None:
            keys.append(self._key(room, f"idem:{idempotency_key}"))
        args: list[Arg] = [
            protocol.dumps(data) if encoded is None else encoded,
            protocol.dumps(info),
            int(time.time() * 1000),
            options.history_size,
            max(1, int(options.history_ttl * 1000)),
            max(1, int(options.idempotency_window * 1000)),
            max(1, int(options.meta_ttl * 1000)),
            _new_epoch(),
            self._channel(room),
            *self._floor(room),
        ]
        if self._traced is not None:
            traceparent = self._traced.traceparent()
            if traceparent is not None:
                args.append(traceparent)
        epoch, offset, duplicate = await self._script(self._publish, keys, args)
        result = PublishResult(_decode(epoch), int(offset), duplicate=bool(duplicate))
        self._remember(room, result.epoch, result.offset)
        return result

    def _floor(self, room: Room) -> tuple[str, int]:
        """The highest (epoch, offset) this node knows of for `room`: Redis must never be behind it."""
        seen = self._seen.get(room, ("", 0))
        state = self._rooms.get(room)
        if state is not None and state.ready and state.epoch == seen[0]:
            return seen[0], max(seen[1], state.offset)
        if state is not None and state.ready and state.epoch:
            return state.epoch, state.offset
        return seen

    def _remember(self, room: Room, epoch: str, offset: int) -> None:
        seen = self._seen.pop(room, None)
        if seen is None or seen[0] != epoch or seen[1] < offset:
            seen = (epoch, offset)
        self._seen[room] = seen
        if len(self._seen) > SEEN_ROOMS:
            self._seen.popitem(last=False)

    async def publish_join(self, room: Room, info: JSONObject) -> None:
        await self._presence_event(room, "join", info)

    async def publish_leave(self, room: Room, info: JSONObject) -> None:
        await self._presence_event(room, "leave", info)

    async def _presence_event(self, room: Room, kind: str, info: JSONObject) -> None:
        message = protocol.dumps({"k": kind, "i": info})
        channel = self._channel(room)
        await self._call(self._command(channel, self._publish_command, channel, message))

    # --- History ------------------------------------------------------------------------------------

    async def read(self, room: Room, *, since: int | None, limit: int, options: StreamOptions) -> HistoryResult:
        keys = [self._key(room, "meta"), self._key(room, "stream")]
        args: list[Arg] = ["" if since is None else since, limit, _new_epoch(), max(1, int(options.meta_ttl * 1000))]
        epoch, offset, entries = await self._script(self._read, keys, args)
        pubs = [_pub_from_entry(e) for e in entries]
        if since is None:
            pubs.reverse()
        cutoff = (time.time() - options.history_ttl) * 1000
        pubs = [p for p in pubs if p.ts >= cutoff]
        return HistoryResult(_decode(epoch), int(offset), pubs)

    async def _position(self, room: Room) -> tuple[str, int]:
        keys = [self._key(room, "meta"), self._key(room, "stream")]
        epoch, offset, _ = await self._script(self._read, keys, ["", 0, _new_epoch(), 86_400_000])
        return _decode(epoch), int(offset)

    async def _backfill_read(self, room: Room, since: int) -> tuple[str, int, list[Publication]]:
        keys = [self._key(room, "meta"), self._key(room, "stream")]
        epoch, offset, entries = await self._script(self._read, keys, [since, 100_000, _new_epoch(), 86_400_000])
        return _decode(epoch), int(offset), [_pub_from_entry(e) for e in entries]

    # --- subscriptions ------------------------------------------------------------------------------

    async def subscribe(self, room: Room) -> None:
        if room in self._rooms:
            return
        state = self._rooms[room] = _Subscription()
        try:
            await self._subscribe_channel(room)
            state.epoch, state.offset = await self._position(room)
        except BaseException:
            self._rooms.pop(room, None)
            with contextlib.suppress(Exception):
                await self._unsubscribe_channel(room)
            raise
        self._release(room, state)

    async def unsubscribe(self, room: Room) -> None:
        if self._rooms.pop(room, None) is not None:
            with contextlib.suppress(BackendUnavailable):
                await self._unsubscribe_channel(room)

    async def _subscribe_channel(self, room: Room) -> None:
        # Returns once Redis confirmed it: every publication made from now on reaches us.
        await self._call(self._sub.subscribe(self._channel(room)))

    async def _unsubscribe_channel(self, room: Room) -> None:
        self._sub.unsubscribe(self._channel(room))

    def _restored(self, channels: list[str]) -> None:
        """These rooms' channels were subscribed again (a reconnection, a failover, a moved slot): what
        was published meanwhile never reached us, and comes from the stream."""
        rooms = [self._room_of(channel) for channel in channels]
        asyncio.get_running_loop().create_task(self._backfill_all(rooms))

    def _on_message(self, room: Room, raw: bytes) -> None:
        state = self._rooms.get(room)
        handler = self._handler
        if state is None or handler is None:
            return
        try:
            split = _split(raw)
        except ValueError:  # not UTF-8, or info that is no JSON: judged (and dropped) as a whole below
            split = None
        if split is not None:
            epoch, pub, traceparent = split
        else:
            try:
                message = protocol.loads(raw)
            except ValueError:
                log.error("undecodable message on room %s dropped", room)
                return
            kind = message.get("k")
            if kind == "join":
                handler.on_join(room, message["i"])
                return
            if kind == "leave":
                handler.on_leave(room, message["i"])
                return
            pub = Publication(int(message["o"]), message["d"], int(message["t"]), message["i"])
            epoch, traceparent = str(message["e"]), message.get("tp")
        if not state.ready or state.backfilling:
            state.pending.append((epoch, pub))
            return
        if self._traced is None:
            self._deliver(room, state, epoch, pub)
        else:
            with self._traced.remote_parent(traceparent):
                self._deliver(room, state, epoch, pub)

    def _deliver(self, room: Room, state: _Subscription, epoch: str, pub: Publication) -> bool:
        """Hand `pub` to the hub if it is the next one; False when it reveals a gap."""
        handler = self._handler
        assert handler is not None
        if epoch in state.abandoned:
            return True
        if pub.offset <= state.offset and state.recent.get(pub.offset, pub.ts) != pub.ts:
            # The same offset with other content: Redis lost acknowledged writes (a failover to a replica
            # that had not received them) and handed their offsets out again. Start a new epoch.
            self._start_regression(room, state, epoch, pub)
            return True
        if epoch != state.epoch:
            # The room's history was lost (Redis restarted empty): nobody can be sure what they missed.
            log.warning("room %s changed epoch %s -> %s: members must recover", room, state.epoch, epoch)
            state.epoch, state.offset = epoch, pub.offset
            handler.on_insufficient_state(room, "epoch_changed")
            handler.on_publication(room, epoch, pub)
            return True
        if pub.offset <= state.offset:
            return True  # already delivered
        if pub.offset == state.offset + 1:
            self._hand_over(room, state, epoch, pub)
            return True
        state.pending.append((epoch, pub))
        state.backfilling = True
        asyncio.get_running_loop().create_task(self._backfill(room, state))
        return False

    def _hand_over(self, room: Room, state: _Subscription, epoch: str, pub: Publication) -> None:
        handler = self._handler
        assert handler is not None
        state.offset = pub.offset
        remember_recent(state.recent, pub.offset, pub.ts, self._recent_ms)
        handler.on_publication(room, epoch, pub)

    def _start_regression(self, room: Room, state: _Subscription, epoch: str, pub: Publication) -> None:
        state.pending.append((epoch, pub))
        state.backfilling = True
        asyncio.get_running_loop().create_task(self._renew_epoch(room, state))

    async def _renew_epoch(self, room: Room, state: _Subscription) -> None:
        """History went backwards: abandon the epoch so every node and client learns it (4011, recovered=false)."""
        handler = self._handler
        assert handler is not None
        old = state.epoch
        try:
            for _attempt in range(BACKFILL_ATTEMPTS):
                try:
                    epoch, offset = await self._script(self._renew, [self._key(room, "meta")], [old, _new_epoch()])
                    break
                except BackendUnavailable:
                    await asyncio.sleep(0.5)
            else:
                return
            log.warning("room %s: offsets reused after a data loss in Redis; epoch %s abandoned", room, old)
            state.abandoned.add(old)
            state.epoch, state.offset = _decode(epoch), int(offset)
            state.recent.clear()
            handler.on_insufficient_state(room, "offsets_reused")
            pending, state.pending = state.pending, []
            state.pending = [(e, p) for e, p in pending if e not in state.abandoned and p.offset > state.offset]
        finally:
            state.backfilling = False

    def _release(self, room: Room, state: _Subscription) -> None:
        """Deliver what waited while the position was unknown or a backfill ran."""
        state.ready = True
        pending, state.pending = sorted(state.pending, key=lambda item: item[1].offset), []
        for index, (epoch, pub) in enumerate(pending):
            if not self._deliver(room, state, epoch, pub):
                state.pending.extend(pending[index + 1 :])
                return

    async def _backfill_all(self, rooms: list[Room]) -> None:
        for room in rooms:
            state = self._rooms.get(room)
            if state is not None and state.ready and not state.backfilling:
                state.backfilling = True
                await self._backfill(room, state)

    async def _backfill(self, room: Room, state: _Subscription) -> None:
        handler = self._handler
        assert handler is not None
        #: Why the backfill gave up (the members are closed 4011), if it did.
        lost: InsufficientStateCause | None = None
        try:
            for _attempt in range(BACKFILL_ATTEMPTS):
                try:
                    epoch, newest, pubs = await self._backfill_read(room, state.offset)
                except BackendUnavailable:
                    await asyncio.sleep(0.5)
                    continue
                if self._rooms.get(room) is not state:
                    return  # unsubscribed meanwhile
                if epoch != state.epoch:
                    log.warning("room %s lost its history (epoch %s -> %s)", room, state.epoch, epoch)
                    state.epoch, state.offset = epoch, newest
                    lost = "history_lost"
                    handler.on_insufficient_state(room, lost)
                    state.pending = [(e, p) for e, p in state.pending if e == epoch and p.offset > newest]
                    return
                if newest > state.offset and (not pubs or pubs[0].offset != state.offset + 1):
                    log.warning("room %s: offsets %d..%d are gone from history", room, state.offset + 1, newest)
                    state.offset = newest
                    lost = "history_trimmed"
                    handler.on_insufficient_state(room, lost)
                    state.pending = [(e, p) for e, p in state.pending if p.offset > newest]
                    return
                for pub in pubs:
                    if pub.offset == state.offset + 1:
                        self._hand_over(room, state, epoch, pub)
                pending, state.pending = sorted(state.pending, key=lambda item: item[1].offset), []
                remaining = [(e, p) for e, p in pending if p.offset > state.offset]
                for e, p in remaining:
                    if e == state.epoch and p.offset == state.offset + 1:
                        self._hand_over(room, state, e, p)
                    elif p.offset > state.offset:
                        state.pending.append((e, p))
                if not state.pending:
                    return
            log.warning("room %s: gap not closed after %d backfills", room, BACKFILL_ATTEMPTS)
            lost = "backfill_exhausted"
            handler.on_insufficient_state(room, lost)
            if state.pending:
                state.offset = max(p.offset for _, p in state.pending)
            state.pending.clear()
        finally:
            state.backfilling = False
            self._metrics.backfill("failed" if lost is not None else "ok")

    async def _positions_forever(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                await self._check_positions()
            except BackendUnavailable:
                pass
            except Exception:
                log.exception("position check failed")

    async def _read_positions(self, rooms: list[Room]) -> list[Any]:
        """(epoch, offset) of every room in `rooms`, flattened; None for a room that has no meta."""
        keys = [self._key(room, "meta") for room in rooms]
        if self._shards is None:
            # One script call per batch, not a command per room: a node checks every room it holds.
            return list(await self._script(self._positions, keys, []))
        # A script's keys must share a slot: in a cluster, an HMGET per room, pipelined on each master's Link.
        replies = await asyncio.gather(*(self._call(self._command(k, "HMGET", k, "epoch", "offset")) for k in keys))
        return [value for reply in replies for value in reply]

    async def _check_positions(self) -> None:
        # Quiet rooms forget their recent offsets here (busy ones as they deliver).
        horizon = int(time.time() * 1000) - self._recent_ms
        for held in self._rooms.values():
            if held.recent:
                forget_recent(held.recent, horizon)
        rooms = [r for r, s in self._rooms.items() if s.ready and not s.backfilling]
        for start in range(0, len(rooms), POSITION_BATCH):
            batch = rooms[start : start + POSITION_BATCH]
            # Positions handed over before the read: Redis can only be behind these after a data loss.
            before = {room: (self._rooms[room].epoch, self._rooms[room].offset) for room in batch}
            flat = await self._read_positions(batch)
            results = zip(flat[::2], flat[1::2], strict=True)
            for room, (epoch, offset) in zip(batch, results, strict=True):
                state = self._rooms.get(room)
                if state is None or not state.ready or state.backfilling or epoch is None:
                    continue
                if (_decode(epoch), state.epoch) == (before[room][0],) * 2 and int(offset) < before[room][1]:
                    state.backfilling = True
                    self._metrics.position_repairs.add(1)
                    await self._renew_epoch(room, state)
                    continue
                ahead = _decode(epoch) != state.epoch or int(offset) > state.offset
                if not ahead:
                    state.suspect = -1
                elif state.suspect == state.offset:
                    # Ahead twice in a row without progress: not a publication in flight, a lost one.
                    state.suspect = -1
                    state.backfilling = True
                    self._metrics.position_repairs.add(1)
                    await self._backfill(room, state)
                else:
                    state.suspect = state.offset
