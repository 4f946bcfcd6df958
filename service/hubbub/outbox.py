"""A connection's outbound side: one bounded queue drained by one writer.

Everything a connection is sent (replies and pushes alike) goes through `Outbox.push`, so the
order of the queue is the order on the wire. The writer exists only while there is something
to write: an idle connection owns no task and no timer. Each write takes every message waiting
at that moment and sends them as one newline-delimited frame (capped at `MAX_BATCH_CHARS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from hubbub.codes import CloseCode
from hubbub.protocol import disconnect_push
from hubbub.types import ClientId

ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Frames stay under the default 1 MiB message limit of common client libraries.
MAX_BATCH_CHARS: Final = 256 * 1024
#: How long a closing connection may take to flush before its transport is aborted.
CLOSE_GRACE: Final = 2.0

log = logging.getLogger("hubbub.outbox")


class Outbox:
    __slots__ = (
        "_bytes",
        "_close",
        "_items",
        "_loop",
        "_max_bytes",
        "_on_overflow",
        "_send",
        "_writer",
        "client_id",
        "closed",
        "request_close",
    )

    def __init__(
        self,
        send: ASGISend,
        *,
        client_id: ClientId,
        max_bytes: int,
        on_overflow: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._send = send
        self.client_id = client_id
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._loop = loop
        self._items: list[str] = []
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._close: tuple[int, str] | None = None
        #: True once a close has been requested: nothing more is queued.
        self.closed = False
        #: How others (the hub) ask the owning session to close; set by the session.
        self.request_close: Callable[[CloseCode], None] = lambda code: None

    @property
    def pending(self) -> int:
        """Characters queued and not yet handed to the transport."""
        return self._bytes

    def push(self, text: str) -> None:
        """Queue one message. Never blocks; an over-full queue triggers `on_overflow` once."""
        if self.closed:
            return
        self._items.append(text)
        self._bytes += len(text)
        if self._bytes > self._max_bytes:
            self._on_overflow()
            return
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())

    def close(
        self, code: int, reason: str, *, reconnect: bool, notify: bool = True, drop_pending: bool = False
    ) -> None:
        """Send what is queued (unless `drop_pending`), then a `disconnect` push (if `notify`), then the close."""
        if self.closed:
            return
        if drop_pending:
            self._items.clear()
            self._bytes = 0
        if notify:
            self._items.append(disconnect_push(code, reason, reconnect))
        self.closed = True
        self._close = (code, reason)
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())
        # A peer that stopped reading keeps the transport paused forever; do not wait for it.
        self._loop.call_later(CLOSE_GRACE, self._abort_if_stuck)

    async def _write(self) -> None:
        send = self._send
        try:
            while self._items:
                items, self._items, self._bytes = self._items, [], 0
                for frame in _batches(items):
                    await send({"type": "websocket.send", "text": frame})
            if self._close is not None:
                code, reason = self._close
                await send({"type": "websocket.close", "code": code, "reason": _truncate_reason(reason)})
        except (OSError, RuntimeError):
            # The peer is gone (uvicorn raises ClientDisconnected, an OSError) or closed first; the
            # reader sees the disconnect and cleans up.
            self._items.clear()
            self._bytes = 0
        except Exception:
            # A writer must never die silently with messages queued behind it: drop the connection.
            log.exception("writer of %s failed; aborting the connection", self.client_id)
            self._items.clear()
            self._bytes = 0
            self.closed = True
            abort_transport(self._send)
        finally:
            self._writer = None

    def _abort_if_stuck(self) -> None:
        if self._writer is not None:
            log.info("aborting connection %s: close did not complete in %.0fs", self.client_id, CLOSE_GRACE)
            self._writer.cancel()
            abort_transport(self._send)

    async def wait_flushed(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(writer)


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


def _truncate_reason(reason: str) -> str:
    # A close frame's reason must fit in 123 bytes of UTF-8.
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode(errors="ignore")


def abort_transport(send: ASGISend) -> bool:
    """Drop the TCP connection under an ASGI `send`, if the server exposes it (uvicorn does).

    asyncio's `transport.close()` waits for buffered data to drain, which never happens with a
    peer that stopped reading; `abort()` frees the socket and its buffers at once.
    """
    protocol = getattr(send, "__self__", None)
    transport = getattr(protocol, "transport", None)
    abort = getattr(transport, "abort", None)
    if abort is None:
        return False
    abort()
    return True
