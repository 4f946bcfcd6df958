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

**States** (`ConnectionState`; every change goes through `transition`, `TRANSITIONS` lists the legal
ones, any other raises `InvalidTransition`):

    CONNECTING ──101──▶ OPEN ──close frame sent or received──▶ CLOSING ──transport lost──▶ CLOSED
        │                 └──────────────transport lost──────────────────────────────────▶ CLOSED
        └──refused, shut down or lost before the 101───────────────────────────────────▶ CLOSED

- CONNECTING: from uvicorn's hand-over until the upgrade is answered. The only data is the request
  head; reading pauses while a token sent with it is checked (a client sends no frame before the
  101, RFC 6455 §4.1).
- OPEN: the 101 is out; frames go both ways. The session exists from here on.
- CLOSING: a close frame was sent or received (RFC 6455 §7.1.3): nothing but the close handshake is
  sent any more. After our close, the peer's frames are read for its answer, for CLOSE_TIMEOUT.
- CLOSED: the transport is gone, or the upgrade was refused with an HTTP error (no WebSocket ever
  existed: for the client too, a failed opening handshake goes from CONNECTING straight to CLOSED).

Apart from the state, `_receiving` says whether the peer's frames are still read: from the 101
until the peer's close, a violation or a binary message ends the stream, in OPEN (the replies to
the commands read before a violation still go out, then the close) as in CLOSING.

**The uvicorn hook.** uvicorn hands every upgrade to the class given as `Config(ws=...)`: it
constructs it with the keyword arguments `config`, `server_state` and `app_state`, calls
`connection_made(transport)`, then `data_received` once with the request head (which it parsed,
written out again), and makes it the transport's protocol; when the server shuts down it calls
`shutdown()` on every member of `server_state.connections`. uvicorn does not document this for
classes of its users (its own WebSocket protocols are the other implementations), so
`UvicornConfig` and `UvicornServerState` spell out what this class uses of it, pyproject.toml pins
uvicorn to the minor version it is tested with (0.54), and tests/inprocess/test_ws_connection.py drives
uvicorn's HTTP protocol through an upgrade to hold the hook to this description.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from hubbub.auth import Principal
from hubbub.codes import CloseCode
from hubbub.ratelimit import TokenBucket, Verdict
from hubbub.session import Session, State
from hubbub.ws import admission, deflate, frames, handshake
from hubbub.ws.handshake import Refusal, UpgradeRequest

if TYPE_CHECKING:
    from hubbub.metrics import Metrics
    from hubbub.node import Node

log = logging.getLogger("hubbub.ws.connection")

#: Commands (frames) read ahead of the one being handled before reading pauses.
MAX_INBOX: Final = 32
#: How long a close handshake may take before the socket is dropped.
CLOSE_TIMEOUT: Final = 5.0
#: WebSocket pings and pongs a client may send before its `connect` succeeds; one more closes 4029.
#: (After `connect` they have a token bucket the size of the command budget, of their own.)
CONTROL_FRAMES_BEFORE_CONNECT: Final = 16


