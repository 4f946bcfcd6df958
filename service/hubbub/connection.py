"""One WebSocket connection, as an asyncio protocol uvicorn hands the socket to after the upgrade.

This replaces uvicorn's WebSocket implementations and the ASGI interface for `/ws`: frames go
from the socket straight into the Session and from the Outbox straight to the socket. An idle
connection is this object, its Session and Outbox, and the transport — no task, no timer, no
queue, no parser generator (issue 6: memory and CPU per connection).

Inbound commands are handled in order by a task that exists only while commands are waiting
(reading pauses when too many wait). Outbound, the Outbox writes frames to the transport and
keeps what the transport cannot take yet while it is paused; reading pauses then too, so a peer
that does not read cannot make the node buffer answers to what it keeps sending (pongs above
all). docs/websocket.md says what the transport accepts and how it answers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import parse_qs

from hubbub import deflate, frames, protocol, rules
from hubbub.auth import AuthError, Principal
from hubbub.codes import CloseCode
from hubbub.metrics import HandshakeRefusal
from hubbub.ratelimit import TokenBucket, Verdict
from hubbub.refusals import REFUSALS
from hubbub.session import Session, State, log_auth_failure

if TYPE_CHECKING:
    from hubbub.node import Node

log = logging.getLogger("hubbub.connection")

#: Commands (frames) read ahead of the one being handled before reading pauses.
MAX_INBOX: Final = 32
#: How long a close handshake may take before the socket is dropped.
CLOSE_TIMEOUT: Final = 5.0
#: WebSocket pings and pongs a client may send before its `connect` succeeds; one more closes 4029.
#: (After `connect` they have a token bucket the size of the command budget, of their own.)
CONTROL_FRAMES_BEFORE_CONNECT: Final = 16


def parse_request(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (lower-case names, repeated ones joined by ", ") of an upgrade request."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, target, headers


def upgrade_token(headers: dict[str, str], query: str) -> str | None:
    """A token from `Authorization: Bearer` or the `token` query parameter."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    tokens = parse_qs(query).get("token")
    return tokens[0] if tokens else None


def http_response(status: int, reason: str, extra: str = "") -> bytes:
    body = protocol.dumps(protocol.error_body(status, reason)).encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


