"""One Redis connection shared by every caller on a node, its commands pipelined as they come.

redis-py lends a pooled connection to one command at a time and waits for the reply before the
connection serves anyone else: a send and a receive system call, and a round trip, per command.
On the publication path that is paid once per message. A `Link` instead writes every command
issued during one event-loop iteration in one write and hands replies back in order (Redis answers
a connection's commands in the order it received them). The order is the second gain: commands
issued in order on one node are applied in that order, so a connection's publishes can be sent
without waiting for each other's replies and still get consecutive offsets.

redis-py still makes the connection (URL options, TLS, ACL users and Sentinel discovery stay its
business); once its handshake is done the Link takes the socket over with its own protocol and
parses replies with hiredis. redis-py has no public API for that hand-over: what it uses of its
internals is in `redis_internals`, with the redis-py versions it is tested with.

Timeouts belong to the Link, not to callers: when the oldest unanswered command is older than
`timeout` the connection is presumed hung and closed, and every waiting caller fails. A timer per
command would cost more than the command.

The connection speaks RESP3 (Redis 6 or later), where what a server sends unasked is typed as a
push: pub/sub messages and (un)subscribe confirmations go to `on_push` (subscriber mode), and
`send` writes SUBSCRIBE and UNSUBSCRIBE, which have no reply of their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as LinkDown
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as LinkTimeout

from hubbub.backends.redis_internals import forget_stream, transport_of

if TYPE_CHECKING:
    from hubbub.metrics import Histogram

log = logging.getLogger("hubbub.redis")

#: Commands waiting for a reply (or for a connection) before new ones fail at once: a Redis that
#: cannot keep up must not turn into unbounded memory on every node.
MAX_PENDING = 100_000

Arg = str | bytes | int | float

#: hiredis' packer; its stub types the argument as a one-element tuple.
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class _Socket(asyncio.Protocol):
    """The protocol installed on one connection's transport: forwards to its Link while current."""

    def __init__(self, link: Link) -> None:
        self.link: Link | None = link

    def data_received(self, data: bytes) -> None:
        if self.link is not None:
            self.link._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link._lost(self, LinkDown(f"redis connection lost: {exc or 'closed by the server'}"))