class ConnectionState(enum.Enum):
    """Where a connection is in its life; the module's docstring says what each state allows."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


#: The states each state may go to; CLOSED is final.
TRANSITIONS: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.CONNECTING: frozenset({ConnectionState.OPEN, ConnectionState.CLOSED}),
    ConnectionState.OPEN: frozenset({ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A change of state that TRANSITIONS does not allow: a bug in the connection, never the peer's doing."""

    def __init__(self, current: ConnectionState, target: ConnectionState) -> None:
        super().__init__(f"a WebSocket connection cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


class HostApp(Protocol):
    """What the connection reads of uvicorn's app (hubbub.app.HubbubApp)."""

    @property
    def node(self) -> Node | None:
        """The node, once the app's start-up has made it."""

    @property
    def metrics(self) -> Metrics: ...


class UvicornConfig(Protocol):
    """What the connection reads of the `uvicorn.Config` it is constructed with."""

    @property
    def app(self) -> HostApp: ...


class ConnectionSet(Protocol):
    def add(self, connection: WebSocketConnection, /) -> None: ...

    def discard(self, connection: WebSocketConnection, /) -> None: ...


class UvicornServerState(Protocol):
    """What the connection uses of `uvicorn.server.ServerState`: the set whose members uvicorn shuts down."""

    @property
    def connections(self) -> ConnectionSet: ...


class WebSocketConnection(asyncio.Protocol):
    """Constructed by uvicorn (`Config(ws=WebSocketConnection)`) for every upgrade request."""

    __slots__ = (
        "_close_timer",
        "_control_budget",
        "_control_frames",
        "_deflate",
        "_held",
        "_inbox",
        "_pong",
        "_reader",
        "_receiving",
        "_then",
        "_worker",
        "closed_code",
        "connections",
        "node",
        "paused",
        "session",
        "state",
        "transport",
    )

    #: The session each accepted upgrade gets. A seam for tests/support/echo_server.py, which swaps in
    #: an echoing session to measure this transport with the Autobahn|Testsuite.
    session_class: ClassVar[type[Session]] = Session

    #: Set by `connection_made`, which uvicorn calls right after constructing the connection.
    transport: asyncio.Transport
    #: The session of the accepted upgrade: set from OPEN on.
    session: Session
    #: Set from OPEN on.
    _reader: frames.FrameReader

    def __init__(
        self,
        config: UvicornConfig,
        server_state: UvicornServerState,
        app_state: object = None,
        _loop: object = None,
    ) -> None:
        #: The node this upgrade is for; None while the app is starting (the upgrade is refused, 503).
        self.node = config.app.node
        if self.node is None:
            config.app.metrics.refused("starting")  # counted here, where the app is at hand
        self.connections = server_state.connections
        self.state = ConnectionState.CONNECTING
        #: Whether the peer's frames are read and handled: from the 101 until the stream ends.
        self._receiving = False
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

    def transition(self, target: ConnectionState) -> None:
        """Go to `target`; InvalidTransition unless TRANSITIONS allows it from the current state."""
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.state, target)
        self.state = target

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._receiving:
            if self.state is ConnectionState.CONNECTING:
                self._handshake(data)
            return  # the stream has ended: what still comes is dropped unread
        reader = self._reader
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
            if not self._receiving:
                return  # this message failed the connection: the rest of the read goes unread
        if reader.error is not None:
            self._fail(reader.error.code, reader.error.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._receiving = False
        was = self.state
        if was is ConnectionState.CLOSED:
            return  # refused (or shut down) before the 101: nothing was opened
        self.transition(ConnectionState.CLOSED)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if was is not ConnectionState.CONNECTING:
            session = self.session
            if self._worker is not None:
                self._worker.cancel()
            session.outbox.detach()
            node = self.node
            if node is not None:  # always, once a session exists: the upgrade is refused while starting
                node.loop.create_task(node.detach(session, self.closed_code))

    def pause_writing(self) -> None:
        self.paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused = False
        pong, self._pong = self._pong, None
        state = self.state
        if pong is not None and state is ConnectionState.OPEN:
            self._write(frames.pong_frame(pong))
        if state is ConnectionState.OPEN or state is ConnectionState.CLOSING:
            self.session.outbox.flush()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while the transport takes what we write and the inbox has room; pause otherwise.

        Whatever a peer sends may need an answer (a pong, a reply, a close); a peer that does not read
        ours must not make them pile up in the transport's buffer, so it is not read either.
        """
        transport = self.transport
        if transport.is_closing():
            return
        if self.paused or self._held:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's shutdown: close what is still open (the node has already said goodbye)."""
        state = self.state
        if state is ConnectionState.CONNECTING:
            self.transition(ConnectionState.CLOSED)
            self.transport.close()
        elif state is ConnectionState.OPEN and self.session.close_code is None:
            self.session.close(CloseCode.DRAINING)

    # --- the upgrade ---------------------------------------------------------------------------

    def _handshake(self, raw: bytes) -> None:
        request = handshake.parse_request(raw)
        node = self.node
        if node is None:
            return self._refuse(admission.STARTING)
        refusal = handshake.check_upgrade(request) or admission.check_origin(request, node)
        if refusal is not None:
            return self._refuse(refusal)
        token = admission.upgrade_token(request)
        if token is None:
            self._accept(node, request, None)
        else:
            # Rare (the token normally comes with `connect`), and JWKS may need the network. Nothing is
            # read meanwhile: what a client sends before the 101 is for after it (RFC 6455 §4.1).
            self.transport.pause_reading()
            node.loop.create_task(self._authenticate(node, request, token))

    async def _authenticate(self, node: Node, request: UpgradeRequest, token: str) -> None:
        verdict = await admission.authenticate(node, token)
        if isinstance(verdict, Refusal):
            self._refuse(verdict)
        elif self.state is ConnectionState.CONNECTING:  # not lost, nor shut down, meanwhile
            self._accept(node, request, verdict)

    def _refuse(self, refusal: Refusal) -> None:
        """Answer the upgrade request with an HTTP error and close; `refusal.why` is counted."""
        if refusal.why is not None and self.node is not None:
            self.node.metrics.refused(refusal.why)
        if self.state is not ConnectionState.CONNECTING:
            return  # lost, or shut down, while its token was checked
        self.transition(ConnectionState.CLOSED)
        self.transport.write(handshake.refusal_response(refusal))
        self.transport.close()

    def _accept(self, node: Node, request: UpgradeRequest, principal: Principal | None) -> None:
        settings = node.settings
        answer, agreement = handshake.accept(request, permessage_deflate=settings.permessage_deflate)
        self.transport.write(answer)
        if agreement is not None:
            self._deflate = agreement.window_bits
        self._reader = frames.FrameReader(settings.max_frame_bytes, allow_compressed=agreement is not None)
        self._receiving = True
        session = self.session = self.session_class(node, self, principal=principal)
        self.transition(ConnectionState.OPEN)
        self._update_reading()  # resumes reading if it paused for the token
        node.attach(session)  # closes it at once while draining (1012), or over capacity (1013)

    # --- inbound -------------------------------------------------------------------------------

    def _text(self, payload: bytes, *, compressed: bool) -> None:
        session = self.session
        if session.close_code is not None:
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
            self._worker = session.host.loop.create_task(self._work(session))
        elif len(self._inbox) >= MAX_INBOX and not self._held:
            self._held = True
            self._update_reading()

    def _inflate(self, payload: bytes) -> bytes:
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
        self._receiving = False
        session = self.session
        if session.close_code is None:
            # The peer started the close: answer it and end (nothing more may be sent after our close).
            session.outbox.discard()
            self._write(frames.close_frame(self.closed_code, ""))
        if self.state is ConnectionState.OPEN:
            self.transition(ConnectionState.CLOSING)
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error below the hubbub protocol: nothing more is read, and the connection closes with
        the RFC 6455 code once the commands read before the error are answered (their replies go first)."""
        self._receiving = False
        if self._worker is not None:
            self._then = functools.partial(self._close_failed, code, reason)  # `_work` calls it when the inbox is empty
            return
        self._close_failed(code, reason)

    def _binary(self) -> None:
        """Protocol v1 has no binary messages: the session closes (1003; 4001 before `connect`), like a
        violation, after the commands read before the binary message are answered."""
        session = self.session
        if self._worker is not None:
            self._receiving = False  # nothing after it is read, as after a violation
            self._then = session.handle_binary
            return
        session.handle_binary()

    def _close_failed(self, code: int, reason: str) -> None:
        state = self.state
        if state is ConnectionState.CLOSED:
            return  # lost while the commands before the violation were handled
        session = self.session
        if session.close_code is None:
            if code == frames.TOO_BIG:
                session.close(CloseCode.MESSAGE_TOO_BIG)
            else:
                # Below the application: no disconnect push (the client library reports the code).
                session.outbox.close(code, reason, reconnect=False, notify=False)
        elif state is ConnectionState.CLOSING:
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
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        # Nothing more will be written: read (and drop) even while the peer does not read ours.
        self._held = False
        if not transport.is_reading():
            transport.resume_reading()
        transport.write_eof()
        if self._close_timer is None:
            self._close_timer = self.session.host.loop.call_later(CLOSE_TIMEOUT, self.abort)

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
        if session.close_code is not None:
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
        if not self.transport.is_closing():
            self.transport.write(data)

    def write_texts(self, texts: list[str]) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self._deflate:
            transport.writelines([deflate.text_frame(text.encode(), self._deflate) for text in texts])
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
        if transport.is_closing():
            return
        if self._deflate:
            self.write_texts([text])
        else:
            transport.write(wire)

    def write_close(self, code: int, reason: str) -> None:
        """Send our close frame and give the peer CLOSE_TIMEOUT to answer before dropping the socket."""
        self._write(frames.close_frame(code, reason))
        self.closed_code = code
        if self.state is ConnectionState.OPEN:
            self.transition(ConnectionState.CLOSING)
        if not self._receiving:
            self._end_unreadable()  # the framing broke: no close answer can be read
        elif self._close_timer is None:
            self._close_timer = self.session.host.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        self.transport.abort()


def _has_pong(text: str) -> bool:
    """Whether a frame holds a pong command; cheap, before the frame is decoded in its turn.

    A pong line is tiny; a short command that merely mentions "pong" passing as one only proves
    what a pong proves: the peer is alive and reading.
    """
    return any(len(line) < 64 and '"pong"' in line for line in text.split("\n"))
