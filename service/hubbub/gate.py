"""The gate in front of every request: a deadline and a size limit for the request head (the request
line and headers, of a WebSocket upgrade or of any HTTP request), and a cap on connections still
sending one.

uvicorn reads a request head without either: 500 connections that sent half an upgrade request stayed
open indefinitely and, once they had used the node's file descriptors, nothing else could connect;
32 MiB of headers were read and upgraded; and one 48 MiB header stalled every other connection for
4.4 s, because the HTTP parser (httptools) appends each piece of a header value that arrives to what
it already holds, a quadratic copy. So:

- `handshake_timeout`: a connection must complete its request head within that many seconds of being
  accepted, or of the previous response on a keep-alive connection (uvicorn's `timeout_keep_alive`
  closes a keep-alive connection that sends nothing, but its first byte cancels that timer). At the
  deadline it is closed, with a 408 if part of a request had arrived.
- `max_header_bytes`: the bytes of a request head are counted before the parser sees them, and the
  parser is never fed more than the limit: 431 (414 while the request line has not ended), then close.
- `max_pending_handshakes`: when more connections than that are still sending their head, the one
  waiting longest is closed. Legitimate clients send their request at once and are always among the
  newest, so under a flood of stalled connections they keep connecting as long as the flood cannot
  cycle through the whole cap while one of them is in flight; refusing new connections instead would
  lock everyone out until the stalled ones time out, and the attacker simply reconnects.

Each is logged as a WARNING, at most one line per kind a minute, with counts (`Tally`), except a
deadline that closes a connection which sent nothing at all: browsers and load balancers open spare
connections that stay unused, so those are closed silently and logged at debug level only.

Cost: a connection is in the pending table (an ordered dict: the timeout is the same for all, so
insertion order is deadline order) only while it sends a head; one timer per server sweeps the
table. Once a WebSocket is upgraded, nothing here refers to it: no timer, no entry, and uvicorn drops
the HTTP protocol object.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
from collections.abc import Hashable
from typing import Any, ClassVar, Final, Generic, TypeVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hubbub.metrics import HandshakeRefusal, Metrics
from hubbub.settings import Settings
from hubbub.ws.handshake import http_response

log = logging.getLogger("hubbub.gate")

#: Seconds between two WARNING lines of one kind; what happens in between is counted in the next one.
LOG_INTERVAL: Final = 60.0

#: Seconds early a deadline may be enforced, for timers that fire a little before their time.
SLACK: Final = 0.005

#: `GatedHttpProtocol._head_left` once the head is complete, and after a refusal.
NOT_COUNTING: Final = -1
REFUSED: Final = -2

T = TypeVar("T", bound=Hashable)


class Refusal(enum.Enum):
    """What the gate did to a connection, as counted in the log."""

    #: Part of a request arrived, not all of its head (a slowloris, or a very slow client).
    TIMEOUT = "timeout"
    #: Nothing arrived: browsers and load balancers open spare connections that may stay unused.
    IDLE = "idle"
    TOO_LARGE = "too large"
    SHED = "shed"


class Heads(Generic[T]):
    """Connections still sending their request head, oldest first, each with its deadline.

    Every deadline is `timeout` after the connection was added, so insertion order is deadline order:
    adding, renewing (moving to the end) and removing are O(1), and the due ones are at the front.
    """

    __slots__ = ("_due", "cap", "timeout")

    def __init__(self, timeout: float, cap: int) -> None:
        self.timeout = timeout
        self.cap = cap
        self._due: collections.OrderedDict[T, float] = collections.OrderedDict()

    def add(self, conn: T, now: float) -> T | None:
        """Start (or restart) `conn`'s deadline; the connection to shed when that passes the cap: the oldest."""
        self._due[conn] = now + self.timeout
        self._due.move_to_end(conn)
        if len(self._due) > self.cap:
            oldest, _ = self._due.popitem(last=False)
            return oldest
        return None

    def remove(self, conn: T) -> None:
        self._due.pop(conn, None)

    def expired(self, now: float) -> list[T]:
        """Remove and return the connections whose deadline has passed, oldest first."""
        due: list[T] = []
        entries = self._due
        while entries:
            conn, deadline = next(iter(entries.items()))
            if deadline > now:
                break
            del entries[conn]
            due.append(conn)
        return due

    def next_due(self) -> float | None:
        if not self._due:
            return None
        return next(iter(self._due.values()))

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, conn: object) -> bool:
        return conn in self._due


