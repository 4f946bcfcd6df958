"""Garbage in: malformed, random and hostile input never crashes the server nor disturbs anyone else.

Every case must end in one of two ways, within a few seconds:
- error replies (never a 500), and the connection stays usable: a probe command sent after the
  case is answered;
- a close with a code from the protocol table for what was sent: 4001 before `connect`, 4004 for
  a protocol violation, 1003 for a binary frame, and the WebSocket layer's own 1009 (too large),
  1007 (invalid UTF-8) and 1002 (framing violation). Never 1011, never silence.

The seeded fuzz run keeps bystander clients in a room fed by a steady publication stream and checks
that they received every publication, in order, without a gap.

Here is the garbage that needs a real server: frames the WebSocket layer refuses, raw HTTP, dropped
connections, and the fuzz run over sockets. Garbage that reaches the session (malformed JSON, bad
ids, wrong types in every field of every op, blank frames, deep nesting, binary messages) is tested
in-process: tests/inprocess/test_session_inprocess.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerFactory
from tests.support.conversation import Closed
from tests.support.garbage import (
    BYSTAND_ROOM,
    GARBAGE,
    MISSING,
    REPLY_CODES,
    TEMPLATES,
    USER,
    every_field,
    mutated,
    render,
)
from tests.support.polling import until
from tests.support.server import API_KEY, ServerProcess
from tests.support.wsclient import RawClient, token

SEED = 20261125
#: Cases the seeded run always makes, however slow the machine: the coverage does not depend on its speed.
MIN_CASES = 300
MAX_CASES = 1000
#: Seconds of fuzzing after which no more cases start beyond MIN_CASES, so a fast machine does more.
TIME_BUDGET = 25.0
#: Seconds one case may take before it counts as unanswered (only a failing case waits this long).
CASE_TIMEOUT = 45.0
#: Seconds to wait for the server's answer to a frame or case (only a failing case waits this long).
WAIT = 20.0
#: Seconds a raw frame may go without an answer (a close, or a pong) before the probe is sent regardless.
QUIET = 5.0
#: The probe's id: the largest valid one, never used by a generated case.
PROBE_ID = 2**53 - 1
FRAME_LIMIT = 65536
#: Closes the WebSocket layer enforces before the application sees the frame (no disconnect push).
TRANSPORT_CLOSES = frozenset({1002, 1007, 1009})
#: Server log lines that mean a bug: an unhandled exception anywhere, or a hubbub error.
BUG_IN_LOG = re.compile(r"ERROR hubbub\.|Exception in ASGI application|Task exception was never retrieved|Traceback")
#: uvicorn logs invalid UTF-8 from a client with a traceback; that one is the client's fault, not a bug.
EXPECTED_LOG = re.compile(r"Invalid UTF-8 sequence received from client\.")
#: The first line of a log record (hubbub's format or uvicorn's), as opposed to a traceback line.
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:|(INFO|WARNING|ERROR|DEBUG|CRITICAL):")


def server_with_room_for_garbage(server_factory: ServerFactory, **overrides: Any) -> ServerProcess:
    # No rate limit in the way: hundreds of commands on one connection are the point here.
    config: dict[str, Any] = {"command_rate": 100000, "command_burst": 100000, "ping_interval": 2, "pong_timeout": 5}
    return server_factory(**(config | overrides))


def bugs_in_log(srv: ServerProcess) -> list[str]:
    """Lines of the server log that report a bug, leaving out the expected invalid-UTF-8 report and its traceback."""
    found: list[str] = []
    in_expected_traceback = False
    for line in srv.log().splitlines():
        if EXPECTED_LOG.search(line):
            in_expected_traceback = True
            continue
        if in_expected_traceback and not LOG_RECORD.match(line):
            continue  # the traceback lines of the expected report
        in_expected_traceback = False
        if BUG_IN_LOG.search(line):
            found.append(line)
    return found


# --- outcomes -------------------------------------------------------------------------------------------


#: Outcome code of a connection still usable after the case (not a close code).
USABLE = 0
#: RFC 6455 codes for a close frame without a status, and for a TCP close without any close frame.
NO_STATUS, ABNORMAL = 1005, 1006


@dataclass
class Outcome:
    """How the server answered one case: replies to its commands, then either usable or closed."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    usable: bool = False
    #: Pongs to pings the case sent.
    pongs: int = 0
    close_code: int = ABNORMAL
    disconnect: dict[str, Any] | None = None

    @property
    def code(self) -> int:
        """USABLE, or how the connection closed."""
        return USABLE if self.usable else self.close_code


def probe_command(*, connected: bool) -> dict[str, Any]:
    """A command that gets a reply on a usable connection: `connect` before connecting, else a cheap query."""
    if connected:
        return {"id": PROBE_ID, "op": "presence_stats", "room": "chat:probe"}
    return {"id": PROBE_ID, "op": "connect", "token": token(USER)}


# --- a raw WebSocket client: frames exactly as given, valid or not ---------------------------------------


MASK_KEY = b"\x37\xfa\x21\x3d"


def ws_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    """One client frame; `length` overrides the announced payload length (the payload sent stays as given)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = (MASK_KEY * (len(payload) // 4 + 1))[: len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")
    return header + MASK_KEY + body


def text_frame(text: str) -> bytes:
    return ws_frame(0x1, text.encode())


class RawSocket:
    """A TCP connection speaking WebSocket by hand, so it can send what real clients refuse to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        key = base64.b64encode(b"hubbub-garbage!!").decode()
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def send(self, *frames: bytes) -> None:
        for data in frames:
            self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def answer(
        self, outcome: Outcome, timeout: float = WAIT, *, until_pong: bool = False, until_id: int = PROBE_ID
    ) -> Outcome:
        """Read into `outcome` until the server's close frame or TCP close, or the reply to `until_id` (the
        probe's: usable), or with `until_pong` a pong (the server has handled a ping and is still open)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    head = await self.reader.readexactly(2)
                    size = head[1] & 0x7F
                    if size == 126:
                        (size,) = struct.unpack("!H", await self.reader.readexactly(2))
                    elif size == 127:
                        (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
                    payload = await self.reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    outcome.close_code = ABNORMAL
                    return outcome
                opcode = head[0] & 0x0F
                if opcode == 0x8:
                    outcome.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else NO_STATUS
                    return outcome
                if opcode == 0xA:  # a pong to a ping the case sent
                    outcome.pongs += 1
                    if until_pong:
                        return outcome
                if opcode != 0x1:
                    continue
                for line in payload.decode().split("\n"):
                    obj = json.loads(line)
                    if obj.get("push") == "disconnect":
                        outcome.disconnect = obj
                    elif obj.get("id") == until_id:
                        outcome.usable = until_id == PROBE_ID
                        return outcome
                    elif "id" in obj:
                        outcome.replies.append(obj)

    def abort(self) -> None:
        self.writer.transport.abort()


async def raw_exchange(port: int, *frames: bytes, connect: bool = True) -> Outcome:
    """Open a raw connection, optionally `connect` properly, send `frames`; how the server answered.

    The probe follows only once the server has answered the frames and stayed open: written behind
    frames the server rejects at the WebSocket layer, it would sit unread in a socket the server
    closes, and the resulting TCP reset could reach the client before the close frame. Every frame
    these tests send earns an answer, a close or (a ping) a pong; so the probe waits for it, not for
    a moment that a loaded machine can outlast. A frame that got neither within `QUIET` seconds is
    probed anyway.
    """
    sock = await RawSocket.open(port)
    try:
        if connect:
            await sock.send(text_frame(json.dumps({"id": 1, "op": "connect", "token": token(USER)})))
        await sock.send(*frames)
        outcome = Outcome()
        try:
            await sock.answer(outcome, timeout=QUIET, until_pong=True)
        except TimeoutError:
            pass  # neither a close nor a pong
        else:
            if not outcome.pongs:
                return outcome  # closed: a close frame or the TCP connection
        await sock.send(text_frame(json.dumps(probe_command(connected=connect))))
        return await sock.answer(outcome)
    finally:
        sock.abort()


async def tcp_exchange(port: int, data: bytes, *, timeout: float = WAIT) -> bytes:
    """Send `data` and EOF on a plain TCP connection; everything the server answers until it closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(data)
        writer.write_eof()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.transport.abort()


