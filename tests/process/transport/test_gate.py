"""The request head's limits (hubbub.gate): a deadline, a size limit and a cap on connections still
sending one, against real `hubbub serve` processes over raw sockets, plus the pure parts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import resource
import socket
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from hubbub.app import HubbubApp
from hubbub.gate import Gate, Heads, Refusal, Tally, warning
from hubbub.settings import Settings
from hubbub.ws.connection import WebSocketConnection
from tests.conftest import ServerFactory
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient

KEY = base64.b64encode(b"hubbub-gate-test").decode()
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
).encode()
#: Half an upgrade request: what a slowloris sends before it stalls.
HALF = UPGRADE[: len(UPGRADE) // 2]
#: Seconds a legitimate client may take to connect, or /healthz to answer, while the node is under
#: attack: far below the deadlines and stalls the attacks cause, far above an idle node's milliseconds.
PROMPT = 3.0
GATE_LOG = " WARNING hubbub.gate: "


def head(size: int | None = None, *, target: str = "/ws") -> bytes:
    """An upgrade request's head, of exactly `size` bytes if given (one header padded out)."""
    request = UPGRADE.replace(b"GET /ws ", f"GET {target} ".encode())
    if size is None:
        return request + b"\r\n"
    padding = size - len(request) - 2 - len(b"X-Pad: \r\n")
    assert padding >= 0
    return request + b"X-Pad: " + b"p" * padding + b"\r\n\r\n"


def connect_raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


async def read_to_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close); TimeoutError if it does not."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def still_open(sock: socket.socket) -> bool:
    """Open, with nothing from the server waiting to be read."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # an answer or the end of the stream is waiting


def error_of(response: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON error body of an HTTP error response."""
    status_line, _, rest = response.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body)["error"]


async def healthz_in(port: int) -> float:
    """Seconds /healthz takes to answer 200 on a new connection."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"http://127.0.0.1:{port}/healthz")
    assert response.status_code == 200
    return time.monotonic() - started


async def connect_in(srv: ServerProcess) -> float:
    """Seconds a WebSocket client takes to upgrade and get its `connect` reply."""
    started = time.monotonic()
    client = await RawClient.connected(srv.ws_url, "bystander")
    elapsed = time.monotonic() - started
    await client.close()
    return elapsed


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def gate_lines(srv: ServerProcess, text: str) -> list[str]:
    return [line for line in srv.log().splitlines() if GATE_LOG in line and text in line]


# --- the deadline -----------------------------------------------------------------------------------


async def test_a_slowloris_is_closed_at_the_deadline_while_others_connect(server_factory: ServerFactory) -> None:
    """Hundreds of half-sent upgrade requests (and a few connections that send nothing) are all closed
    `handshake_timeout` after their accept, with a 408 for those that sent something; meanwhile clients
    connect and /healthz answers promptly; the log says so in one line, not one per connection."""
    timeout = 2.0
    srv = server_factory(handshake_timeout=timeout)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    stalled = min(300, soft // 4)
    with sockets() as opened:
        opened_at: list[float] = []
        for i in range(stalled + 5):
            sock = connect_raw(srv.port)
            opened_at.append(time.monotonic())
            opened.append(sock)
            if i < stalled:
                sock.sendall(HALF)
        # During the attack:
        assert await connect_in(srv) < PROMPT
        assert await healthz_in(srv.port) < PROMPT

        async def closed_after(sock: socket.socket, since: float) -> tuple[bytes, float]:
            answer = await read_to_close(sock, timeout + 20)
            return answer, time.monotonic() - since

        results = await asyncio.gather(*(closed_after(s, t) for s, t in zip(opened, opened_at, strict=True)))
    for answer, after in results[:stalled]:
        assert after >= timeout - 0.05, f"closed {after:.2f} s after the accept, before the deadline"
        status, error = error_of(answer)
        assert status == 408 and error["code"] == 408 and "2 s" in error["reason"], answer
    assert [answer for answer, _ in results[stalled:]] == [b""] * 5  # sent nothing: closed without a word
    log = srv.wait_for_log("handshake_timeout")
    lines = gate_lines(srv, "handshake_timeout")
    assert len(lines) == 1, lines  # a flood is one line (the rest is counted in the next one, a minute later)
    assert "closed " in lines[0] and "HUBBUB_HANDSHAKE_TIMEOUT" in lines[0] and "(2 s)" in lines[0]
    assert "Traceback" not in log


async def test_a_keep_alive_connection_gets_the_deadline_again_after_each_response(
    server_factory: ServerFactory,
) -> None:
    """uvicorn's keep-alive timer stops at the next request's first byte; the gate's deadline does not. A
    connection busy with complete requests for longer than the deadline is left alone."""
    timeout = 1.5
    srv = server_factory(handshake_timeout=timeout)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < timeout * 1.5:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(response.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert response.startswith(b"HTTP/1.1 200 "), response
            answered += 1
        assert answered > 1
        responded = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        answer = await asyncio.wait_for(reader.read(), timeout + 20)
        after = time.monotonic() - responded
    finally:
        writer.transport.abort()
    assert error_of(answer)[0] == 408, answer
    assert after >= timeout - 0.05


# --- the size limit ---------------------------------------------------------------------------------


async def test_headers_over_the_limit_get_431_and_a_close(server: ServerProcess) -> None:
    """20 KiB of headers (the default limit is 16 KiB), on an upgrade or on a plain request: 431 with a JSON
    error and the connection closed; a URL over the limit: 414. 15 KiB of headers still upgrade."""
    for request in (
        head(20 * 1024),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20 * 1024 + b"\r\n\r\n",
    ):
        with sockets() as opened:
            sock = connect_raw(server.port)
            opened.append(sock)
            sock.sendall(request)
            answer = await read_to_close(sock, 20)
        status, error = error_of(answer)
        assert status == 431 and error["code"] == 431, answer
        assert error["reason"] == "request line and headers larger than 16384 bytes"
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    with sockets() as opened:
        sock = connect_raw(server.port)
        opened.append(sock)
        sock.sendall(head(target="/ws?token=" + "t" * 20 * 1024))
        answer = await read_to_close(sock, 20)
    assert error_of(answer) == (414, {"code": 414, "reason": "request line longer than 16384 bytes"}), answer
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head(15 * 1024))
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.transport.abort()
    assert response.startswith(b"HTTP/1.1 101 "), response


async def test_the_limit_counts_every_byte_of_the_head_wherever_the_reads_split_it(
    server_factory: ServerFactory,
) -> None:
    """A head of exactly max_header_bytes upgrades, one byte more is refused; the same when it arrives a
    few bytes at a time; a body behind a head that fits does not count."""
    limit = 1024
    srv = server_factory(max_header_bytes=limit)
    exact, over = head(limit), head(limit + 1)
    assert (len(exact), len(over)) == (limit, limit + 1)
    for request, expected, piece in ((exact, 101, None), (over, 431, None), (exact, 101, 7), (over, 431, 7)):
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            for start in range(0, len(request), piece or len(request)):
                writer.write(request[start : start + (piece or len(request))])
                await writer.drain()
            response = await asyncio.wait_for(reader.readuntil(b"\r\n"), 20)
        finally:
            writer.transport.abort()
        assert response.startswith(f"HTTP/1.1 {expected} ".encode()), (len(request), piece, response)
    # On a keep-alive connection: a body behind a head that fits does not count, and each request's head is
    # counted from its own first byte.
    body = b'{"room": "chat:gate", "data": "' + b"x" * 4000 + b'"}'
    publish = (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-api-key\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        for request, expected in (
            (publish, 200),
            (healthz + b"X-Pad: " + b"p" * (limit - len(healthz) - 11) + b"\r\n\r\n", 200),
            (healthz + b"X-Pad: " + b"p" * (limit - len(healthz) - 10) + b"\r\n\r\n", 431),
        ):
            writer.write(request)
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert response.startswith(f"HTTP/1.1 {expected} ".encode()), (len(request), response)
            length = int(response.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.transport.abort()
    srv.wait_for_log("max_header_bytes (1024 bytes)")


async def test_a_48_mib_header_is_cut_off_without_stalling_anyone_else(server: ServerProcess) -> None:
    """The parser is fed no more than the limit: the sender is refused at once (before it could send its
    48 MiB), and other clients connect and /healthz answers promptly all along. Before the limit, the
    parser's copying stalled the node for seconds."""
    total = 48 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    sent = 0

    async def send_huge() -> None:
        nonlocal sent
        chunk = b"a" * (1024 * 1024)
        writer.write(UPGRADE + b"X-Huge: ")
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            writer.write(b"\r\n\r\n")
            await writer.drain()

    sender = asyncio.create_task(send_huge())
    try:
        worst = 0.0
        probes = 0
        while probes < 5 or not sender.done():
            worst = max(worst, await healthz_in(server.port), await connect_in(server))
            probes += 1
        try:
            answer = await asyncio.wait_for(reader.read(), 20)
        except ConnectionError:
            answer = b""  # the reset of a socket closed with unread data may overtake the 431
    finally:
        writer.transport.abort()
        await sender
    assert worst < PROMPT, f"a client waited {worst:.2f} s while the huge header arrived"
    assert sent < total, "the server read all 48 MiB"
    assert not answer.startswith(b"HTTP/1.1 101"), answer[:100]


# --- the cap ----------------------------------------------------------------------------------------


async def test_beyond_max_pending_handshakes_the_longest_waiting_is_shed(server_factory: ServerFactory) -> None:
    """With the node's file-descriptor limit only a little above the cap, 300 stalled connections never
    use it up: the longest-waiting ones are closed (503 if they sent something), the newest stay, and
    legitimate clients keep connecting."""
    cap = 50
    srv = server_factory(max_pending_handshakes=cap, handshake_timeout=120)
    in_use = len(os.listdir(f"/proc/{srv.pid}/fd"))
    _, hard = resource.prlimit(srv.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (in_use + cap + 50, hard))
    stalled = 300
    with sockets() as opened:
        for _ in range(stalled):
            sock = connect_raw(srv.port)
            sock.sendall(HALF)
            opened.append(sock)
        answers = await asyncio.gather(*(read_to_close(sock, 30) for sock in opened[: stalled - cap]))
        for answer in answers:
            # 503, or nothing if it was shed before its bytes were read (accepted in the same batch).
            assert answer == b"" or error_of(answer)[0] == 503, answer
        assert all(still_open(sock) for sock in opened[-cap:])
        assert await healthz_in(srv.port) < PROMPT
        assert await connect_in(srv) < PROMPT
        # Each of those two took a place: the oldest stalled ones went, the newest are still there.
        assert all(still_open(sock) for sock in opened[-(cap - 10) :])
    lines = await until(lambda: gate_lines(srv, "max_pending_handshakes"), what="the shedding in the log")
    assert len(lines) == 1 and "(50)" in lines[0] and "HUBBUB_MAX_PENDING_HANDSHAKES" in lines[0], lines


# --- the pure parts and the protocol in-process -------------------------------------------------------


def test_heads_keep_deadline_order_and_shed_the_oldest_beyond_the_cap() -> None:
    heads: Heads[str] = Heads(timeout=10, cap=3)
    assert heads.add("a", 0) is None and heads.add("b", 1) is None and heads.add("c", 2) is None
    assert heads.add("a", 3) is None  # renewed (a keep-alive connection's next request): now the newest
    assert heads.next_due() == 11
    assert heads.add("d", 4) == "b"  # over the cap: the one waiting longest goes
    heads.remove("c")
    assert heads.expired(12.9) == [] and len(heads) == 2
    assert heads.expired(14) == ["a", "d"] and heads.next_due() is None and "a" not in heads


def test_tally_reports_the_first_at_once_and_the_rest_once_per_interval() -> None:
    tally = Tally(interval=60)
    assert tally.note(Refusal.TIMEOUT, 40, now=0) == 40
    assert tally.note(Refusal.TIMEOUT, 100, now=1) == 0
    assert tally.note(Refusal.SHED, 1, now=2) == 1  # kinds are counted apart
    assert tally.note(Refusal.TIMEOUT, 160, now=30) == 0
    assert tally.next_due() == 60 and tally.due(59) == []
    assert tally.due(60) == [(Refusal.TIMEOUT, 260)] and tally.next_due() is None
    assert tally.note(Refusal.TIMEOUT, 1, now=61) == 0  # a new window started with that report
    assert tally.note(Refusal.TIMEOUT, 1, now=121) == 2  # no flush ran: the held one comes with the next


def test_each_warning_says_what_happened_how_often_and_what_to_change() -> None:
    settings = Settings(handshake_timeout=10, max_header_bytes=16384, max_pending_handshakes=2048)
    assert warning(Refusal.TIMEOUT, 1, settings).startswith("closed 1 connection that sent no complete request head")
    assert "raise handshake_timeout (HUBBUB_HANDSHAKE_TIMEOUT)" in warning(Refusal.TIMEOUT, 1, settings)
    assert "closed 260 connections in the last 60 s" in warning(Refusal.TIMEOUT, 260, settings, window=60)
    too_large = warning(Refusal.TOO_LARGE, 3, settings)
    assert too_large.startswith("refused 3 requests") and "(16384 bytes)" in too_large
    assert "HUBBUB_MAX_HEADER_BYTES" in too_large
    shed = warning(Refusal.SHED, 2, settings)
    assert "max_pending_handshakes (2048)" in shed and "HUBBUB_MAX_PENDING_HANDSHAKES" in shed


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture
async def gate() -> AsyncIterator[tuple[Gate, uvicorn.Config]]:
    settings = Settings(max_header_bytes=1024)
    gate = Gate(settings)
    # No node: the WebSocket connection answers 503 ("starting"), after the gate has let the head through.
    config = uvicorn.Config(HubbubApp(settings), http=gate.protocol(), ws=WebSocketConnection, log_config=None)
    config.load()
    yield gate, config


async def test_an_upgraded_connection_leaves_nothing_behind_in_the_gate(gate: tuple[Gate, uvicorn.Config]) -> None:
    """Issue 6 made established connections cheap: after the upgrade no entry, no timer, no HTTP protocol."""
    the_gate, config = gate
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    transport = FakeTransport()
    protocol.connection_made(transport)
    assert len(the_gate.heads) == 1
    protocol.data_received(head())
    assert isinstance(transport.protocol, WebSocketConnection) and len(the_gate.heads) == 0
    gone = weakref.ref(protocol)
    del protocol
    gc.collect()
    assert gone() is None


async def test_the_parser_never_sees_more_than_the_limit(gate: tuple[Gate, uvicorn.Config]) -> None:
    """6.4 MiB of one header in 64 KiB reads: the parser gets the first 1024 bytes, then a 431."""
    the_gate, config = gate
    protocol: Any = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    fed = 0
    feed = protocol.parser.feed_data

    class Parser:
        def __getattr__(self, name: str) -> Any:
            return getattr(feed.__self__, name)

        def feed_data(self, data: bytes) -> None:
            nonlocal fed
            fed += len(data)
            feed(data)

    protocol.parser = Parser()
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(UPGRADE + b"X-Huge: ")
    for _ in range(100):
        protocol.data_received(b"h" * 65536)
    assert fed == 1024 and transport.closing
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert len(the_gate.heads) == 0


async def test_the_longest_waiting_is_shed_with_a_503_if_it_sent_something() -> None:
    settings = Settings(max_pending_handshakes=2)
    config = uvicorn.Config(
        HubbubApp(settings), http=Gate(settings).protocol(), ws=WebSocketConnection, log_config=None
    )
    config.load()
    state = ServerState()
    transports = [FakeTransport() for _ in range(4)]
    for n, transport in enumerate(transports):
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
        protocol.connection_made(transport)
        if n == 0:
            protocol.data_received(HALF)
    assert [t.closing for t in transports] == [True, True, False, False]
    status, error = error_of(transports[0].written)
    assert status == 503 and error["reason"] == "too many connections are still sending their request; try again"
    assert transports[1].written == b""  # it sent nothing: there is no request to answer
