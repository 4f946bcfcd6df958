"""A connection's outbound side: one bounded queue, written to the socket once per loop iteration.

Everything a connection is sent (replies and pushes alike) goes through `Outbox.push`, so the
order of the queue is the order on the wire. Nothing is written from `push` itself: the node's
`Flusher` writes every outbox that received something, once, at the end of the current loop
iteration, with everything waiting in as few newline-delimited frames as possible (capped at
`MAX_BATCH_CHARS`). An idle connection owns no task, no timer and no scheduled callback. While
the socket's buffer is full (the sink is paused) messages wait here, counted against the limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from hubbub.codes import CloseCode
from hubbub.protocol import disconnect_push
from hubbub.types import ClientId

#: Frames stay under the default 1 MiB message limit of common client libraries.
MAX_BATCH_CHARS: Final = 256 * 1024
#: How long a closing connection may take to get its close frame out before the socket is dropped.
CLOSE_GRACE: Final = 2.0

log = logging.getLogger("hubbub.outbox")


class Sink(Protocol):
    """Where an outbox writes: the connection (hubbub.ws.connection.WebSocketConnection)."""

    @property
    def paused(self) -> bool: ...

    def write_texts(self, texts: list[str]) -> None: ...

    def write_framed(self, wire: bytes, text: str) -> None:
        """`text` already framed as an uncompressed text frame (`wire`), shared by many connections."""

    def write_close(self, code: int, reason: str) -> None:
        """Send a close frame (the reason is cut to the 123 bytes a close frame holds, between characters)."""

    def abort(self) -> None: ...


class Flusher:
    """Writes every outbox that got messages during this loop iteration, from one callback.

    A publication pushed to a thousand members schedules one callback, not a thousand.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._scheduled = False

    def add(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                log.exception("writing to %s failed; dropping the connection", outbox.client_id)
                outbox.fail()


class Outbox:
    __slots__ = (
        "_close",
        "_dirty",
        "_flusher",
        "_items",
        "_loop",
        "_max_bytes",
        "_on_overflow",
        "_sink",
        "_wire",
        "client_id",
        "closed",
        "pending",
        "request_close",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        client_id: ClientId,
        max_bytes: int,
        on_overflow: Callable[[], None],
        flusher: Flusher,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._sink: Sink | None = sink
        self.client_id = client_id
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._flusher = flusher
        self._loop = loop
        self._items: list[str] = []
        #: The prepared frame of the only queued item, when it came with one.
        self._wire: bytes | None = None
        #: Characters queued and not yet handed to the socket (read-only outside; a plain slot, not a property,
        #: because the node's ticker reads every connection's when it samples the queue sizes).
        self.pending = 0
        self._dirty = False
        self._close: tuple[int, str] | None = None
        #: True once a close has been requested: nothing more is queued.
        self.closed = False
        #: How others (the hub) ask the owning session to close; set by the session.
        self.request_close: Callable[[CloseCode], None] = _no_close

    def push(self, text: str, wire: bytes | None = None) -> None:
        """Queue one message (with its prepared frame, if the caller shares one). Never blocks; an
        over-full queue triggers `on_overflow` once."""
        if self.closed:
            return
        items = self._items
        self._wire = wire if not items else None
        items.append(text)
        self.pending += len(text)
        if self.pending > self._max_bytes:
            self._on_overflow()
            return
        if not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def close(
        self, code: int, reason: str, *, reconnect: bool, notify: bool = True, drop_pending: bool = False
    ) -> None:
        """Send what is queued (unless `drop_pending`), then a `disconnect` push (if `notify`), then the close."""
        if self.closed:
            return
        if drop_pending:
            self._items.clear()
            self.pending = 0
        self._wire = None
        if notify:
            self._items.append(disconnect_push(code, reason, reconnect))
        self.closed = True
        self._close = (code, reason)
        if not self._dirty:
            self._dirty = True
            self._flusher.add(self)
        # A peer that stopped reading keeps the socket paused forever; do not wait for it.
        self._loop.call_later(CLOSE_GRACE, self._abort_if_stuck)

    def flush(self) -> None:
        """Hand everything queued to the socket, unless it is paused (then `resume_writing` calls again)."""
        self._dirty = False
        sink = self._sink
        if sink is None or sink.paused:
            return
        if self._items:
            items, self._items, self.pending = self._items, [], 0
            wire, self._wire = self._wire, None
            if wire is not None and len(items) == 1:
                sink.write_framed(wire, items[0])
            else:
                sink.write_texts(_batches(items))
        if self._close is not None:
            code, reason = self._close
            self._close = None
            sink.write_close(code, reason)  # the frame cuts the reason to 123 bytes

    def discard(self) -> None:
        """The connection is ending without our close (the peer closed, or broke the framing)."""
        self.closed = True
        self._wire = None
        self._items.clear()
        self.pending = 0
        self._close = None

    def detach(self) -> None:
        """The socket is gone: nothing more can be written.

        The references back to the owning session (its bound methods) go too: they make a cycle, session
        to outbox to session, and the node's garbage collector runs its full pass rarely (hubbub.server,
        `tune_collector`), so a gone connection's session, outbox and socket buffers would wait for it;
        under reconnection churn that is thousands of dead connections held at any time.
        """
        self.discard()
        self._sink = None
        self._on_overflow = _no_overflow
        self.request_close = _no_close

    def fail(self) -> None:
        sink = self._sink
        self.detach()
        if sink is not None:
            sink.abort()

    def _abort_if_stuck(self) -> None:
        if self._close is not None and self._sink is not None:
            log.info("aborting connection %s: close did not go out in %.0fs", self.client_id, CLOSE_GRACE)
            self.fail()


def _no_overflow() -> None:
    return None


def _no_close(code: CloseCode) -> None:
    return None


def _batches(items: list[str]) -> list[str]:
    if len(items) == 1:
        return items
    frames: list[str] = []
    start = 0
    size = 0
    for i, item in enumerate(items):
        if size and size + len(item) > MAX_BATCH_CHARS:
            frames.append("\n".join(items[start:i]))
            start, size = i, 0
        size += len(item) + 1
    frames.append("\n".join(items[start:]))
    return frames
