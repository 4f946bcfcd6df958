"""`Client`: the application's handle on hubbub: commands, rooms, and the connection lifecycle.

One background task (the runner) opens connections, sends `connect` (re-joining every room with its
last position), serves the connection until it ends, and decides by close code whether and when to
reconnect (`policy`). Until the first `connect` reply it works against a deadline (`connect_timeout`) and
gives up at once when retrying cannot help (a 4xx refusal, a terminal close code), so that `connect()`
says what is wrong instead of retrying in silence. Everything fed by the server is applied synchronously in
the connection's reader, so room buffers and publish acknowledgements follow wire order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any

from websockets.exceptions import InvalidURI

from hubbub_client.backoff import Backoff, Uniform
from hubbub_client.connection import Closure, Connection, Refusal, describe, refusal
from hubbub_client.emitter import Emitter
from hubbub_client.errors import ClientClosed, CommandRejected, CommandTimeout, ConnectFailed, ConnectionLost
from hubbub_client.events import ConnectError, ConnectionState, Disconnection, Rejoin, TokenRefresh
from hubbub_client.membership import Membership, ignore_reply
from hubbub_client.models import (
    JSON,
    ConnectResult,
    HistoryResult,
    JoinResult,
    JSONObject,
    Presence,
    PresenceEvent,
    PresenceStats,
    PublishResult,
    StreamPosition,
)
from hubbub_client.policy import Action, action_for, refusal_is_terminal
from hubbub_client.publisher import Publisher
from hubbub_client.room import Room
from hubbub_client.token import TokenCallback, TokenSource, keep_fresh

log = logging.getLogger("hubbub_client")

#: Connections shorter than this that end with 4011/4009 twice in a row get a backoff delay, not zero.
MIN_STABLE_CONNECTION = 1.0


class Client:
    """An asyncio hubbub client (protocol v1). See docs/client.md.

    `token` is a JWT, an async callback returning one (called for every connect and refresh), or None
    for servers that allow anonymous access. Timing parameters are in seconds.

    `connect_timeout` bounds the first connect: `connect()` raises `ConnectFailed` once it has passed
    without a successful `connect` reply (None: retry until cancelled). Later reconnects retry forever.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenCallback | None,
        command_timeout: float = 5.0,
        connect_timeout: float | None = 30.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        drain_jitter: float = 5.0,
        max_queue: int = 1000,
        publish_rate: float = 50.0,
        publish_burst: int = 100,
        heartbeat_grace: float = 10.0,
        open_timeout: float = 10.0,
        max_frame_bytes: int = 65536,
        rng: Uniform | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        if connect_timeout is not None and not connect_timeout > 0:
            raise ValueError("connect_timeout must be positive, or None to retry until cancelled")
        self.url = url
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.drain_jitter = drain_jitter
        self.heartbeat_grace = heartbeat_grace
        self.open_timeout = open_timeout
        self.max_frame_bytes = max_frame_bytes
        self.connect_options: Mapping[str, Any] = dict(connect_options or {})
        self.backoff = Backoff(backoff_base, backoff_cap, rng=rng)
        #: The client id and user of the current (or last) connection.
        self.client_id: str | None = None
        self.user: str | None = None
        #: How the client ended, once `CLOSED`.
        self.final: Disconnection | None = None
        #: Why the first connect failed for good (what `connect()` raised), if it did.
        self.failure: ConnectFailed | None = None
        #: Counters since creation: connection attempts, `connect` replies received, server pings answered.
        self.attempts = 0
        self.connects = 0
        self.pings = 0

        self.on_state: Emitter[ConnectionState] = Emitter("state")
        self.on_disconnect: Emitter[Disconnection] = Emitter("disconnect")
        self.on_connect_error: Emitter[ConnectError] = Emitter("connect_error")
        self.on_rejoin: Emitter[Rejoin] = Emitter("rejoin")
        self.on_presence: Emitter[PresenceEvent] = Emitter("presence")
        self.on_refresh: Emitter[TokenRefresh] = Emitter("refresh")

        self._tokens = TokenSource(token)
        self._state = ConnectionState.IDLE
        self._membership = Membership(
            on_rejoin=self.on_rejoin,
            on_presence=self.on_presence,
            command_timeout=command_timeout,
            retry=Backoff(backoff_base, backoff_cap, rng=self.backoff.rng),
        )
        self._publisher = Publisher(
            max_queue=max_queue, rate=publish_rate, burst=publish_burst, command_timeout=command_timeout
        )
        self._conn: Connection | None = None  # set while CONNECTED
        self._current: Connection | None = None  # the connection being served, connected or not
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the token refresh of `_conn`
        self._closing = False
        self._connected_at = 0.0  # loop time of the last `connect` reply

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms joined (and re-joined on every reconnect), by name. A copy."""
        return {room.name: room for room in self._membership}

    @property
    def queued(self) -> int:
        """Publishes waiting for a connection."""
        return self._publisher.queued

    async def connect(self) -> None:
        """Start the client and wait for the first successful `connect`, retrying with backoff meanwhile
        (each failed attempt is logged at WARNING on the `hubbub_client` logger).

        Raises `ConnectFailed` (a `ClientClosed`) when the first connect fails for good: `connect_timeout`
        passed, or an attempt failed in a way retrying cannot fix (a 4xx refusal of the upgrade such as
        404 for a wrong path, an invalid URL, a terminal close code such as 4001 invalid token); raises
        `ClientClosed` if `close()` was called meanwhile. Cancelling the call that started the client
        (directly, through `asyncio.wait_for` or a task around `async with`) closes the client: no
        attempt is made after the cancellation and no task is left behind.
        """
        if self._state is ConnectionState.CLOSED:
            raise self._closed_error()
        if self._runner is not None:
            await self.wait_connected()
            return
        runner = self._runner = asyncio.get_running_loop().create_task(self._run(), name="hubbub-client")
        try:
            await self.wait_connected()
        except asyncio.CancelledError:
            # The caller is gone and, inside `async with`, never gets the client to close: stop it here,
            # even if the first connect succeeded in the meantime.
            await self._abandon("connect() was cancelled")
            raise
        except ClientClosed:
            await asyncio.wait([runner])  # it is returning: leave no task behind when connect() raises
            raise

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once `CONNECTED` (at once if already); raises `ClientClosed` (`ConnectFailed` if the client
        never connected) or `TimeoutError`."""
        if self._state is not ConnectionState.CONNECTED:
            wanted = (ConnectionState.CONNECTED, ConnectionState.CLOSED)
            if self._state is not ConnectionState.CLOSED:
                await self.on_state.wait(lambda state: state in wanted, timeout=timeout)
            if self._state is ConnectionState.CLOSED:
                raise self._closed_error()

    async def wait_closed(self) -> Disconnection:
        """Wait until the client is `CLOSED`; returns why."""
        if self._state is not ConnectionState.CLOSED:
            await self.on_state.wait(lambda state: state is ConnectionState.CLOSED)
        assert self.final is not None
        return self.final

    async def close(self) -> None:
        """Close normally (1000) and stop reconnecting. Pending commands and queued publishes fail with
        `ClientClosed`; room iterators end after what they have buffered. Idempotent."""
        if self._state is ConnectionState.CLOSED:
            return
        self._closing = True
        current = self._current
        if current is not None:
            await current.close(1000, "client closed")
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._finish(Disconnection(1000, "closed by the client", reconnect=False))

    async def _abandon(self, reason: str) -> None:
        """Stop at once because `connect()` was cancelled: a connection that got its `connect` reply is
        closed normally (1000), a half-open one (or one still opening) is dropped, and the runner is
        awaited so that nothing runs on after the caller's cancellation."""
        if self._conn is not None:
            await self.close()
            return
        self._closing = True
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()  # aborts whatever it is opening or serving (see `_run`)
            await asyncio.wait([runner])
        self._finish(Disconnection(None, reason, reconnect=False))

    def _closed_error(self) -> ClientClosed:
        """What to raise once `CLOSED`: the first connect's failure if that is how the client ended."""
        return self.failure if self.failure is not None else ClientClosed(self.final)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- commands --------------------------------------------------------------------------------

    async def join(self, room: str, *, since: StreamPosition | None = None) -> Room:
        """Join `room` and return it (iterate it for publications). With `since`, resume from a position
        the application kept: missed publications are delivered first and `room.recovered` tells whether
        all of them were. Re-joined automatically after every reconnect until `leave()`."""
        if room in self._membership:
            raise CommandRejected(409, "already joined")
        handle = Room(self, room)
        params: JSONObject = {"room": room}
        if since is not None:
            params["since"] = since.to_json()
        abandoned = False
        sent_on: list[Connection] = []

        def on_ok(ok: JSONObject) -> None:
            if room in self._membership:  # a concurrent join won (not expected: the server answers it 409)
                return
            if abandoned or self._state is ConnectionState.CLOSED:
                if sent_on and not sent_on[-1].closed:  # joined after all: do not stay joined on the server
                    sent_on[-1].submit("leave", {"room": room}, ignore_reply)
                return
            self._membership.add(handle, JoinResult.from_json(room, ok), since)

        try:
            await self._command("join", params, on_ok=on_ok, sent_on=sent_on)
        except BaseException:
            abandoned = True
            raise
        return handle

    async def leave(self, room: str) -> None:
        """Leave `room`: its iterators end and it is no longer re-joined. While disconnected this is local."""
        handle = self._membership.remove(room)
        if handle is not None:
            handle.close()
        conn = self._conn
        if conn is None:
            if handle is None:
                raise CommandRejected(409, "not joined")
            return
        try:
            await self._request(conn, "leave", {"room": room})
        except ConnectionLost:
            pass  # the next connection does not hold the room

    async def publish(self, room: str, data: JSON, *, idempotency_key: str | None = None) -> PublishResult:
        """Publish `data` to `room` and return where it landed.

        While disconnected the publish is queued and sent after reconnecting, in order; publishes are also
        paced (`publish_rate`, `publish_burst`) so that a backlog never trips the server's rate limit, and
        wait in the same queue for their turn. The queue is bounded: beyond `max_queue` waiting publishes,
        `QueueFull` is raised at once. A publish whose reply was lost to a disconnect is sent again with
        the same idempotency key, so it is never duplicated. Raises `CommandTimeout` when a sent publish
        gets no reply within `command_timeout`, `CommandRejected` for an error reply."""
        if self._state is ConnectionState.CLOSED:
            raise ClientClosed(self.final)
        return await self._publisher.publish(room, data, idempotency_key)

    async def history(
        self, room: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Publications of `room` after `since` (or the newest ones), oldest first, at most `limit`."""
        params: JSONObject = {"room": room}
        if since is not None:
            params["since"] = since.to_json()
        if limit is not None:
            params["limit"] = limit
        return HistoryResult.from_json(room, await self._command("history", params))

    async def presence(self, room: str) -> Presence:
        return Presence.from_json(await self._command("presence", {"room": room}))

    async def presence_stats(self, room: str) -> PresenceStats:
        return PresenceStats.from_json(await self._command("presence_stats", {"room": room}))

    async def _command(
        self,
        op: str,
        params: JSONObject,
        *,
        on_ok: Callable[[JSONObject], None] | None = None,
        sent_on: list[Connection] | None = None,
    ) -> JSONObject:
        """Send a command once connected and return its ok payload. Waiting for a connection counts
        against `command_timeout`; a command whose connection was lost is sent again on the next one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout
        while True:
            conn = await self._connection(op, deadline)
            if sent_on is not None:
                sent_on.append(conn)
            try:
                return await self._request(conn, op, params, on_ok=on_ok, timeout=deadline - loop.time())
            except ConnectionLost:
                continue

    async def _request(
        self,
        conn: Connection,
        op: str,
        params: JSONObject,
        *,
        on_ok: Callable[[JSONObject], None] | None = None,
        timeout: float | None = None,
    ) -> JSONObject:
        future = conn.request(op, params, on_ok)
        try:
            return await asyncio.wait_for(future, self.command_timeout if timeout is None else max(0.0, timeout))
        except TimeoutError:
            raise CommandTimeout(op, self.command_timeout) from None

    async def _connection(self, op: str, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._state is ConnectionState.CLOSED:
                raise self._closed_error()
            if self._conn is not None:
                return self._conn
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CommandTimeout(op, self.command_timeout)
            with contextlib.suppress(TimeoutError):
                await self.on_state.wait(
                    lambda s: s in (ConnectionState.CONNECTED, ConnectionState.CLOSED), timeout=remaining
                )

    # --- the runner ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            final = await self._reconnect_loop()
        except Exception as exc:  # a bug: never leave the application waiting on a dead runner
            log.exception("the client runner failed")
            final = Disconnection(None, f"client error: {exc!r}", reconnect=False)
        finally:
            current = self._current
            if current is not None:
                current.abort("client closed")
                await current.wait_closed()  # its reader is done too: no task outlives the runner
        if final is not None:
            self._finish(final)

    async def _reconnect_loop(self) -> Disconnection | None:
        """Connect, serve, and reconnect until a terminal close (returned) or `close()` (None).

        Until the first `connect` reply every step runs against the `connect_timeout` deadline, and a
        failure that retrying cannot fix ends the client with `self.failure` (which `connect()` raises).
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.connect_timeout is None else loop.time() + self.connect_timeout
        ever_connected = False
        last_error: BaseException | None = None  # the last failed attempt, for `ConnectFailed`
        last_cause = "no attempt finished"
        token_override: str | None = None
        auth_retried = False
        quick = 0  # immediate reconnects in a row after connections shorter than MIN_STABLE_CONNECTION
        failures = 0  # failed attempts in a row
        while not self._closing:
            limit = None if ever_connected else deadline
            if limit is not None and loop.time() >= limit:
                return self._timed_out(last_error, last_cause)
            self._set_state(ConnectionState.CONNECTING)
            token: str | None = None
            stage = "the token callback failed: "
            try:
                async with asyncio.timeout_at(limit):
                    token = token_override if token_override is not None else await self._tokens.get()
                    token_override = None
                    stage = ""
                    conn = await self._open()
            except InvalidURI as exc:
                return self._give_up(f"invalid URL: {exc}", exc)
            except Exception as exc:  # refused, timed out, bad handshake, or the token callback failed
                failures += 1
                last_error, last_cause = exc, stage + describe(exc)
                if limit is not None and loop.time() >= limit:  # also: this attempt was cut by the deadline
                    return self._timed_out(last_error, last_cause)
                refused = refusal(exc)
                if not ever_connected and refused is not None and refusal_is_terminal(refused.status):
                    return self._give_up(self._refusal_message(refused), exc, refused)
                wait = self.backoff.next_delay()
                self._set_state(ConnectionState.RECONNECTING)
                self.on_connect_error.emit(ConnectError(failures, exc, wait))
                await self._retry_after(failures, last_cause, wait, limit)
                continue
            closure, connected = await self._serve(conn, token, limit)
            if self._closing:
                break
            if connected:
                ever_connected = True
                failures = 0
                auth_retried = False
            action = self._action(closure)
            delay: float | None = None
            if action is Action.RETRY_AUTH:
                fresh = None if auth_retried else await self._fresh_token()
                if fresh is None or fresh == token:
                    action = Action.STOP
                else:
                    auth_retried, token_override, delay = True, fresh, 0.0
            elif action in (Action.AT_ONCE, Action.FRESH_TOKEN):
                # At once; but when short-lived connections keep ending this way, back off (growing
                # with each one in a row) so that a server repeating the close cannot cause a tight loop.
                lived = loop.time() - self._connected_at if connected else 0.0
                quick = quick + 1 if lived < MIN_STABLE_CONNECTION else 0
                delay = 0.0 if quick <= 1 else self.backoff.jitter(self.backoff.ceiling(quick - 2))
            elif action is Action.DRAIN_DELAY:
                delay = self.backoff.jitter(self.drain_jitter)
            elif action is Action.BACKOFF:
                delay = self.backoff.next_delay()
            disconnect = Disconnection(closure.code, closure.reason, reconnect=action is not Action.STOP, delay=delay)
            if action is Action.STOP:
                if not ever_connected:
                    return self._give_up(self._closure_message(closure), None, disconnect=disconnect)
                log.warning("connection to %s ended for good: %s", self.url, _closure_text(closure))
                return disconnect
            self._set_state(ConnectionState.RECONNECTING)
            self.on_disconnect.emit(disconnect)
            if connected:
                log.info(
                    "connection to %s ended: %s; reconnecting in %.2f s", self.url, _closure_text(closure), delay or 0
                )
                if delay:
                    await asyncio.sleep(delay)
            else:  # the server closed before answering `connect`: a failed attempt
                failures += 1
                last_error, last_cause = None, _closure_text(closure)
                await self._retry_after(failures, last_cause, delay or 0.0, limit)
        return None

    async def _retry_after(self, attempt: int, cause: str, delay: float, limit: float | None) -> None:
        """Log a failed attempt and wait before the next one, or until the first connect's deadline.

        One line, no traceback: refusals and timeouts are expected while a server is down, and the
        backoff bounds the rate (one line per `backoff_cap` seconds at worst during a long outage).
        """
        loop = asyncio.get_running_loop()
        if limit is not None and loop.time() + delay >= limit:
            delay = max(0.0, limit - loop.time())
            log.warning(
                "connect attempt %d to %s failed: %s; giving up in %.2f s (connect_timeout %g s)",
                attempt,
                self.url,
                cause,
                delay,
                self.connect_timeout,
            )
        else:
            log.warning("connect attempt %d to %s failed: %s; retrying in %.2f s", attempt, self.url, cause, delay)
        if delay > 0:
            await asyncio.sleep(delay)

    def _give_up(
        self,
        message: str,
        error: BaseException | None,
        refused: Refusal | None = None,
        *,
        disconnect: Disconnection | None = None,
    ) -> Disconnection:
        """End the first connect for good: record the `ConnectFailed` for `connect()` and return the final
        disconnect."""
        final = disconnect if disconnect is not None else Disconnection(None, message, reconnect=False)
        self.failure = ConnectFailed(
            message,
            url=self.url,
            disconnect=final,
            attempts=self.attempts,
            cause=error,
            status=None if refused is None else refused.status,
            body=None if refused is None else refused.body,
        )
        log.warning("giving up: %s", message)
        return final

    def _timed_out(self, error: BaseException | None, cause: str) -> Disconnection:
        attempts = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        return self._give_up(
            f"could not connect to {self.url} within {self.connect_timeout:g} s ({attempts}); last error: {cause}",
            error,
            refusal(error) if error is not None else None,
        )

    def _refusal_message(self, refused: Refusal) -> str:
        said = f": {refused.message}" if refused.message else ""
        return f"HTTP {refused.status} from {self.url}{said}"

    def _closure_message(self, closure: Closure) -> str:
        if closure.code is None:
            return f"connecting to {self.url} failed: {closure.reason}"
        return f"close code {closure.code} from {self.url}: {closure.reason}"

    def _action(self, closure: Closure) -> Action:
        if closure.terminal:
            return Action.STOP
        return action_for(
            closure.code, server_reconnect=closure.server_reconnect, has_token_callback=self._tokens.refreshable
        )

    async def _fresh_token(self) -> str | None:
        try:
            return await self._tokens.get()
        except Exception:
            log.exception("the token callback failed")
            return None

    async def _open(self) -> Connection:
        conn = Connection(
            on_push=self._membership.push,
            on_close=self._on_close,
            on_ping=self._on_ping,
            max_frame_bytes=self.max_frame_bytes,
        )
        self.attempts += 1
        await conn.open(self.url, open_timeout=self.open_timeout, options=self.connect_options)
        self._current = conn
        return conn

    async def _serve(self, conn: Connection, token: str | None, limit: float | None) -> tuple[Closure, bool]:
        """Send `connect` (re-joining every room), then wait for the connection to end. The reply is awaited
        until `command_timeout`, or the loop time `limit` (the first connect's deadline) if sooner."""
        sent_rooms = self._membership.positions()
        params: JSONObject = {}
        if token is not None:
            params["token"] = token
        if sent_rooms:
            params["rooms"] = self._membership.connect_rooms(sent_rooms)
        connected = False

        def on_ok(ok: JSONObject) -> None:
            nonlocal connected
            self._connected(conn, ConnectResult.from_json(ok), ok.get("rooms"), sent_rooms)
            connected = True

        timeout = self.command_timeout
        if limit is not None:
            timeout = min(timeout, limit - asyncio.get_running_loop().time())
        try:
            await self._request(conn, "connect", params, on_ok=on_ok, timeout=timeout)
        except ConnectionLost:
            pass
        except CommandRejected as exc:  # never expected: the client sends well-formed connects
            await conn.close(1000, "connect refused")
            self._current = None
            return Closure(None, f"connect refused: {exc}", terminal=True), False
        except (CommandTimeout, ValueError) as exc:
            conn.abort(f"connect failed: {exc}")
        closure = await conn.wait_closed()
        self._current = None
        return closure, connected

    def _connected(
        self, conn: Connection, result: ConnectResult, rooms: object, sent: dict[str, StreamPosition | None]
    ) -> None:
        """The `connect` reply arrived (runs in the reader, before any later message)."""
        self.client_id, self.user = result.client, result.user
        self.connects += 1
        self._connected_at = asyncio.get_running_loop().time()
        conn.set_idle_timeout(result.ping_interval + self.heartbeat_grace)
        self.backoff.reset()
        self._conn = conn
        self._membership.rejoined(conn, rooms, sent)
        self._publisher.attach(conn)
        if result.expires_in is not None and self._tokens.refreshable:

            async def refresh(token: str) -> JSONObject:
                return await self._request(conn, "refresh", {"token": token})

            self._spawn(keep_fresh(self._tokens, refresh, result.expires_in, self.on_refresh.emit))
        self._set_state(ConnectionState.CONNECTED)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- fed by the connection -------------------------------------------------------------------

    def _on_ping(self) -> None:
        self.pings += 1

    def _on_close(self, closure: Closure) -> None:
        """A connection ended (runs in its reader): requeue unanswered publishes, stop its tasks."""
        self._conn = None
        for task in list(self._tasks):
            task.cancel()
        self._membership.disconnected()
        self._publisher.detach()

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state or self._state is ConnectionState.CLOSED:
            return
        self._state = state
        self.on_state.emit(state)

    def _finish(self, final: Disconnection) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self.final = final
        self._conn = None
        for task in list(self._tasks):
            task.cancel()
        error = self.failure if self.failure is not None else ClientClosed(final)
        self._publisher.fail_all(error)
        self._membership.close_all(None if self._closing else error)
        self._set_state(ConnectionState.CLOSED)
        self.on_disconnect.emit(final)


def _closure_text(closure: Closure) -> str:
    return closure.reason if closure.code is None else f"{closure.code} {closure.reason}".rstrip()