async def probe(client: RawClient, *, connected: bool, timeout: float = WAIT) -> Outcome:
    """After a case: send a probe command, then read until its reply (still usable) or the close."""
    outcome = Outcome()
    with contextlib.suppress(ConnectionClosed):
        await client.send(probe_command(connected=connected))
    try:
        while True:
            obj = await client.recv(timeout)
            if obj.get("push") == "ping":
                with contextlib.suppress(ConnectionClosed):
                    await client.send({"op": "pong"})
            elif obj.get("id") == PROBE_ID:
                outcome.usable = True
                return outcome
            elif "id" in obj:
                outcome.replies.append(obj)
    except Closed as exc:
        outcome.close_code = ABNORMAL if exc.code is None else exc.code
        outcome.disconnect = exc.disconnect
        return outcome


def check_outcome(what: str, outcome: Outcome, allowed: frozenset[int]) -> None:
    """Error replies (never a 500) and the connection usable, or a close with a code in `allowed`."""
    for reply in outcome.replies:
        assert set(reply) in ({"id", "ok"}, {"id", "error"}), f"{what}: malformed reply {reply}"
        if "error" in reply:
            assert reply["error"]["code"] in REPLY_CODES, f"{what}: reply {reply}"
            assert isinstance(reply["error"]["reason"], str) and reply["error"]["reason"], f"{what}: {reply}"
    answer = "stayed usable" if outcome.usable else f"closed {outcome.close_code}"
    assert outcome.code in allowed, f"{what}: {answer}, expected one of {sorted(allowed)} (0: usable)"
    if outcome.code in (4001, 4004, 1003):  # closes of the application: announced by a disconnect push (rule 9)
        assert outcome.disconnect is not None and outcome.disconnect["code"] == outcome.code, (
            f"{what}: closed {outcome.code} without a disconnect push"
        )


def usable_or(*codes: int) -> frozenset[int]:
    return frozenset({USABLE, *codes})


# --- deterministic garbage below the protocol: each class has an exact answer ---------------------------


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("invalid byte", [ws_frame(0x1, b'{"id":2,"op":"join","room":"\xff"}')]),
        ("overlong encoding", [ws_frame(0x1, b'{"id":2,"op":"join","room":"\xc0\xaf"}')]),
        ("encoded surrogate", [ws_frame(0x1, b'{"id":2,"op":"join","room":"\xed\xa0\x80"}')]),
        ("truncated sequence", [ws_frame(0x1, b'{"id":2,"op":"join"}\xe2\x82')]),
        (
            "split across fragments",
            [ws_frame(0x1, b'{"id":2,"op":"join","room":"\xe2', fin=False), ws_frame(0x0, b'\xff"}')],
        ),
    ],
)
@pytest.mark.parametrize("connect", [True, False], ids=["after-connect", "before-connect"])
async def test_invalid_utf8_in_a_text_frame_closes_1007(
    server: ServerProcess, name: str, frames: list[bytes], connect: bool
) -> None:
    outcome = await raw_exchange(server.port, *frames, connect=connect)
    assert outcome.code == 1007, name


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("unmasked client frame", ws_frame(0x1, b"{}", masked=False)),
        ("reserved opcode", ws_frame(0x3, b"x")),
        ("reserved bits", ws_frame(0x1, b"{}", rsv=0b100)),
        ("control frame over 125 bytes", ws_frame(0x9, b"x" * 200)),
        ("fragmented control frame", ws_frame(0x9, b"x", fin=False)),
        ("continuation without a start", ws_frame(0x0, b"x")),
        ("new message inside a fragmented one", ws_frame(0x1, b"{", fin=False) + ws_frame(0x1, b"}")),
        ("close code out of range", ws_frame(0x8, struct.pack("!H", 999))),
        ("close frame of one byte", ws_frame(0x8, b"\x03")),
    ],
)
async def test_websocket_framing_violations_close_1002(server: ServerProcess, name: str, frame: bytes) -> None:
    outcome = await raw_exchange(server.port, frame)
    assert outcome.code == 1002, name