_PHRASES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class WebSocketConnection(asyncio.Protocol):
    """Constructed by uvicorn (`Config(ws=WebSocketConnection)`) for every upgrade request."""

    __slots__ = (
        "_close_timer",
        "_control_budget",
        "_control_frames",
        "_deflate",
        "_then",
        "_held",
        "_inbox",
        "_pong",
        "_reader",
        "_worker",
        "closed_code",
        "connections",
        "node",
        "paused",
        "session",
        "transport",
    )

    #: The session each accepted upgrade gets. A seam for tests/support/echo_server.py, which swaps in
    #: an echoing session to measure this transport with the Autobahn|Testsuite.
    session_class: ClassVar[type[Session]] = Session

    def __init__(self, config: Any, server_state: Any, app_state: Any = None, _loop: Any = None) -> None:
        self.node: Node | None = getattr(config.app, "node", None)
        if self.node is None and (metrics := getattr(config.app, "metrics", None)) is not None:
            metrics.refused("starting")  # `_handshake` refuses it (503): counted here, where the app is at hand
        self.connections: set[Any] = server_state.connections
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._reader: frames.FrameReader | None = None
        self._inbox: collections.deque[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        #: The LZ77 window (bits) this connection compresses its messages with; 0: no compression.
        self._deflate = 0
        #: True while reading is paused because too many commands wait.
        self._held = False
        #: True while the transport's buffer is over its high-water mark (reading pauses too).
        self.paused = False
        #: The payload of the latest ping not answered yet because writing is paused (sent on resume).
        self._pong: bytes | None = None
        #: Pings and pongs received before `connect`, then (created at the first one after) their budget.
        self._control_frames = 0
        self._control_budget: TokenBucket | None = None
        #: What ends the connection once the commands read before it are answered: a framing violation's
        #: close, or a binary message's (the inbox worker calls it when the inbox is empty).
        self._then: Callable[[], None] | None = None
        #: The code the connection ended with (the peer's close code, or 1006).
        self.closed_code = 1006

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self.session is None:
                self._handshake(data)
            return
        # In order, up to a violation or a close: what came before either is handled as if alone.
        for opcode, payload in reader.feed(data):
            if opcode & 0x0F == frames.TEXT:
                self._text(payload, compressed=bool(opcode & frames.COMPRESSED))
            elif opcode == frames.PING:
                self._ping(payload)
            elif opcode == frames.PONG:
                self._charge_control_frame()
            elif opcode == frames.CLOSE:
                self._peer_closed(payload)
                return
            elif opcode & 0x0F == frames.BINARY:
                self._binary()
            if self._reader is None:
                return  # this message failed the connection: the rest of the read goes unread
        if reader.error is not None:
            self._fail(reader.error.code, reader.error.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._reader = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        session, self.session = self.session, None
        if session is not None and self.node is not None:
            if self._worker is not None:
                self._worker.cancel()
            session.outbox.detach()
            self.node.loop.create_task(self.node.detach(session, self.closed_code))
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused = False
        pong, self._pong = self._pong, None
        if pong is not None and self._close_timer is None:
            self._write(frames.pong_frame(pong))
        if self.session is not None:
            self.session.outbox.flush()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while the transport takes what we write and the inbox has room; pause otherwise.

        Whatever a peer sends may need an answer (a pong, a reply, a close); a peer that does not read
        ours must not make them pile up in the transport's buffer, so it is not read either.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused or self._held:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's shutdown: close what is still open (the node has already said goodbye)."""
        if self.session is not None and self.session.close_code is None:
            self.session.close(CloseCode.DRAINING)
        elif self.session is None and self.transport is not None:
            self.transport.close()

    # --- the upgrade ---------------------------------------------------------------------------

    def _handshake(self, raw: bytes) -> None:
        node = self.node
        method, target, headers = parse_request(raw)
        path, _, query = target.partition("?")
        if node is None:
            return self._refuse(503, "the node is starting")
        if path != "/ws":
            return self._refuse(404, "WebSocket endpoint is /ws", why="not_websocket")
        if method != "GET" or "websocket" not in headers.get("upgrade", "").lower():
            return self._refuse(400, "not a WebSocket upgrade", why="not_websocket")
        if headers.get("sec-websocket-version") != "13":
            return self._refuse(
                426, "WebSocket version 13 is required", "sec-websocket-version: 13\r\n", why="not_websocket"
            )
        key = headers.get("sec-websocket-key", "")
        if not frames.valid_key(key):
            return self._refuse(400, "missing or invalid Sec-WebSocket-Key", why="not_websocket")
        origin = headers.get("origin")
        if not rules.origin_permitted(origin, headers.get("host"), node.settings):
            REFUSALS.refused(origin or "", "a WebSocket", node.settings.allowed_origins)
            return self._refuse(403, "origin not allowed: add it to the allowed_origins setting", why="origin")
        token = upgrade_token(headers, query)
        if token is None:
            self._accept(node, headers, key, None)
        else:
            # Rare (the token normally comes with `connect`), and JWKS may need the network.
            node.loop.create_task(self._authenticate(node, headers, key, token))

    async def _authenticate(self, node: Node, headers: dict[str, str], key: str, token: str) -> None:
        try:
            principal = await node.auth.authenticate(token)
        except AuthError as exc:
            node.metrics.auth_failures.add(1, {"reason": exc.reason})
            log_auth_failure(exc.reason, exc.message, where="WebSocket upgrade")
            self._refuse(401, exc.message, why="auth")
            return
        if self.transport is not None and not self.transport.is_closing():
            self._accept(node, headers, key, principal)

    def _refuse(self, status: int, reason: str, extra: str = "", *, why: HandshakeRefusal | None = None) -> None:
        """Answer the upgrade request with an error and close; `why` is counted (None: already counted)."""
        if why is not None and self.node is not None:
            self.node.metrics.refused(why)
        if self.transport is not None:
            self.transport.write(http_response(status, reason, extra))
            self.transport.close()

    def _accept(self, node: Node, headers: dict[str, str], key: str, principal: Principal | None) -> None:
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "upgrade: websocket",
            "connection: Upgrade",
            f"sec-websocket-accept: {frames.accept_key(key)}",
        ]
        if protocol.SUBPROTOCOL in offered:
            lines.append(f"sec-websocket-protocol: {protocol.SUBPROTOCOL}")
        offers = headers.get("sec-websocket-extensions")
        agreement = deflate.negotiate(offers) if offers and node.settings.permessage_deflate else None
        if agreement is not None:
            self._deflate = agreement.window_bits
            lines.append(f"sec-websocket-extensions: {agreement.answer}")
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._reader = frames.FrameReader(node.settings.max_frame_bytes, allow_compressed=agreement is not None)
        session = self.session = self.session_class(node, self, principal=principal)
        node.attach(session)  # closes it at once while draining, or over capacity

    # --- inbound -------------------------------------------------------------------------------

    def _text(self, payload: bytes, *, compressed: bool) -> None:
        session = self.session
        if session is None or session.close_code is not None:
            return
        try:
            text = self._inflate(payload).decode() if compressed else payload.decode()
        except UnicodeDecodeError:
            self._fail(frames.INVALID_DATA, "text frame is not UTF-8")
            return
        except frames.FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        if session.pong_due is not None and _has_pong(text):
            # A pong counts when it arrives, not when its turn comes: behind a long run of commands
            # (a publisher flooding a busy node) it may wait longer than pong_timeout in the inbox.
            session.pong_due = None
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(text)
        if self._worker is None:
            assert self.node is not None
            self._worker = self.node.loop.create_task(self._work(session))
        elif len(self._inbox) >= MAX_INBOX and not self._held:
            self._held = True
            self._update_reading()

    def _inflate(self, payload: bytes) -> bytes:
        assert self._reader is not None
        return deflate.decompress(payload, self._reader.max_size)

    async def _work(self, session: Session) -> None:
        inbox = self._inbox
        assert inbox is not None
        try:
            while inbox:
                text = inbox.popleft()
                await session.handle_text(text, more=bool(inbox))
                if self._held:
                    # While we hold its frames unread, a pong may be among them: the peer has proved it
                    # is alive by filling our buffer, so its heartbeat deadline waits for us.
                    session.pong_due = None
                    if len(inbox) < MAX_INBOX // 2:
                        self._held = False
                        self._update_reading()
        except Exception:
            log.exception("connection %s failed", session.client_id)
            session.close(CloseCode.INTERNAL_ERROR)
        finally:
            self._worker = None
            self._inbox = None
            then, self._then = self._then, None
            if then is not None:
                then()

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, _ = frames.parse_close(payload)
        except frames.FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self.closed_code = code if code != 1005 else 1000
        self._reader = None
        session = self.session
        if session is not None and session.close_code is None:
            # The peer started the close: answer it and end (nothing more may be sent after our close).
            session.outbox.discard()
            self._write(frames.close_frame(code if code != 1005 else 1000, ""))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error below the hubbub protocol: nothing more is read, and the connection closes with
        the RFC 6455 code once the commands read before the error are answered (their replies go first)."""
        self._reader = None
        if self._worker is not None:
            self._then = functools.partial(self._close_failed, code, reason)  # `_work` calls it when the inbox is empty
            return
        self._close_failed(code, reason)

    def _binary(self) -> None:
        """Protocol v1 has no binary messages: the session closes (1003; 4001 before `connect`), like a
        violation, after the commands read before the binary message are answered."""
        session = self.session
        if session is None:
            return
        if self._worker is not None:
            self._reader = None  # nothing after it is read, as after a violation
            self._then = session.handle_binary
            return
        session.handle_binary()

    def _close_failed(self, code: int, reason: str) -> None:
        session = self.session
        if session is None or self.transport is None:
            return
        if session.close_code is None:
            if code == frames.TOO_BIG:
                session.close(CloseCode.MESSAGE_TOO_BIG)
            else:
                # Below the application: no disconnect push (the client library reports the code).
                session.outbox.close(code, reason, reconnect=False, notify=False)
        elif self._close_timer is not None:
            self._end_unreadable()  # our close is out; its answer can no longer be read
        # (Otherwise our close is still queued: `write_close` ends the connection once it is out.)

    def _end_unreadable(self) -> None:
        """End a connection whose framing broke, once our close frame is written.

        Closing the socket at once would leave unread whatever the peer is still sending (the rest of
        a message over the limit, streamed): the kernel answers unread bytes with a reset, which can
        reach the peer before our close frame and make it drop that frame unread. So: send nothing
        more (a FIN after the close frame), read and drop what still comes, and close when the peer
        closes its side, or after CLOSE_TIMEOUT.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        # Nothing more will be written: read (and drop) even while the peer does not read ours.
        self._held = False
        if not transport.is_reading():
            transport.resume_reading()
        transport.write_eof()
        if self.node is not None and self._close_timer is None:
            self._close_timer = self.node.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def _ping(self, payload: bytes) -> None:
        if not self._charge_control_frame():
            return
        if self.paused:
            # Only the latest ping needs an answer (RFC 6455 5.5.3): one pong waits, whatever the number of pings.
            self._pong = payload
        else:
            self._write(frames.pong_frame(payload))

    def _charge_control_frame(self) -> bool:
        """Count a ping or pong against the connection's budget; False when it has none left (closing 4029).

        Before `connect`, a client that nobody has authenticated yet gets CONTROL_FRAMES_BEFORE_CONNECT;
        after, a token bucket of `command_rate` per second and `command_burst` above it, like (and apart
        from) its commands: past the burst pings are still answered; once the overdraft reaches the burst
        again, the connection closes 4029, as a command flood does.
        """
        session = self.session
        if session is None or session.close_code is not None:
            return False
        if session.state is State.CONNECTING:
            self._control_frames += 1
            if self._control_frames <= CONTROL_FRAMES_BEFORE_CONNECT:
                return True
        else:
            budget = self._control_budget
            if budget is None:
                settings = session.host.settings
                budget = self._control_budget = TokenBucket(
                    settings.command_rate, settings.command_burst, time.monotonic()
                )
            if budget.take(time.monotonic()) is not Verdict.CLOSE:
                return True
        session.host.metrics.rate_limit("control_frames")
        session.close(CloseCode.RATE_LIMITED, "rate limited: too many WebSocket pings")
        return False

    # --- outbound (the Outbox's sink) ----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_texts(self, texts: list[str]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._deflate:
            transport.writelines([_deflate_frame(text.encode(), self._deflate) for text in texts])
            return
        if len(texts) == 1:
            payload = texts[0].encode()
            transport.write(frames.header(frames.TEXT, len(payload)) + payload)
            return
        out: list[bytes] = []
        for text in texts:
            payload = text.encode()
            out.append(frames.header(frames.TEXT, len(payload)))
            out.append(payload)
        transport.writelines(out)

    def write_framed(self, wire: bytes, text: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._deflate:
            self.write_texts([text])
        else:
            transport.write(wire)

    def write_close(self, code: int, reason: str) -> None:
        """Send our close frame and give the peer CLOSE_TIMEOUT to answer before dropping the socket."""
        self._write(frames.close_frame(code, reason))
        self.closed_code = code
        if self.transport is None:
            return
        if self._reader is None:
            self._end_unreadable()  # the framing broke: no close answer can be read
        elif self.node is not None and self._close_timer is None:
            self._close_timer = self.node.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _has_pong(text: str) -> bool:
    """Whether a frame holds a pong command; cheap, before the frame is decoded in its turn.

    A pong line is tiny; a short command that merely mentions "pong" passing as one only proves
    what a pong proves: the peer is alive and reading.
    """
    return any(len(line) < 64 and '"pong"' in line for line in text.split("\n"))


def _deflate_frame(payload: bytes, window_bits: int) -> bytes:
    data = deflate.compress(payload, window_bits)
    first = 0x80 | 0x40 | frames.TEXT  # FIN, RSV1 (compressed), text
    return bytes((first,)) + frames.header(frames.TEXT, len(data))[1:] + data
