"""Helpers for the hubbub.client tests (no tests here): fast client settings, waiting, event recording,
and a TCP relay that can black-hole or cut the connection between a client and a real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from hubbub.client import Client, ConnectError, ConnectionState, Disconnect, PresenceEvent, Rejoin, TokenRefresh
from hubbub.client.room import Room, RoomEvent
from tests.support.wsclient import token

#: Reconnect quickly in tests; the schedule itself is unit-tested with the defaults.
FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.3, "drain_jitter": 0.1}


def http_answer(status: int, body: str) -> bytes:
    """A complete HTTP/1.1 response that refuses a WebSocket upgrade."""
    data = body.encode()
    head = f"HTTP/1.1 {status} Error\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + data


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def client_for(url: str, user: str | None = None, **options: Any) -> Client:
    """A client with fast reconnects and a fresh token (callback) for `user` unless `token` is given."""
    if "token" not in options:
        name = user or unique("user-")

        async def fresh_token() -> str:
            return token(name)

        options["token"] = fresh_token
    return Client(url, **{**FAST, **options})


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def take(room: Room, count: int, timeout: float = 5.0) -> list[RoomEvent]:
    """The next `count` events of a room (publications, re-joins, presence), in order."""
    events: list[RoomEvent] = []

    async def collect() -> None:
        async for event in room.events():
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return events


class Recorder:
    """Everything a client reports, in lists."""

    def __init__(self, client: Client) -> None:
        self.states: list[ConnectionState] = []
        self.disconnects: list[Disconnect] = []
        self.connect_errors: list[ConnectError] = []
        self.rejoins: list[Rejoin] = []
        self.refreshes: list[TokenRefresh] = []
        self.presence: list[PresenceEvent] = []
        client.on_state(self.states.append)
        client.on_disconnect(self.disconnects.append)
        client.on_connect_error(self.connect_errors.append)
        client.on_rejoin(self.rejoins.append)
        client.on_refresh(self.refreshes.append)
        client.on_presence(self.presence.append)


class Relay:
    """A TCP relay on 127.0.0.1 in front of a real server. `blackhole` drops the server's bytes on their way
        to the client (a silently dead connection); `silence()` does that for the WebSocket connections open
        now only (plain HTTP requests, e.g. a browser fetching a token, keep working); `cut()` drops every
        relayed connection at once. With `answer` set, new connections get those bytes (an HTTP error, as from an
    ingress during a rollout) instead of being relayed. `accepted` counts the connections that reached it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blackhole = False
        self.answer: bytes | None = None
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._silenced: set[asyncio.StreamWriter] = set()
        self._websockets: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.answer is not None:
            with contextlib.suppress(OSError):
                await down_reader.read(65536)  # the upgrade request
                down_writer.write(self.answer)
                await down_writer.drain()
            down_writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            down_writer.close()
            return
        self._writers.update((down_writer, up_writer))
        with contextlib.suppress(OSError):
            request = await down_reader.read(65536)
            if b"upgrade: websocket" in request.lower():
                self._websockets.add(down_writer)
            up_writer.write(request)
        upstream = asyncio.create_task(self._pump(down_reader, up_writer, lambda: False))
        downstream = asyncio.create_task(
            self._pump(up_reader, down_writer, lambda: self.blackhole or down_writer in self._silenced)
        )
        self._tasks.update((upstream, downstream))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
            self._tasks.discard(task)
        for writer in (down_writer, up_writer):
            self._writers.discard(writer)
            self._silenced.discard(writer)
            self._websockets.discard(writer)
            writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: Callable[[], bool]) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if not drop():
                    writer.write(data)
                    await writer.drain()

    def silence(self) -> None:
        self._silenced.update(self._websockets)

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)
