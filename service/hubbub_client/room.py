"""`Room`: one joined room on the client side: its stream position, its ordered buffer of events,
and the de-duplication that delivers each offset at most once and never goes backwards.

The client feeds a room synchronously from the connection's reader (join replies, re-join results,
pushes), so a room's buffer is always in wire order: a re-join's `Rejoin` event, then the recovered
publications, then live ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

from hubbub_client.emitter import Emitter
from hubbub_client.events import Rejoin
from hubbub_client.models import (
    JSON,
    HistoryResult,
    JoinResult,
    JSONObject,
    Message,
    Presence,
    PresenceEvent,
    PresenceStats,
    PublishResult,
    StreamPosition,
)

if TYPE_CHECKING:
    from hubbub_client.client import Client

log = logging.getLogger("hubbub_client")

#: Everything a room's `events()` iterator yields, in the order it happened.
RoomEvent: TypeAlias = Message | Rejoin | PresenceEvent


class Room:
    """A room joined through `Client.join`. Iterate it for publications: `async for pub in room: ...`.

    Attributes that change over the room's life:

    - `epoch`, `offset`: the position of the last publication delivered (or, right after a join, the
      room's newest offset at join time). Reconnects re-join with this as `since`.
    - `recovered`: None after a plain join; after a re-join (or a join with `since`) whether every missed
      publication was recovered. False means a gap the application must fill from its own backend.
    - `active`: False once the room was left, the client closed, or a re-join failed.
    """

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self.epoch: str | None = None
        self.offset = 0
        self.recovered: bool | None = None
        self.active = True
        self.error: BaseException | None = None
        self.on_publication: Emitter[Message] = Emitter("publication")
        self.on_rejoin: Emitter[Rejoin] = Emitter("rejoin")
        self.on_presence: Emitter[PresenceEvent] = Emitter("presence")
        self._buffer: deque[RoomEvent] = deque()
        self._ready = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Room {self.name} epoch={self.epoch} offset={self.offset} recovered={self.recovered}>"

    @property
    def position(self) -> StreamPosition | None:
        """Where a re-join resumes from (None before the first join reply)."""
        return None if self.epoch is None else StreamPosition(self.epoch, self.offset)

    @property
    def pending(self) -> int:
        """Events buffered and not yet taken by an iterator."""
        return len(self._buffer)

    # --- application API -----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.publications()

    async def publications(self) -> AsyncIterator[Message]:
        """Publications in offset order, each once. Ends after `leave()` or `Client.close()`; raises
        `ClientClosed` after a terminal disconnect, or the `CommandRejected` of a failed re-join.

        Other events in the buffer (re-joins, presence) are skipped: use `events()` to see them in order,
        or the `on_rejoin` callback / `recovered` attribute for the "not recovered" signal.
        """
        while True:
            event = await self._next()
            if event is None:
                return
            if isinstance(event, Message):
                yield event

    async def events(self) -> AsyncIterator[RoomEvent]:
        """Every event of the room in order: `Message`, `Rejoin` (check `recovered`), `PresenceEvent`.

        Use either this or the publication iterator: both take from the same buffer.
        """
        while True:
            event = await self._next()
            if event is None:
                return
            yield event

    async def leave(self) -> None:
        """Leave the room (nothing to do once it is no longer active)."""
        if self.active:
            await self.client.leave(self.name)

    async def publish(self, data: JSON, *, idempotency_key: str | None = None) -> PublishResult:
        return await self.client.publish(self.name, data, idempotency_key=idempotency_key)

    async def history(self, *, since: StreamPosition | None = None, limit: int | None = None) -> HistoryResult:
        return await self.client.history(self.name, since=since, limit=limit)

    async def presence(self) -> Presence:
        return await self.client.presence(self.name)

    async def presence_stats(self) -> PresenceStats:
        return await self.client.presence_stats(self.name)

    # --- fed by the client (synchronously, from the connection reader) ---------------------------

    def joined(self, result: JoinResult, since: StreamPosition | None) -> Rejoin | None:
        """Apply a `join` reply. With `since`, it is a resume: returns the `Rejoin` event to report."""
        if since is None:
            self.epoch, self.offset, self.recovered = result.epoch, result.offset, None
            return None
        self.epoch, self.offset = since.epoch, since.offset
        return self.rejoined(result)

    def rejoined(self, result: JoinResult) -> Rejoin:
        """Apply a re-join result (from `connect.rooms`, or a `join` with `since`)."""
        previous = self.position
        self.recovered = result.recovered
        if not result.recovered or self.epoch != result.epoch:
            # A gap: start over at the room's newest position. Offsets of a new epoch are a new sequence.
            self.epoch, self.offset = result.epoch, result.offset
            event = Rejoin(self.name, False, previous, self.position)
            self._put(event)
            self.on_rejoin.emit(event)
            return event
        event = Rejoin(self.name, True, previous, StreamPosition(result.epoch, max(self.offset, result.offset)))
        self._put(event)
        self.on_rejoin.emit(event)
        for pub in result.publications:
            if pub.offset > self.offset:
                self._deliver(pub)
        if result.offset > self.offset:
            log.warning("room %s: recovery stopped at %d, room offset %d", self.name, self.offset, result.offset)
            self.offset = result.offset
        return event

    def publication(self, obj: JSONObject) -> bool:
        """Apply a `pub` push. Duplicates are dropped; returns False on a gap (a missing offset), in which
        case nothing is delivered and the caller must reconnect to recover."""
        assert self.epoch is not None, "a pub push before the join reply"
        pub = Message.from_json(self.name, self.epoch, obj)
        if pub.offset <= self.offset:
            return True
        if pub.offset != self.offset + 1:
            log.warning("room %s: gap, expected offset %d, got %d", self.name, self.offset + 1, pub.offset)
            return False
        self._deliver(pub)
        return True

    def presence_event(self, event: PresenceEvent) -> None:
        self._put(event)
        self.on_presence.emit(event)

    def close(self, error: BaseException | None = None) -> None:
        """No more events: iterators finish what is buffered, then end (or raise `error`)."""
        if not self.active:
            return
        self.active = False
        self.error = error
        self._ready.set()

    # --- internals ------------------------------------------------------------------------------

    def _deliver(self, pub: Message) -> None:
        self.offset = pub.offset
        self._put(pub)
        self.on_publication.emit(pub)

    def _put(self, event: RoomEvent) -> None:
        if self.active:
            self._buffer.append(event)
            self._ready.set()

    async def _next(self) -> RoomEvent | None:
        while not self._buffer:
            if not self.active:
                if self.error is not None:
                    raise self.error
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()