async def test_close_reason_with_invalid_utf8_closes_1007(server: ServerProcess) -> None:
    outcome = await raw_exchange(server.port, ws_frame(0x8, struct.pack("!H", 1000) + b"\xff"))
    assert outcome.code == 1007


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("one byte over the limit", text_frame(" " * (FRAME_LIMIT + 1))),
        ("multi-byte characters over the limit in bytes", text_frame("é" * (FRAME_LIMIT // 2 + 1))),
        ("a header announcing 2^63-1 bytes", ws_frame(0x1, b"", length=2**63 - 1)),
        ("binary over the limit", ws_frame(0x2, bytes(FRAME_LIMIT + 1))),
        ("fragments adding up over the limit", ws_frame(0x1, b" " * 40000, fin=False) + ws_frame(0x0, b" " * 40000)),
    ],
)
async def test_oversized_frames_close_1009(server: ServerProcess, name: str, frame: bytes) -> None:
    outcome = await raw_exchange(server.port, frame)
    assert outcome.code == 1009, name
    assert outcome.disconnect is None  # enforced below the application (rule 9)


async def test_a_frame_of_exactly_the_limit_is_accepted(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, USER)
    command = json.dumps({"id": 7, "op": "presence_stats", "room": "chat:limit"})
    await client.send_raw(command + " " * (FRAME_LIMIT - len(command)))
    assert "ok" in await client.reply(7)
    await client.close()


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        b"aHViYnViLWdhcmJhZ2UhIQ==\r\nSec-WebSocket-Version: 99\r\n\r\n",
        b"POST /api/publish HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nzz\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",  # a truncated handshake
        b"\r\n\r\n\r\n",
        b"",
    ],
)
async def test_http_garbage_gets_an_http_error_or_a_close(server: ServerProcess, data: bytes) -> None:
    response = await tcp_exchange(server.port, data)
    assert response == b"" or re.match(rb"HTTP/1\.1 4\d\d ", response), response[:200]
    assert httpx.get(server.http_url + "/healthz").status_code == 200


async def test_connections_dropped_mid_frame_or_mid_handshake_leave_nothing_behind(
    server_factory: ServerFactory,
) -> None:
    srv = server_with_room_for_garbage(server_factory)
    connect = text_frame(json.dumps({"id": 1, "op": "connect", "token": token(USER)}))
    join = text_frame(json.dumps({"id": 2, "op": "join", "room": "chat:mid"}))
    for cut in (1, 2, 6, 20, 500):
        sock = await RawSocket.open(srv.port)
        await sock.send(connect, join, text_frame(json.dumps({"id": 3, "data": "x" * 1000}))[:cut])
        # Dropped once the server is in the room, with the partial frame sent behind the join.
        joined = await sock.answer(Outcome(), until_id=2)
        assert [r["id"] for r in joined.replies] == [1], joined
        sock.abort()
    for cut in (5, 40, 100):
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"[:cut])
        await writer.drain()
        writer.transport.abort()
    await wait_for_internals(srv, sessions=0, hub_rooms=0, presence_rooms=0)
    assert httpx.get(srv.http_url + "/healthz").status_code == 200


async def wait_for_internals(srv: ServerProcess, **expected: int) -> None:
    def internals() -> bool:
        found = srv.api("GET", "/api/info").json()["nodes"][0]["internals"]
        actual = {key: found[key] for key in expected}
        assert actual == expected, f"internals {actual}, expected {expected}"
        return True

    await until(internals, interval=0.1, what="the gone connections' state to be freed")


# --- the seeded fuzz run, with bystanders ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One piece of garbage and the answers it may get."""

    kind: str  # "ws": a message through a real client; "frames": raw frames; "tcp": raw bytes; "drop"
    name: str
    allowed: frozenset[int]
    text: str | None = None
    data: bytes = b""
    connected: bool = True


def random_text(rng: random.Random) -> str:
    alphabet = rng.choice(
        (
            '{}[]":,0123456789.eE+-truefalsn \n\t\\',
            "".join(chr(c) for c in range(32, 127)),
            "\x00\x01\x1f\x7f\u2028\u2029\ufeff\ufffe\U0001f600é中\n",
        )
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))


def fuzz_command(rng: random.Random, command_id: int) -> dict[str, Any]:
    op = rng.choice(list(TEMPLATES))
    return mutated(op, command_id, rng.choice(every_field(op)), rng.choice((MISSING, *GARBAGE)))


def random_frame(rng: random.Random) -> tuple[bytes, frozenset[int]]:
    """A frame of a random control or reserved opcode, possibly fragmented or with reserved bits set."""
    opcode = rng.choice([0x0, 0x3, 0x7, 0xB, 0xF, 0x9, 0x8])
    payload = rng.randbytes(rng.choice([0, 1, 2, 10, 125, 126, 300]))
    allowed = {USABLE, NO_STATUS, *TRANSPORT_CLOSES}
    if opcode == 0x8 and len(payload) >= 2:
        if rng.random() < 0.5:
            payload = struct.pack("!H", rng.choice([1000, 1001, 3000, 4999])) + b"bye"
        allowed.add(struct.unpack("!H", payload[:2])[0])  # a close the server may echo
    frame = ws_frame(opcode, payload, fin=rng.random() < 0.6, rsv=rng.choice([0, 0, 0, 1, 4]))
    return frame, frozenset(allowed)


def fuzz_case(rng: random.Random, n: int) -> Case:
    """Case `n` of the seeded run: most go through a connected client, some before `connect`."""
    roll = rng.random()
    connected = rng.random() < 0.85
    violation = 4004 if connected else 4001
    if roll < 0.30:
        text = render(fuzz_command(rng, rng.randint(1, 2**53 - 2)))
        return Case("ws", f"wrong field #{n}", usable_or(violation), text=text, connected=connected)
    if roll < 0.38:
        return Case("ws", f"random text #{n}", usable_or(violation), text=random_text(rng), connected=connected)
    if roll < 0.45:
        valid = render(fuzz_command(rng, rng.randint(1, 1000)))
        text = valid[: rng.randint(0, len(valid))]
        return Case("ws", f"truncated #{n}", usable_or(violation), text=text, connected=connected)
    if roll < 0.53:
        lines = [render(fuzz_command(rng, rng.randint(1, 5))) for _ in range(rng.randint(2, 6))]
        text = rng.choice(["\n", "\r\n", "\n\n"]).join(lines)
        return Case("ws", f"batch #{n}", usable_or(violation), text=text, connected=connected)
    if roll < 0.57:
        text = rng.choice(["", "\n", "\n" * rng.randint(2, 5000), " " * rng.randint(1, 100), "\r\n"])
        return Case("ws", f"blank #{n}", frozenset({violation}), text=text, connected=connected)
    if roll < 0.62:
        command = fuzz_command(rng, 1)
        command["id"] = rng.choice([0, -1, 2**53, 10**400, 1.5, "7", None, True, [1]])
        if command["id"] is None and command["op"] == "pong":
            command["op"] = "join"
        return Case("ws", f"bad id #{n}", frozenset({violation}), text=render(command), connected=connected)
    if roll < 0.67:
        data = rng.randbytes(rng.randint(0, 2000))
        return Case("ws", f"binary #{n}", frozenset({1003 if connected else 4001}), data=data, connected=connected)
    if roll < 0.71:
        size = rng.choice([FRAME_LIMIT + 1, FRAME_LIMIT + rng.randint(2, 5000), 3 * FRAME_LIMIT])
        frame = text_frame(render(fuzz_command(rng, 1)) + " " * size)
        return Case("frames", f"oversized #{n}", frozenset({1009}), data=frame, connected=connected)
    if roll < 0.78:
        prefix = render(fuzz_command(rng, 9)).encode()[: rng.randint(0, 40)]
        bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"])
        frame = ws_frame(0x1, prefix + bad + b'"}')
        return Case("frames", f"invalid utf-8 #{n}", frozenset({1007}), data=frame, connected=connected)
    if roll < 0.84:
        frame, allowed = random_frame(rng)
        return Case("frames", f"raw frame #{n}", allowed | {violation}, data=frame, connected=connected)
    if roll < 0.92:
        data = rng.choice(
            [
                rng.randbytes(rng.randint(1, 500)),
                b"GET /ws HTTP/1.1\r\n" + rng.randbytes(rng.randint(1, 200)),
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"[: rng.randint(1, 70)],
            ]
        )
        return Case("tcp", f"tcp garbage #{n}", frozenset(), data=data)
    frame = text_frame(render(fuzz_command(rng, 3)) + " " * rng.randint(0, 3000))
    return Case("drop", f"dropped mid-frame #{n}", frozenset(), data=frame[: rng.randint(1, max(1, len(frame) - 1))])


async def run_case(srv: ServerProcess, case: Case, current: RawClient | None) -> tuple[str, RawClient | None]:
    """Run one case and check its answer; returns a summary and the connected client to reuse (None once closed)."""
    if case.kind == "tcp":
        response = await tcp_exchange(srv.port, case.data)
        assert response == b"" or re.match(rb"HTTP/1\.1 4\d\d ", response), (case.name, response[:200])
        return f"http {response[9:12].decode() if response else 'close'}", current
    if case.kind == "drop":
        sock = await RawSocket.open(srv.port)
        await sock.send(text_frame(json.dumps(probe_command(connected=False))), case.data)
        sock.abort()
        return "dropped", current
    if case.kind == "frames":
        outcome = await raw_exchange(srv.port, case.data, connect=case.connected)
        check_outcome(case.name, outcome, case.allowed)
        return f"{'usable' if outcome.usable else f'close {outcome.code}'}", current
    if not case.connected:
        client = await RawClient.open(srv.ws_url)
    else:
        client = current if current is not None else await RawClient.connected(srv.ws_url, USER)
    try:
        with contextlib.suppress(ConnectionClosed):
            await client.send_raw(case.data if case.text is None else case.text)
        outcome = await probe(client, connected=case.connected)
        check_outcome(case.name, outcome, case.allowed)
    except BaseException:
        await client.close()
        raise
    summary = "usable" if outcome.usable else f"close {outcome.code}"
    if case.connected and outcome.usable:
        return summary, client
    await client.close()
    return summary, (current if not case.connected else None)


