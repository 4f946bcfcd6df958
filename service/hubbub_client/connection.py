"""`Connection`: one WebSocket to the server and the command/reply bookkeeping on it.

It sends commands (batched into newline-delimited frames below the server's frame limit), splits
inbound frames into JSON objects, routes replies to their callbacks by id, answers pings, records the
server's `disconnect` push, and declares the connection dead when nothing arrives for the idle timeout.
It knows nothing of rooms or reconnects: pushes go to `on_push`, the end goes to `on_close`.
Callbacks run synchronously in the reader, in wire order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from hubbub_client.errors import CommandRejected, ConnectionLost
from hubbub_client.models import JSONObject
from hubbub_client.wire import SUBPROTOCOL, dumps, loads

log = logging.getLogger("hubbub_client")

#: A command's outcome: the `ok` payload, a `CommandRejected`, or `ConnectionLost`.
ReplyCallback = Callable[[JSONObject | BaseException], None]

#: Seconds the closing handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Closure:
    """How a connection ended. `code` is None without a close code (network error, local abort).
    `terminal` marks an end after which reconnecting cannot help, whatever the code."""

    code: int | None
    reason: str
    server_reconnect: bool | None = None
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """The server answered the WebSocket upgrade with an HTTP status instead of 101."""

    status: int
    body: str  # the response body as text (undecodable bytes replaced), not bounded here

    @property
    def message(self) -> str:
        """What the body says, in one short line: hubbub's `{"error": {"reason": ...}}`, an HTML page's
        title (a proxy's error page), or the text itself; empty without a body."""
        text = self.body.strip()
        try:
            obj = loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            reason = obj["error"].get("reason")
            if isinstance(reason, str):
                text = reason
        elif text.startswith("<"):
            title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
            if title is not None:
                text = title.group(1)
        text = " ".join(text.split())
        return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


#: Characters of a refusal's body shown in messages and logs.
_MESSAGE_CHARS = 200


def refusal(exc: BaseException) -> Refusal | None:
    """The HTTP refusal behind a failed open, or None if the open failed otherwise."""
    if not isinstance(exc, InvalidStatus):
        return None
    response = exc.response
    return Refusal(response.status_code, bytes(response.body).decode("utf-8", "replace"))


def describe(exc: BaseException) -> str:
    """A failed open in a few words, for logs and errors: these are expected network failures, and a
    traceback would hide the one line that matters."""
    refused = refusal(exc)
    if refused is not None:
        return f"HTTP {refused.status}: {refused.message}" if refused.message else f"HTTP {refused.status}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, InvalidMessage) and exc.__cause__ is not None:
        return f"{exc} ({describe(exc.__cause__)})"
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("Multiple exceptions"):
        return exc.strerror[:1].lower() + exc.strerror[1:]  # "Connection reset by peer" mid-sentence
    return str(exc) or type(exc).__name__


def split_frame(text: str) -> list[JSONObject]:
    """The JSON objects of one text frame (newline-delimited, blank lines ignored). Raises ValueError."""
    objects: list[JSONObject] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        obj = loads(line)
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {line[:80]!r}")
        objects.append(obj)
    return objects


class Connection:
    def __init__(
        self,
        *,
        on_push: Callable[[Connection, JSONObject], None],
        on_close: Callable[[Closure], None],
        on_ping: Callable[[], None] | None = None,
        max_frame_bytes: int = 65536,
    ) -> None:
        self._on_push = on_push
        self._on_close = on_close
        self._on_ping = on_ping
        self._max_frame_bytes = max_frame_bytes
        self._ws: ClientConnection | None = None
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._pending: dict[int, ReplyCallback] = {}
        self._outgoing: list[tuple[str, int]] = []
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._idle_timeout: float | None = None
        self._last_received = self._loop.time()
        self._disconnect_push: JSONObject | None = None
        self._abort_reason: str | None = None
        self._closed: asyncio.Future[Closure] = self._loop.create_future()

    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def open(self, url: str, *, open_timeout: float, options: Mapping[str, Any]) -> None:
        """Open the WebSocket (raises OSError, TimeoutError or a websockets error) and start reading."""
        kwargs: dict[str, Any] = {
            "subprotocols": [Subprotocol(SUBPROTOCOL)],
            "open_timeout": open_timeout,
            "ping_interval": None,  # the protocol's own heartbeat is used (§6)
            "close_timeout": CLOSE_TIMEOUT,
            "max_size": None,
        }
        kwargs.update(options)
        self._ws = await connect(url, **kwargs)
        self._last_received = self._loop.time()
        self._reader = self._loop.create_task(self._read())

    # --- sending -------------------------------------------------------------------------------

    def submit(self, op: str, params: JSONObject, callback: ReplyCallback) -> None:
        """Send a command; `callback` gets its outcome exactly once (ConnectionLost if the connection ends)."""
        if self.closed or self._ws is None:
            callback(ConnectionLost("the connection is closed"))
            return
        command_id = self._next_id + 1
        encoded = self._encode({"id": command_id, "op": op, **params})  # may raise CommandRejected(413)
        self._next_id = command_id
        self._pending[command_id] = callback
        self._enqueue(encoded)

    def request(
        self, op: str, params: JSONObject, on_ok: Callable[[JSONObject], None] | None = None
    ) -> asyncio.Future[JSONObject]:
        """Send a command; the future resolves with the `ok` payload or fails with `CommandRejected` /
        `ConnectionLost`. `on_ok` runs synchronously in the reader when the ok reply arrives, even if the
        future was cancelled meanwhile, before any later message is handled."""
        future: asyncio.Future[JSONObject] = self._loop.create_future()

        def done(result: JSONObject | BaseException) -> None:
            if not isinstance(result, BaseException) and on_ok is not None:
                try:
                    on_ok(result)
                except Exception as exc:
                    result = exc
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.submit(op, params, done)
        return future

    def send(self, obj: JSONObject) -> None:
        """Queue one message for the writer (no reply expected unless it carries an id)."""
        if self.closed or self._ws is None:
            return
        self._enqueue(self._encode(obj))

    def _encode(self, obj: JSONObject) -> tuple[str, int]:
        text = dumps(obj)
        size = len(text.encode())
        if size > self._max_frame_bytes:
            raise CommandRejected(413, f"command of {size} bytes is above the frame limit of {self._max_frame_bytes}")
        return text, size

    def _enqueue(self, encoded: tuple[str, int]) -> None:
        self._outgoing.append(encoded)
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        assert self._ws is not None
        try:
            while self._outgoing:
                batch: list[str] = []
                total = 0
                while self._outgoing and (not batch or total + self._outgoing[0][1] + 1 <= self._max_frame_bytes):
                    text, size = self._outgoing.pop(0)
                    batch.append(text)
                    total += size + 1
                await self._ws.send("\n".join(batch))
        except ConnectionClosed:
            self._outgoing.clear()  # the reader sees the close and fails what is pending
        finally:
            self._writer = None

    # --- receiving -----------------------------------------------------------------------------

    def set_idle_timeout(self, seconds: float) -> None:
        """Declare the connection dead (and abort it) when nothing arrives for `seconds`."""
        self._idle_timeout = seconds
        if self._watchdog is None and not self.closed:
            self._watchdog = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        while self._idle_timeout is not None:
            remaining = self._last_received + self._idle_timeout - self._loop.time()
            if remaining <= 0:
                self.abort(f"nothing received from the server for {self._idle_timeout:g} s")
                return
            await asyncio.sleep(remaining)

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for frame in ws:
                self._last_received = self._loop.time()
                if not isinstance(frame, str):
                    self.abort("the server sent a binary frame")
                    break
                for obj in split_frame(frame):
                    if self._abort_reason is not None:
                        break
                    self._dispatch(obj)
        except ConnectionClosed:
            pass
        except ValueError as exc:
            self.abort(f"invalid frame from the server: {exc}")
        except Exception as exc:  # a bug in a callback must not leave the connection half dead
            log.exception("connection reader failed")
            self.abort(f"client error: {exc!r}")
        finally:
            self._finish(ws)

    def _dispatch(self, obj: JSONObject) -> None:
        command_id = obj.get("id")
        if command_id is not None:
            callback = self._pending.pop(command_id, None) if isinstance(command_id, int) else None
            if callback is None:
                log.debug("reply to an unknown command id %r", command_id)
                return
            error = obj.get("error")
            if isinstance(error, dict):
                callback(CommandRejected.from_json(error))
                return
            ok = obj.get("ok")
            callback(ok if isinstance(ok, dict) else ValueError(f"malformed reply: {obj!r}"))
            return
        kind = obj.get("push")
        if kind == "ping":
            self.send({"op": "pong"})
            if self._on_ping is not None:
                self._on_ping()
        elif kind == "disconnect":
            self._disconnect_push = obj
        else:
            self._on_push(self, obj)

    # --- closing -------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no closing handshake); the closure reports `reason`, no code."""
        if self._abort_reason is not None or self.closed:
            return
        self._abort_reason = reason
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> Closure:
        """Close with the closing handshake (bounded by CLOSE_TIMEOUT) and return the closure."""
        if self._ws is not None and not self.closed:
            with contextlib.suppress(Exception):
                await self._ws.close(code, reason)
        return await self.wait_closed()

    async def wait_closed(self) -> Closure:
        if self._ws is None:
            return Closure(None, "never opened")
        return await asyncio.shield(self._closed)

    def _closure(self, ws: ClientConnection) -> Closure:
        if self._abort_reason is not None:
            return Closure(None, self._abort_reason)
        push = self._disconnect_push
        if push is not None and isinstance(push.get("code"), int):
            flag = push.get("reconnect")
            return Closure(push["code"], str(push.get("reason", "")), flag if isinstance(flag, bool) else None)
        code = ws.close_code
        if code is None or code == 1006:
            return Closure(None, "connection lost")
        return Closure(code, ws.close_reason or "")

    def _finish(self, ws: ClientConnection) -> None:
        if self.closed:
            return
        closure = self._closure(ws)
        self._closed.set_result(closure)
        if self._abort_reason is None and ws.close_code is None:
            ws.transport.abort()
        for task in (self._watchdog, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._outgoing.clear()
        pending, self._pending = self._pending, {}
        lost = ConnectionLost(f"connection closed: {closure.reason}")
        for callback in pending.values():
            try:
                callback(lost)
            except Exception:
                log.exception("reply callback failed")
        try:
            self._on_close(closure)
        except Exception:
            log.exception("close callback failed")
