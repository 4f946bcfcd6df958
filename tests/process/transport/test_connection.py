"""The WebSocket connection against a real `hubbub serve`, in raw frames: order within a read, pings,
flow control. (tests/inprocess/test_ws_connection.py drives it in-process, through a fake transport.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.ws import frames
from hubbub.ws.connection import CONTROL_FRAMES_BEFORE_CONNECT
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess
from tests.support.ws_fakes import UPGRADE, client_frame, command, pong_payloads
from tests.support.wsclient import WAIT, RawClient, token


class RawWebSocket:
    """A WebSocket client by hand: sends exactly the bytes given, reads only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawWebSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        writer.write(UPGRADE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    @classmethod
    async def connected(cls, port: int) -> RawWebSocket:
        sock = await cls.open(port)
        await sock.send(command({"id": 1, "op": "connect", "token": token("frames")}))
        assert "ok" in await sock.reply(1)
        return sock

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next server frame; (-1, b"") when the server closed TCP without one."""
        async with asyncio.timeout(timeout):
            try:
                head = await self.reader.readexactly(2)
                length = head[1] & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                return head[0] & 0x0F, await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return -1, b""

    async def until_close(self) -> tuple[list[tuple[int, bytes]], int | None]:
        """Every frame before the close, and the close code (None: TCP closed without a close frame)."""
        seen: list[tuple[int, bytes]] = []
        while True:
            opcode, payload = await self.frame()
            if opcode == -1:
                return seen, None
            if opcode == frames.CLOSE:
                return seen, struct.unpack("!H", payload[:2])[0]
            seen.append((opcode, payload))

    async def reply(self, command_id: int) -> dict[str, Any]:
        while True:
            opcode, payload = await self.frame()
            assert opcode == frames.TEXT, (opcode, payload)
            for line in payload.decode().split("\n"):
                obj: dict[str, Any] = json.loads(line)
                if obj.get("id") == command_id:
                    return obj

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def sockets() -> AsyncIterator[list[RawWebSocket]]:
    """Raw sockets the test opens, aborted when it ends."""
    opened: list[RawWebSocket] = []
    yield opened
    for sock in opened:
        sock.abort()


async def open_raw(opened: list[RawWebSocket], port: int, *, connect: bool = True) -> RawWebSocket:
    sock = await (RawWebSocket.connected(port) if connect else RawWebSocket.open(port))
    opened.append(sock)
    return sock


def texts(seen: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    return [
        json.loads(line) for opcode, payload in seen if opcode == frames.TEXT for line in payload.decode().split("\n")
    ]


@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "with-connect"])
async def test_a_command_and_a_ping_before_a_bad_frame_in_one_write_are_answered_then_1002(
    server: ServerProcess, sockets: list[RawWebSocket], connected: bool
) -> None:
    sock = await open_raw(sockets, server.port, connect=connected)
    first = {"id": 7, "op": "presence_stats", "room": "chat:frames"}
    if not connected:
        first = {"id": 7, "op": "connect", "token": token("frames")}
    await sock.send(command(first) + client_frame(b"still there?", frames.PING) + client_frame(b"x", 0x3))
    seen, code = await sock.until_close()
    assert [reply["id"] for reply in texts(seen) if "id" in reply] == [7]
    assert "ok" in texts(seen)[0]
    assert (frames.PONG, b"still there?") in seen
    assert code == 1002


@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "with-connect"])
async def test_a_command_before_a_binary_message_in_one_write_is_answered_then_closed_1003(
    server: ServerProcess, sockets: list[RawWebSocket], connected: bool
) -> None:
    sock = await open_raw(sockets, server.port, connect=connected)
    first = {"id": 7, "op": "presence_stats", "room": "chat:frames"}
    if not connected:
        first = {"id": 7, "op": "connect", "token": token("frames")}
    after = command({"id": 8, "op": "presence_stats", "room": "chat:frames"})
    await sock.send(command(first) + client_frame(b"\x00\x01", frames.BINARY) + after)
    seen, code = await sock.until_close()
    assert [reply["id"] for reply in texts(seen) if "id" in reply] == [7], "answered: the command before, not after"
    assert "ok" in texts(seen)[0]
    assert code == 1003


async def test_a_close_followed_by_garbage_in_one_write_is_answered_with_the_same_close(
    server: ServerProcess, sockets: list[RawWebSocket]
) -> None:
    sock = await open_raw(sockets, server.port)
    await sock.send(client_frame(struct.pack("!H", 1000), frames.CLOSE) + client_frame(b"x", 0x3) + b"\xff" * 64)
    _, code = await sock.until_close()
    assert code == 1000


@pytest.mark.parametrize("piece", ["fragment", "part of a frame"])
async def test_invalid_utf8_closes_1007_as_soon_as_it_arrives_not_when_the_message_ends(
    server: ServerProcess, sockets: list[RawWebSocket], piece: str
) -> None:
    """Autobahn 6.4.x: the rest of the message never comes; the server must not wait for it."""
    sock = await open_raw(sockets, server.port)
    start = b'{"id":2,"op":"presence_stats","room":"chat:\xce\xba\xf4\x90\x80\x80'
    if piece == "fragment":
        await sock.send(client_frame(start, fin=False))
    else:
        whole = client_frame(start + b'"}')
        await sock.send(whole[: len(whole) - 2])
    seen, code = await sock.until_close()
    assert (seen, code) == ([], 1007)


async def test_pings_before_connect_are_limited(server: ServerProcess, sockets: list[RawWebSocket]) -> None:
    """Nobody has authenticated the client yet: it gets CONTROL_FRAMES_BEFORE_CONNECT pings, then 4029."""
    allowed = b"".join(client_frame(b"%d" % i, frames.PING) for i in range(CONTROL_FRAMES_BEFORE_CONNECT))
    polite = await open_raw(sockets, server.port, connect=False)
    await polite.send(allowed)
    for i in range(CONTROL_FRAMES_BEFORE_CONNECT):
        assert await polite.frame() == (frames.PONG, b"%d" % i)
    await polite.send(command({"id": 1, "op": "connect", "token": token("frames")}))
    assert "ok" in await polite.reply(1)

    flooder = await open_raw(sockets, server.port, connect=False)
    await flooder.send(allowed + client_frame(b"one too many", frames.PING))
    seen, code = await flooder.until_close()
    assert pong_payloads(seen) == [b"%d" % i for i in range(CONTROL_FRAMES_BEFORE_CONNECT)]
    assert code == 4029
    assert texts(seen)[-1]["push"] == "disconnect" and texts(seen)[-1]["code"] == 4029


async def test_a_ping_flood_after_connect_is_closed_4029_like_a_command_flood(
    server: ServerProcess, sockets: list[RawWebSocket]
) -> None:
    """The test server's command budget: 200 above 100/s; the overdraft reaches the burst at the 400th ping."""
    sock = await open_raw(sockets, server.port)
    await sock.send(b"".join(client_frame(b"", frames.PING) for _ in range(1000)))
    seen, code = await sock.until_close()
    assert 200 <= len(pong_payloads(seen)) < 1000
    assert code == 4029


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


#: The flood: this many bytes of pings, or this many seconds, whichever comes first. Before the fix a
#: server answered ~57 MiB of pings per second into its own buffers, so either bound is far past the point
#: where its memory shows it.
FLOOD_BYTES = 64 * 1024 * 1024
FLOOD_SECONDS = 8.0
#: How much the server's RSS may grow meanwhile. A node that stops reading once its socket buffer is over
#: the high-water mark (64 KiB) holds at most that plus the pongs of one read (256 KiB of pings): well
#: under a MiB; the rest is room for the allocator and the bystander's traffic.
RSS_GROWTH_LIMIT = 8 * 1024 * 1024


async def test_a_client_that_floods_pings_and_never_reads_costs_the_node_neither_memory_nor_latency(
    server_factory: ServerFactory, sockets: list[RawWebSocket]
) -> None:
    # A command budget out of reach: what bounds this flood is backpressure, not the rate limit.
    srv = server_factory(command_rate=1e9, command_burst=10**9)
    bystander = await RawClient.connected(srv.ws_url, "bystander")
    flooder = await open_raw(sockets, srv.port)

    async def round_trip() -> float:
        start = time.perf_counter()
        assert "ok" in await bystander.call("presence_stats", room="chat:flood")
        return time.perf_counter() - start

    before = [await round_trip() for _ in range(30)]
    baseline = rss_bytes(srv.pid)
    peak = baseline

    # 500 pings of 125 bytes per write, numbered so the last one's pong can be told apart.
    sent = 0
    last = b""
    flooding = True

    async def flood() -> None:
        nonlocal sent, last, flooding, peak
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLOOD_SECONDS
        try:
            while sent < FLOOD_BYTES:
                chunk: list[bytes] = []
                for _ in range(500):
                    last = b"%0125d" % (sent + len(chunk))
                    chunk.append(client_frame(last, frames.PING))
                data = b"".join(chunk)
                flooder.writer.write(data)
                sent += len(data)
                peak = max(peak, rss_bytes(srv.pid))
                async with asyncio.timeout_at(deadline):
                    await flooder.writer.drain()  # blocks once the server stops reading
        except TimeoutError:
            pass
        finally:
            flooding = False

    during: list[float] = []
    flood_task = asyncio.create_task(flood())
    while flooding:
        during.append(await round_trip())
        peak = max(peak, rss_bytes(srv.pid))
    await flood_task
    peak = max(peak, rss_bytes(srv.pid))

    growth = peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB while {sent / 2**20:.0f} MiB of pings came in"
    usual, flooded = statistics.median(before), statistics.median(during)
    assert len(during) >= 10 and flooded < 3 * usual + 0.02, (
        f"bystander round trips: median {usual * 1e3:.1f} ms before, {flooded * 1e3:.1f} ms during the flood "
        f"({len(during)} of them, slowest {max(during) * 1e3:.0f} ms)"
    )

    # The flooder reads at last: its latest ping is answered (the ones it had to skip were not needed),
    # and the connection still works.
    while await flooder.frame() != (frames.PONG, last):
        pass
    await flooder.send(command({"id": 9, "op": "presence_stats", "room": "chat:flood"}))
    assert "ok" in await flooder.reply(9)
    await bystander.close()
