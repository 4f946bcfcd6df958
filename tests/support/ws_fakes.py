"""What the WebSocket layer's in-process tests drive it with: client frames, a fake transport, a node
of its own, and a clock that moves only when the test says so.

    connection, transport = await open_connection()
    connection.data_received(command({"id": 1, "op": "connect"}))
    await until(lambda: b'"id":1' in transport.written)

The transport is a real asyncio.Transport subclass that keeps what is written and says whether the
connection asked it to read; closing it ends the connection as asyncio does (connection_lost on the
next loop iteration), and `lose()` is the peer going away.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import os
import struct
from collections.abc import Callable, Coroutine, Iterable
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from hubbub.backends import Backends
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.loader import load_settings
from hubbub.metrics import Metrics
from hubbub.node import Node
from hubbub.ws import frames
from hubbub.ws.connection import WebSocketConnection

T = TypeVar("T")

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(target: str = "/ws", *headers: str, method: str = "GET", key: str = KEY) -> bytes:
    """An upgrade request head as uvicorn hands it over, with `headers` ("Name: value") added."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


UPGRADE = upgrade_request()


def client_frame(
    payload: bytes, opcode: int = frames.TEXT, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A frame as a client sends it: masked (unless told otherwise), the shortest length encoding."""
    first = (0x80 if fin else 0) | rsv | opcode
    masked = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes((first, masked | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, masked | 126, n)
    else:
        head = struct.pack("!BBQ", first, masked | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    # Masked here, not with frames.unmask: the frame reader's tests read these frames back.
    whole = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ whole).to_bytes(n, "big")


def command(obj: dict[str, Any]) -> bytes:
    return client_frame(json.dumps(obj).encode())


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A client's close frame."""
    return client_frame(struct.pack("!H", code) + reason, frames.CLOSE)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of every whole server frame (unmasked) in `data`."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            (length,), head = struct.unpack_from("!H", data, pos + 2), 4
        elif length == 127:
            (length,), head = struct.unpack_from("!Q", data, pos + 2), 10
        out.append((data[pos] & 0x0F, data[pos + head : pos + head + length]))
        pos += head + length
    return out


def close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


class FakeTransport(asyncio.Transport):
    """Keeps what is written; says whether the protocol asked it to read, and how it was ended."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closing = False
        self.aborted = False
        self.eof = False
        self.lost = False
        self.protocol: asyncio.BaseProtocol | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def lose(self) -> None:
        """The peer is gone (a reset, or its FIN after ours): the protocol hears of it now."""
        self.closing = True
        if not self.lost:
            self.lost = True
            protocol = self.get_protocol()
            # As asyncio's transports, which then drop the protocol: a test that holds on to a gone
            # transport does not keep its connection alive.
            self.protocol = None
            protocol.connection_lost(None)

    def _end(self) -> None:
        # As asyncio's transports: the protocol's connection_lost comes on a later loop iteration.
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.lose)

    def take_frames(self) -> list[tuple[int, bytes]]:
        """The frames written since the last call (an upgrade answer before them is skipped)."""
        data = bytes(self.written)
        self.written.clear()
        if data.startswith(b"HTTP/1.1 "):
            data = data.partition(b"\r\n\r\n")[2]
        return server_frames(data)


class ManualClock:
    """A node's loop whose timers run on a clock of their own, which moves only by `advance`.

    `ManualClock.install(node)` makes it the node's `loop`: what the node, its sessions and
    connections schedule with `call_later` / `call_at` (the close handshake's timeout, the outbox's
    grace) then waits for the test, while tasks and callbacks go to the running loop. It has only the
    loop's methods those use (an AttributeError says which one is missing).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = 0.0
        self._timers: list[tuple[asyncio.TimerHandle, Callable[..., object], tuple[Any, ...]]] = []

    @classmethod
    def install(cls, node: Node) -> ManualClock:
        clock = cls(asyncio.get_running_loop())
        node.loop = clock.as_loop()
        return clock

    def as_loop(self) -> asyncio.AbstractEventLoop:
        return cast(asyncio.AbstractEventLoop, self)  # duck-typed: the methods below are what is used

    def time(self) -> float:
        return self.now

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self.as_loop(), context)
        self._timers.append((handle, callback, args))
        return handle

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback, *args, context=context)

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        return self._loop.call_soon(callback, *args, context=context)

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, context: contextvars.Context | None = None
    ) -> asyncio.Task[T]:
        return self._loop.create_task(coro, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # a cancelled timer is skipped when its time comes

    def advance(self, seconds: float) -> None:
        """Move the clock on, and run the timers due by then, in order of time."""
        self.now += seconds
        due = sorted((t for t in self._timers if t[0].when() <= self.now), key=lambda t: t[0].when())
        for timer in due:
            self._timers.remove(timer)
            handle, callback, args = timer
            if not handle.cancelled():
                callback(*args)


def make_node(**overrides: Any) -> Node:
    """A node of its own (memory backends, development mode, anonymous `connect` allowed), not started."""
    engine = MemoryEngine()
    settings = load_settings(env={}, overrides={"mode": "development", "allow_anonymous": True, **overrides})
    return Node(settings, Backends(broker=engine, history=engine, presence=MemoryPresence()))


def make_connection(
    node: Node | None, metrics: Metrics | None = None
) -> tuple[WebSocketConnection, FakeTransport, set[WebSocketConnection]]:
    """A connection as uvicorn makes one for an app with `node` (None: still starting) and `metrics`
    (by default the node's), its transport attached; and uvicorn's set of open connections."""
    connections: set[WebSocketConnection] = set()
    if metrics is None:
        metrics = node.metrics if node is not None else Metrics("test")
    app = SimpleNamespace(node=node, metrics=metrics)
    connection = WebSocketConnection(SimpleNamespace(app=app), SimpleNamespace(connections=connections))
    transport = FakeTransport()
    transport.set_protocol(connection)
    connection.connection_made(transport)
    return connection, transport, connections


async def open_connection(node: Node | None = None) -> tuple[WebSocketConnection, FakeTransport]:
    """A connection upgraded on `node` (by default one of its own); the 101 is taken off the transport."""
    connection, transport, _ = make_connection(node if node is not None else make_node())
    connection.data_received(UPGRADE)
    assert transport.written.startswith(b"HTTP/1.1 101 "), bytes(transport.written)
    transport.take_frames()
    return connection, transport


def pong_payloads(written: list[tuple[int, bytes]]) -> list[bytes]:
    return [payload for opcode, payload in written if opcode == frames.PONG]