class Tally:
    """Counts refusals by kind so that each kind is logged at most once per `interval`.

    The first refusal of a kind is reported at once; those within the next `interval` are counted and
    reported together when it ends (`due`), so a flood of any size costs one line a minute and the
    operator still learns how many.
    """

    __slots__ = ("_held", "_until", "interval")

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        #: Kind → end of its quiet window: until then its refusals are only counted.
        self._until: dict[Refusal, float] = {}
        self._held: dict[Refusal, int] = {}

    def note(self, kind: Refusal, count: int, now: float) -> int:
        """Record `count` refusals of `kind`; how many to report now (0: held for the end of the window)."""
        if now < self._until.get(kind, -math.inf):
            self._held[kind] = self._held.get(kind, 0) + count
            return 0
        self._until[kind] = now + self.interval
        return count + self._held.pop(kind, 0)

    def due(self, now: float) -> list[tuple[Refusal, int]]:
        """The held counts whose window has ended, to report now; each starts a new window."""
        reports: list[tuple[Refusal, int]] = []
        for kind in list(self._held):
            if now >= self._until[kind]:
                reports.append((kind, self._held.pop(kind)))
                self._until[kind] = now + self.interval
        return reports

    def next_due(self) -> float | None:
        """When the earliest held count is due, if any is held."""
        return min((self._until[kind] for kind in self._held), default=None)


#: What each kind counts as in hubbub_handshake_refusals_total. A connection that sent nothing is not counted:
#: spare connections of browsers and load balancers are normal (and it got no 408 either).
REASONS: Final[dict[Refusal, HandshakeRefusal]] = {
    Refusal.TIMEOUT: "handshake_timeout",
    Refusal.TOO_LARGE: "header_too_large",
    Refusal.SHED: "too_many_handshakes",
}

