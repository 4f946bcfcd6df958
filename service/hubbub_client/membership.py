"""`Membership`: the rooms a client is in, kept across connections.

It builds the `rooms` map of each `connect` (every room with its last position as `since`), applies the
re-join results (recovered or not, or failed), retries a re-join the server answered 503, and routes
`pub`/`join`/`leave` pushes to their room. Everything runs synchronously in the connection's reader,
except the 503 retries, which are tasks of the connection they belong to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

from hubbub_client.backoff import Backoff
from hubbub_client.connection import Connection
from hubbub_client.emitter import Emitter
from hubbub_client.errors import CommandRejected, ConnectionLost
from hubbub_client.events import Rejoin
from hubbub_client.models import JoinResult, JSONObject, PresenceEvent, StreamPosition
from hubbub_client.room import Room

log = logging.getLogger("hubbub_client")

#: Reply code after which a re-join is retried on the same connection (protocol rule 11).
UNAVAILABLE = 503


def ignore_reply(result: JSONObject | BaseException) -> None:
    """Reply callback for fire-and-forget commands."""


class Membership:
    def __init__(
        self,
        *,
        on_rejoin: Emitter[Rejoin],
        on_presence: Emitter[PresenceEvent],
        command_timeout: float,
        retry: Backoff,
    ) -> None:
        self.on_rejoin = on_rejoin
        self.on_presence = on_presence
        self.command_timeout = command_timeout
        self._retry = retry
        self._rooms: dict[str, Room] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def __iter__(self) -> Iterator[Room]:
        return iter(list(self._rooms.values()))

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def add(self, room: Room, result: JoinResult, since: StreamPosition | None) -> None:
        """A `join` reply arrived (in the reader): the room is in from now on."""
        self._rooms[room.name] = room
        event = room.joined(result, since)
        if event is not None:
            self.on_rejoin.emit(event)

    def remove(self, name: str) -> Room | None:
        return self._rooms.pop(name, None)

    def positions(self) -> dict[str, StreamPosition | None]:
        """Every room with the position a re-join resumes from."""
        return {name: room.position for name, room in self._rooms.items()}

    @staticmethod
    def connect_rooms(positions: dict[str, StreamPosition | None]) -> JSONObject:
        """The `rooms` parameter of `connect`."""
        return {name: ({"since": p.to_json()} if p else {}) for name, p in positions.items()}

    def rejoined(self, conn: Connection, results: object, sent: dict[str, StreamPosition | None]) -> None:
        """Apply the `rooms` of a `connect` reply (in the reader, before any push of the connection)."""
        found = results if isinstance(results, dict) else {}
        for name in sent:
            room = self._rooms.get(name)
            raw = found.get(name)
            if room is None:  # left while the connect was in flight
                if isinstance(raw, dict) and "error" not in raw:
                    conn.submit("leave", {"room": name}, ignore_reply)
                continue
            self._apply(conn, room, raw)

    def _apply(self, conn: Connection, room: Room, raw: object) -> None:
        if not isinstance(raw, dict):
            raw = {"error": {"code": 500, "reason": "the server did not re-join the room"}}
        error = raw.get("error")
        if error is None:
            self.on_rejoin.emit(room.rejoined(JoinResult.from_json(room.name, raw)))
            return
        exc = CommandRejected.from_json(error)
        if exc.code == UNAVAILABLE:
            self._spawn(self._retry_rejoin(conn, room))
            return
        self._rooms.pop(room.name, None)
        event = Rejoin(room.name, False, room.position, None, error=exc)
        room.on_rejoin.emit(event)
        self.on_rejoin.emit(event)
        room.close(exc)

    async def _retry_rejoin(self, conn: Connection, room: Room) -> None:
        """503 on a re-join: the server changed nothing; ask again with the same `since` (rule 11)."""
        retry = Backoff(self._retry.base, self._retry.cap, rng=self._retry.rng)

        def on_ok(ok: JSONObject) -> None:  # in the reader: before any pub push of the room
            if self._rooms.get(room.name) is room:
                self._apply(conn, room, ok)
            else:  # left meanwhile
                conn.submit("leave", {"room": room.name}, ignore_reply)

        while not conn.closed and self._rooms.get(room.name) is room:
            await asyncio.sleep(retry.next_delay())
            params: JSONObject = {"room": room.name}
            if room.position is not None:
                params["since"] = room.position.to_json()
            try:
                await asyncio.wait_for(conn.request("join", params, on_ok), self.command_timeout)
            except CommandRejected as exc:
                if exc.code == UNAVAILABLE:
                    continue
                if self._rooms.get(room.name) is room:
                    self._apply(conn, room, {"error": {"code": exc.code, "reason": exc.reason}})
            except TimeoutError:
                conn.abort("a re-join got no reply")  # the next connect re-joins the room
            except ConnectionLost:
                pass  # the next connect re-joins the room
            return

    def push(self, conn: Connection, obj: JSONObject) -> None:
        """A `pub`, `join` or `leave` push (in the reader)."""
        kind = obj.get("push")
        room = self._rooms.get(str(obj.get("room")))
        if room is None or not room.active:
            return
        if kind == "pub":
            if not room.publication(obj):
                conn.abort(f"gap in room {room.name} after offset {room.offset}")  # reconnect to recover
        elif kind in ("join", "leave"):
            event = PresenceEvent.from_json(obj)
            room.presence_event(event)
            self.on_presence.emit(event)
        else:
            log.debug("ignoring unknown push %r", kind)

    def disconnected(self) -> None:
        """The connection ended: its re-join retries end with it."""
        for task in list(self._tasks):
            task.cancel()

    def close_all(self, error: BaseException | None) -> None:
        self.disconnected()
        rooms, self._rooms = self._rooms, {}
        for room in rooms.values():
            room.close(error)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
