"""Helpers for the hubbub_client tests (no tests here): fast client settings, event recording, and a TCP
relay that can black-hole or cut the connection between a client and a real server. Waiting on a condition:
`tests.support.polling.until`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from hubbub_client import Client, ConnectError, ConnectionState, Disconnection, PresenceEvent, Rejoin, TokenRefresh
from hubbub_client.room import Room, RoomEvent
from tests.support.wsclient import token

#: Reconnect quickly in tests; the schedule itself is unit-tested with the defaults. The command timeout
#: counts the wait for a connection, which on a loaded machine may include a server's restart (several
#: seconds): generous, as it only bounds a failure. A test of the timeout sets its own.
FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.3, "drain_jitter": 0.1, "command_timeout": 30.0}


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


async def take(room: Room, count: int, timeout: float = 20.0) -> list[RoomEvent]:
    """The next `count` events of a room (publications, re-joins, presence), in order. The timeout only
    bounds a failure."""
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
        self.disconnects: list[Disconnection] = []
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
    ingress during a rollout) instead of being relayed. `accepted` counts the connections that reached it.
    `close()` returns once every connection it handled is closed, on both sides."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blackhole = False
        self.answer: bytes | None = None
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._closing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._silenced: set[asyncio.StreamWriter] = set()
        self._websockets: set[asyncio.StreamWriter] = set()
        # One task per accepted connection, created as it is accepted, so that `close()` sees it even
        # before it runs (a connection accepted while closing, or one still connecting to the server).
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _accept(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._handle(down_reader, down_writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        opened = [down_writer]
        pumps: list[asyncio.Task[None]] = []
        try:
            self._writers.add(down_writer)
            if self._closing:
                return
            if self.answer is not None:
                with contextlib.suppress(OSError):
                    await down_reader.read(65536)  # the upgrade request
                    down_writer.write(self.answer)
                    await down_writer.drain()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            opened.append(up_writer)
            self._writers.add(up_writer)
            if self._closing:  # closed (or cut) while connecting: nothing to relay
                return
            with contextlib.suppress(OSError):
                request = await down_reader.read(65536)
                if b"upgrade: websocket" in request.lower():
                    self._websockets.add(down_writer)
                up_writer.write(request)
            pumps = [
                asyncio.create_task(self._pump(down_reader, up_writer, lambda: False)),
                asyncio.create_task(
                    self._pump(up_reader, down_writer, lambda: self.blackhole or down_writer in self._silenced)
                ),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in opened:
                self._writers.discard(writer)
                self._silenced.discard(writer)
                self._websockets.discard(writer)
                writer.close()
            for writer in opened:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: Callable[[], bool]) -> None:
        with contextlib.suppress(OSError):
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
        """Stop accepting, drop every connection and wait until each one is closed: a connection to the
        server being opened meanwhile is closed as soon as it is open (no transport outlives the test)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.cut()
        while self._handlers:  # each ends once its sockets are: the cut makes their reads return
            await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 30)
        if self._server is not None:
            await self._server.wait_closed()