#: Connections that sent nothing are only logged at debug level: spare connections are normal.
LEVELS: Final = {
    Refusal.TIMEOUT: logging.WARNING,
    Refusal.IDLE: logging.DEBUG,
    Refusal.TOO_LARGE: logging.WARNING,
    Refusal.SHED: logging.WARNING,
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def warning(kind: Refusal, count: int, settings: Settings, *, window: float | None = None) -> str:
    """The log line for `count` refusals of `kind`: what happened, how many, and the setting to change.

    `window`: the seconds they were counted over (a summary line), None for the first one.
    """
    since = "" if window is None else f" in the last {window:g} s"
    if kind is Refusal.TIMEOUT:
        return (
            f"closed {_count(count, 'connection')}{since} that sent no complete request head (request line and "
            f"headers) within handshake_timeout ({settings.handshake_timeout:g} s): stalled or very slow clients, "
            "as in a slowloris attack; if legitimate clients need longer, raise handshake_timeout "
            "(HUBBUB_HANDSHAKE_TIMEOUT)"
        )
    if kind is Refusal.IDLE:
        return (
            f"closed {_count(count, 'connection')}{since} that sent nothing within handshake_timeout "
            f"({settings.handshake_timeout:g} s): spare connections of browsers and load balancers stay unused "
            "like this; a flood of them is shed by max_pending_handshakes"
        )
    if kind is Refusal.TOO_LARGE:
        return (
            f"refused {_count(count, 'request')}{since} whose request line and headers exceed max_header_bytes "
            f"({settings.max_header_bytes} bytes) with 431 (414 for a request line alone); if legitimate clients "
            "send that much (large cookies, a token in the URL), raise max_header_bytes (HUBBUB_MAX_HEADER_BYTES)"
        )
    return (
        f"closed {_count(count, 'connection')}{since} still sending its request head because more than "
        f"max_pending_handshakes ({settings.max_pending_handshakes}) were, the longest-waiting first: a flood of "
        "stalled connections; if legitimate clients are shed, raise max_pending_handshakes "
        "(HUBBUB_MAX_PENDING_HANDSHAKES) and the node's file-descriptor limit with it"
    )


class Gate:
    """The request-head limits of one server: its pending connections, their sweep timer and its log."""

    def __init__(self, settings: Settings, *, logger: logging.Logger = log, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._metrics = metrics
        self.max_header_bytes = settings.max_header_bytes
        self.heads: Heads[GatedHttpProtocol] = Heads(settings.handshake_timeout, settings.max_pending_handshakes)
        self.tally = Tally()
        self._log = logger
        #: The least time between two sweeps: a flood's deadlines are swept in batches, not one timer each.
        self._resolution = settings.timer_resolution
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._flush: asyncio.TimerHandle | None = None

    def protocol(self) -> type[GatedHttpProtocol]:
        """The protocol class for uvicorn's `Config(http=...)`, bound to this gate."""

        class Gated(GatedHttpProtocol):
            pass

        Gated.gate = self
        return Gated

    # --- called by the connections -------------------------------------------------------------

    def admit(self, conn: GatedHttpProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """`conn` now owes a request head: start its deadline, shed the oldest beyond the cap."""
        self._loop = loop
        now = loop.time()
        shed = self.heads.add(conn, now)
        if shed is not None:
            shed.shed()
            self.note(Refusal.SHED, 1)
        if self._sweep is None:
            self._arm(now)

    def release(self, conn: GatedHttpProtocol) -> None:
        """`conn` has sent its request head, or is gone."""
        self.heads.remove(conn)

    def note(self, kind: Refusal, count: int) -> None:
        reason = REASONS.get(kind)
        if reason is not None and self._metrics is not None:
            self._metrics.handshake_refusals.add(count, {"reason": reason})
        if self._loop is None:
            return
        now = self._loop.time()
        reported = self.tally.note(kind, count, now)
        if reported:
            self._log.log(LEVELS[kind], "%s", warning(kind, reported, self.settings))
        elif self._flush is None:
            due = self.tally.next_due()
            if due is not None:
                self._flush = self._loop.call_at(due, self._flush_held)

    # --- timers ----------------------------------------------------------------------------------

    def _arm(self, now: float) -> None:
        due = self.heads.next_due()
        if due is not None and self._loop is not None:
            self._sweep = self._loop.call_at(max(due, now + self._resolution), self._sweep_due)

    def _sweep_due(self) -> None:
        self._sweep = None
        assert self._loop is not None
        now = self._loop.time()
        # A timer may fire a hair before its time (uvloop counts in milliseconds): what is due within the
        # slack goes now rather than a whole resolution later.
        closed = collections.Counter(conn.expire() for conn in self.heads.expired(now + SLACK))
        for kind in (Refusal.TIMEOUT, Refusal.IDLE):
            if closed[kind]:
                self.note(kind, closed[kind])
        self._arm(now)

    def _flush_held(self) -> None:
        self._flush = None
        assert self._loop is not None
        now = self._loop.time()
        for kind, count in self.tally.due(now):
            self._log.log(LEVELS[kind], "%s", warning(kind, count, self.settings, window=self.tally.interval))
        due = self.tally.next_due()
        if due is not None:
            self._flush = self._loop.call_at(due, self._flush_held)


class GatedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the request head timed, measured and counted by `gate`.

    `_head_left` is what the current head may still use, in bytes; NOT_COUNTING once the head is
    complete (the body and the response are not the gate's business), REFUSED after a 431/414 (what
    follows is dropped unread). Counting starts at the first byte of the connection and again at the
    end of each request, so on a keep-alive connection the next head is counted from its first byte
    too; only a head that starts within the same read as the end of the previous request (pipelining)
    goes uncounted for the rest of that read: it may reach twice the limit, no more.
    """

    gate: ClassVar[Gate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_left = self.gate.max_header_bytes
        #: No line feed seen yet in the current head: an excess is in the request line (414, not 431).
        self._line_open = True
        #: Part of the current request has arrived (a deadline then earns a 408 rather than a bare close).
        self._begun = False
        self._upgraded = False
        #: A 431/414 waiting for the response being written to complete (a pipelined request was too large).
        self._refusal: tuple[int, str] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.gate.admit(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        left = self._head_left
        if left < 0:
            if left == NOT_COUNTING:
                super().data_received(data)
            return
        if self._line_open and data.find(b"\n", 0, left) >= 0:
            self._line_open = False
        if len(data) <= left:
            self._head_left = left - len(data)
            super().data_received(data)
            return
        # More than the head may still use: the parser sees only what fits. If the head ends within it,
        # the rest is the body or the next request; if not, the request is refused without reading on
        # (httptools would copy an ever longer header value over and over: the 4.4 s stall).
        self._head_left = 0
        if left:
            super().data_received(data[:left])
        if self._upgraded or self.transport.is_closing():
            return  # upgraded (uvicorn hands over only the head), or refused by the parser
        if self._head_left == 0:
            self._refuse_too_large()
        else:
            self.data_received(data[left:])

    # --- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True

    def on_headers_complete(self) -> None:
        self._head_left = NOT_COUNTING
        self._begun = False
        self.gate.release(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_left = self.gate.max_header_bytes
        self._line_open = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._refusal is not None:
            if self.cycle.response_complete:  # and no pipelined request started meanwhile
                self._close(*self._refusal)
            return
        # uvicorn now waits `timeout_keep_alive` for another request; once that one's first byte arrives,
        # only the gate's deadline bounds its head.
        if self.timeout_keep_alive_task is not None:
            self.gate.admit(self, self.loop)

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True
        super().handle_websocket_upgrade()

    # --- the gate's verdicts ---------------------------------------------------------------------

    def expire(self) -> Refusal | None:
        """The deadline passed: close, with a 408 if part of a request arrived. What it was, if still open."""
        if self.transport.is_closing():
            return None
        begun = self._begun
        timeout = self.gate.settings.handshake_timeout
        self._close(408, f"request line and headers not received within {timeout:g} s")
        return Refusal.TIMEOUT if begun else Refusal.IDLE

    def shed(self) -> None:
        """Too many connections are still sending their head and this one has waited longest."""
        if not self.transport.is_closing():
            self._close(503, "too many connections are still sending their request; try again")

    def _refuse_too_large(self) -> None:
        limit = self.gate.max_header_bytes
        self.gate.release(self)
        self._head_left = REFUSED
        self._begun = True
        self.gate.note(Refusal.TOO_LARGE, 1)
        if self._line_open:
            refusal = (414, f"request line longer than {limit} bytes")
        else:
            refusal = (431, f"request line and headers larger than {limit} bytes")
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous request's response is being written: refuse behind it, reading nothing more.
            self._refusal = refusal
            self.flow.pause_reading()
            return
        self._close(*refusal)

    def _close(self, status: int, reason: str) -> None:
        # Nothing of a response is on the wire while a head is awaited (the previous one is complete),
        # so an error response garbles nothing; without any request to answer, just close.
        if self._begun:
            self.transport.write(http_response(status, reason))
        self.transport.close()
