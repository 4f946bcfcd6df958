"""The embedded backend: broker, history and presence in this process's memory.

It is the default for a single node and the reference implementation the conformance suite
checks the others against. Every operation completes without awaiting, so publish,
history append and fan-out are trivially atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hubbub.backends.base import BrokerEventHandler, HistoryResult, PresenceStats, PublishResult, StreamOptions
from hubbub.protocol import Publication
from hubbub.types import ClientId, JSONObject, Room

SWEEP_INTERVAL = 10.0


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    history: deque[Publication] = field(default_factory=deque)
    idempotency: OrderedDict[str, tuple[float, PublishResult]] = field(default_factory=OrderedDict)
    touched: float = 0.0
    meta_ttl: float = 0.0
    history_ttl: float = 0.0


class MemoryEngine:
    """Implements Broker and History. One instance per node."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._streams: dict[Room, _Stream] = {}
        self._subscribed: set[Room] = set()
        self._handler: BrokerEventHandler | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    @property
    def available(self) -> bool:
        return True

    async def subscribe(self, room: Room) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: Room) -> None:
        self._subscribed.discard(room)

    def _stream(self, room: Room, options: StreamOptions, now: float) -> _Stream:
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream(epoch=secrets.token_hex(4))
        stream.touched = now
        stream.meta_ttl = options.meta_ttl
        stream.history_ttl = options.history_ttl
        return stream

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
        now = self._clock()
        stream = self._stream(room, options, now)
        if idempotency_key is not None:
            _expire_keys(stream.idempotency, now)
            seen = stream.idempotency.get(idempotency_key)
            if seen is not None:
                return PublishResult(seen[1].epoch, seen[1].offset, duplicate=True)
        stream.offset += 1
        pub = Publication(stream.offset, data, int(now * 1000), info)
        if options.history_size > 0:
            stream.history.append(pub)
            while len(stream.history) > options.history_size:
                stream.history.popleft()
        else:
            stream.history.clear()
        result = PublishResult(stream.epoch, stream.offset)
        if idempotency_key is not None:
            stream.idempotency[idempotency_key] = (now + options.idempotency_window, result)
        if room in self._subscribed and self._handler is not None:
            self._handler.on_publication(room, stream.epoch, pub)
        return result

    async def publish_join(self, room: Room, info: JSONObject) -> None:
        if room in self._subscribed and self._handler is not None:
            self._handler.on_join(room, info)

    async def publish_leave(self, room: Room, info: JSONObject) -> None:
        if room in self._subscribed and self._handler is not None:
            self._handler.on_leave(room, info)

    async def read(self, room: Room, *, since: int | None, limit: int, options: StreamOptions) -> HistoryResult:
        now = self._clock()
        stream = self._stream(room, options, now)
        _expire_history(stream, now)
        pubs = stream.history
        if since is None:
            selected = list(pubs)[-limit:] if limit else []
        else:
            selected = [p for p in pubs if p.offset > since][:limit]
        return HistoryResult(stream.epoch, stream.offset, selected)

    def sweep(self) -> None:
        """Forget expired history, idempotency keys and rooms idle past their meta TTL."""
        now = self._clock()
        for room, stream in list(self._streams.items()):
            _expire_history(stream, now)
            _expire_keys(stream.idempotency, now)
            if now - stream.touched > stream.meta_ttl and room not in self._subscribed:
                del self._streams[room]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    def __len__(self) -> int:
        return len(self._streams)


def _expire_history(stream: _Stream, now: float) -> None:
    cutoff_ms = (now - stream.history_ttl) * 1000
    history = stream.history
    while history and history[0].ts < cutoff_ms:
        history.popleft()


def _expire_keys(keys: OrderedDict[str, tuple[float, PublishResult]], now: float) -> None:
    # The window is constant per namespace, so keys expire in insertion order.
    while keys:
        first = next(iter(keys.values()))
        if first[0] > now:
            break
        keys.popitem(last=False)


class MemoryPresence:
    """Implements Presence."""

    def __init__(self) -> None:
        self._rooms: dict[Room, dict[ClientId, JSONObject]] = {}

    async def add(self, room: Room, client: ClientId, entry: JSONObject) -> None:
        self._rooms.setdefault(room, {})[client] = entry

    async def remove(self, room: Room, client: ClientId) -> None:
        clients = self._rooms.get(room)
        if clients is not None:
            clients.pop(client, None)
            if not clients:
                del self._rooms[room]

    async def get(self, room: Room) -> dict[ClientId, JSONObject]:
        return dict(self._rooms.get(room, {}))

    async def stats(self, room: Room) -> PresenceStats:
        clients = self._rooms.get(room, {})
        return PresenceStats(len(clients), len({entry.get("user") for entry in clients.values()}))

    def local_entries(self) -> int:
        # Every entry is this node's (there is no other node); one pass over the rooms, when scraped.
        return sum(len(clients) for clients in self._rooms.values())

    def __len__(self) -> int:
        return len(self._rooms)