class Bystander:
    """A client in the bystander room that reads everything, answers pings and records publications."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.offsets: list[int] = []
        self.seqs: list[int] = []
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        # The end: the test closed this client (a pong answering a ping that crossed the close fails too).
        with contextlib.suppress(Closed, ConnectionClosed):
            while True:
                obj = await self.client.recv(timeout=60)
                if obj.get("push") == "ping":
                    await self.client.send({"op": "pong"})
                elif obj.get("push") == "pub" and obj["room"] == BYSTAND_ROOM:
                    self.offsets.append(obj["offset"])
                    data = obj["data"]
                    if isinstance(data, dict) and set(data) == {"seq"}:
                        self.seqs.append(data["seq"])

    async def close(self) -> None:
        # Closing ends the reader; cancelling it instead can hang in 3.11's wait_for around websockets' recv.
        await self.client.close()
        await asyncio.wait_for(self.task, 10)


async def publish_steadily(srv: ServerProcess, stop: asyncio.Event, offsets: list[int]) -> None:
    """The bystanders' room gets a publication every 10 ms through the HTTP API until `stop`."""
    async with httpx.AsyncClient(base_url=srv.http_url, headers={"authorization": f"Bearer {API_KEY}"}) as http:
        seq = 0
        while not stop.is_set():
            response = await http.post("/api/publish", json={"room": BYSTAND_ROOM, "data": {"seq": seq}})
            assert response.status_code == 200, response.text
            offsets.append(response.json()["offset"])
            seq += 1
            await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_seeded_garbage_never_crashes_the_server_nor_disturbs_bystanders(
    server_factory: ServerFactory,
) -> None:
    srv = server_with_room_for_garbage(server_factory)
    rng = random.Random(SEED)
    bystanders: list[Bystander] = []
    stop = asyncio.Event()
    published: list[int] = []
    publisher: asyncio.Task[None] | None = None
    answers: dict[str, int] = {}
    current: RawClient | None = None
    started = time.monotonic()
    ran = 0
    try:
        for i in range(3):
            client = await RawClient.connected(srv.ws_url, f"bystander{i}")
            assert "ok" in await client.call("join", room=BYSTAND_ROOM)
            bystanders.append(Bystander(client))
        publisher = asyncio.create_task(publish_steadily(srv, stop, published))
        for n in range(MAX_CASES):
            if n >= MIN_CASES and time.monotonic() - started > TIME_BUDGET:
                break
            case = fuzz_case(rng, n)
            try:
                async with asyncio.timeout(CASE_TIMEOUT):
                    summary, current = await run_case(srv, case, current)
            except TimeoutError:
                raise AssertionError(f"{case.name}: no answer in {CASE_TIMEOUT:g} s (seed {SEED}): {case}") from None
            key = f"{case.name.split(' #')[0]}: {summary}"
            answers[key] = answers.get(key, 0) + 1
            ran += 1
            assert srv.running(), f"server died after {case.name} (seed {SEED}):\n{srv.log()[-3000:]}"
            assert not publisher.done(), f"the steady publisher failed after {case.name}"
        fuzzed = time.monotonic() - started
        stop.set()
        await publisher

        # Every bystander got every publication of the room (the steady stream and whatever the fuzz
        # published), in order, without a gap, and the steady stream's own sequence complete.
        final = srv.api("GET", f"/api/history/{BYSTAND_ROOM}?limit=0").json()["offset"]
        assert published and final >= published[-1]
        with contextlib.suppress(AssertionError):  # judged just below, where the record says what went wrong
            await until(lambda: all(len(b.offsets) >= final for b in bystanders), what="the bystanders")
        for i, bystander in enumerate(bystanders):
            assert not bystander.task.done(), f"bystander {i} stopped: {bystander.task}"
            assert bystander.offsets == list(range(1, final + 1)), f"bystander {i}: gap, duplicate or disorder"
            assert bystander.seqs == list(range(len(published))), f"bystander {i}: steady stream incomplete"
    finally:
        stop.set()
        if current is not None:
            await current.close()
        for bystander in bystanders:
            await bystander.close()
        if publisher is not None and not publisher.done():
            publisher.cancel()
            with contextlib.suppress(BaseException):
                await publisher

    assert srv.running() and httpx.get(srv.http_url + "/healthz").status_code == 200
    await wait_for_internals(srv, sessions=0, hub_rooms=0, presence_rooms=0)
    bugs = bugs_in_log(srv)
    assert not bugs, "\n".join(bugs)
    print(f"{ran} cases in {fuzzed:.1f}s (seed {SEED}), {final} publications: {dict(sorted(answers.items()))}")