class Link:
    """A pipelined Redis connection; see the module docstring."""

    def __init__(
        self,
        factory: Callable[[], AbstractConnection],
        *,
        timeout: float,
        greeting: Sequence[Sequence[Arg]] = (),
        on_push: Callable[[list[Any]], None] | None = None,
        max_pending: int = MAX_PENDING,
        latency: Histogram | None = None,
    ) -> None:
        self._factory = factory
        self._timeout = timeout
        #: Where each reply's round trip is counted (from the call, so a wait for the connection counts too).
        self._latency = latency
        #: Commands sent first on every new connection (SCRIPT LOAD): their replies are not awaited.
        self._greeting = [_pack(tuple(args)) for args in greeting]
        self._on_push = on_push
        self._max_pending = max_pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket: _Socket | None = None
        self._transport: asyncio.Transport | None = None
        #: The redis-py connection that made the socket: kept so its stream writer is not collected (and closed).
        self._conn: AbstractConnection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        #: (future, deadline) per command whose reply is still due, in the order they were written.
        self._waiting: collections.deque[tuple[asyncio.Future[Any] | None, float]] = collections.deque()
        #: Packed commands not written yet (this loop iteration's, or all while connecting).
        self._out: list[bytes] = []
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._shut = False

    # --- state ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def lost(self) -> asyncio.Future[None]:
        """Done when the current connection ends (at once when there is none)."""
        if self._transport is None or self._closed_future is None:
            done = self._get_loop().create_future()
            done.set_result(None)
            return done
        return self._closed_future

    # --- calls ------------------------------------------------------------------------------------

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (an error reply raises ResponseError)."""
        loop = self._get_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._shut:
            future.set_exception(LinkDown("redis link closed"))
            return future
        if len(self._waiting) >= self._max_pending:
            future.set_exception(LinkDown(f"more than {self._max_pending} commands waiting for redis"))
            return future
        self._waiting.append((future, loop.time() + self._timeout))
        self._queue(_pack(args))
        return future

    def send(self, *args: Arg) -> None:
        """Write a command with no reply of its own (SUBSCRIBE, UNSUBSCRIBE in subscriber mode)."""
        if not self._shut:
            self._queue(_pack(args))

    def _queue(self, packed: bytes) -> None:
        self._out.append(packed)
        if self._transport is None:
            self._open_soon()
        elif not self._flushing:
            self._flushing = True
            self._get_loop().call_soon(self._flush)
        if self._timer is None and self._waiting:
            self._timer = self._get_loop().call_at(self._waiting[0][1], self._expire)

    def _flush(self) -> None:
        self._flushing = False
        if self._transport is not None and self._out:
            out, self._out = self._out, []
            self._transport.write(b"".join(out))

    # --- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Make sure a connection is up; raises redis' ConnectionError/TimeoutError when it cannot be made."""
        if self._transport is not None:
            return
        self._open_soon()
        if self._opening is None:
            raise LinkDown("redis link closed")
        await asyncio.shield(self._opening)

    def _open_soon(self) -> None:
        if self._opening is None and not self._shut:
            self._opening = self._get_loop().create_task(self._open(), name="hubbub-redis-connect")
            # Callers learn of a failed connect through their futures; nobody need await the task.
            self._opening.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _open(self) -> None:
        conn: AbstractConnection | None = None
        try:
            conn = self._factory()
            try:
                await asyncio.wait_for(conn.connect(), self._timeout)  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise LinkTimeout("redis connect timed out") from None
            transport = transport_of(conn)
            if transport is None:
                raise LinkDown("this redis-py version does not expose its connection's stream")
        except BaseException as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            if isinstance(exc, asyncio.CancelledError):
                self._fail_all(LinkDown("redis link closed"))
                raise
            error = exc if isinstance(exc, LinkDown | LinkTimeout) else LinkDown(f"redis: {exc!r}")
            self._fail_all(error)
            raise error from None
        finally:
            self._opening = None
        if self._shut:
            transport.close()
            return
        socket = _Socket(self)
        # redis-py's handshake is request/reply: nothing of ours is buffered in its reader.
        transport.set_protocol(socket)
        self._conn, self._socket, self._transport = conn, socket, transport
        self._closed_future = self._get_loop().create_future()
        self._reader = hiredis.Reader(replyError=ResponseError)
        if self._greeting:
            deadline = self._get_loop().time() + self._timeout
            self._waiting.extendleft([(None, deadline)] * len(self._greeting))
            self._out[:0] = self._greeting
        self._flush()

    def _received(self, socket: _Socket, data: bytes) -> None:
        if socket is not self._socket:
            return
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        on_push = self._on_push
        latency = self._latency
        # One clock read per read from the socket: its replies all arrived now. A command started at its
        # deadline less the timeout, so its round trip is (now + timeout) - deadline: no timestamp of its own.
        arrived = (self._get_loop().time() + self._timeout) if latency is not None else 0.0
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._drop(LinkDown(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if type(reply) is hiredis.PushNotification:
                # Pub/sub traffic, or out-of-band notices a connection can get unasked (never a reply).
                if on_push is not None:
                    on_push(reply)
                continue
            if not waiting:
                self._drop(LinkDown(f"unexpected reply from redis: {reply!r:.100}"))
                return
            future, deadline = waiting.popleft()
            if latency is not None and future is not None:
                latency.observe(arrived - deadline)
            if type(reply) is ResponseError:
                if str(reply).startswith(("READONLY", "MASTERDOWN")):
                    # A replica now (failover): reconnect, so discovery finds the new master.
                    self._drop(LinkDown(f"redis: {reply}"))
                    return
                if future is None:
                    log.warning("redis refused a greeting command: %s", reply)
                elif not future.done():
                    future.set_exception(reply)
            elif future is not None and not future.done():
                future.set_result(reply)

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._get_loop().time() >= deadline:
            self._drop(LinkTimeout(f"redis did not answer within {self._timeout:g} s"))
        else:
            self._timer = self._get_loop().call_at(deadline, self._expire)

    def _lost(self, socket: _Socket, error: Exception) -> None:
        if socket is self._socket:
            self._drop(error)

    def _drop(self, error: Exception) -> None:
        """End the current connection; every caller still waiting fails with `error`."""
        transport, self._transport = self._transport, None
        if self._socket is not None:
            self._socket.link = None
            self._socket = None
        conn, self._conn = self._conn, None
        if transport is not None:
            transport.abort()
        if conn is not None:
            forget_stream(conn)  # or redis-py warns about it as unclosed when it is collected
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        self._out = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future, _ in waiting:
            if future is not None and not future.done():
                future.set_exception(error)
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)

    async def aclose(self) -> None:
        self._shut = True
        opening = self._opening
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        self._drop(LinkDown("redis link closed"))

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop
