"""One client connection's protocol state machine, independent of the socket underneath and of the node.

The transport feeds text frames to `Session.handle_text`; everything the session sends goes
through its `Outbox`. What the session needs of the node it runs on is `SessionHost`, a Protocol
that `hubbub.node.Node` implements: this module never imports the node (an import-linter contract
holds it to that), so a test drives a session with a fake sink and a fake clock, in-process
(tests/support/inprocess.py).

The work of a join is split by what it concerns. The session decides whether this connection may
join (the room's name, the token's claims, its own room limit, not joined already), keeps the
rooms it is in and answers the command (recovery is judged against the reply's size). The host
does everything about the room, which other connections share, in one place: `join_room` (the
node's subscription, the position or the missed publications, the presence entry; undone if any
step fails), `complete_join` (membership in the local fan-out, the join push) and `leave_room`.

Commands are handled in the order received (protocol rule 1): one at a time, except that a run
of consecutive publishes is pipelined. Each is handed to the broker as soon as it arrives (the
broker applies a node's publishes in the order it gets them, so offsets follow the order of the
commands) and the replies go out in command order; any other command first waits for every
publish before it. A publisher streaming messages pays one broker round trip per burst, not one
per message.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from hubbub import protocol, rules
from hubbub.auth import AuthError, Principal
from hubbub.backends.base import BackendUnavailable, HistoryResult, PresenceStats, PublishResult
from hubbub.codes import CloseCode, CommandError, Disconnect, ErrorCode
from hubbub.metrics import Metrics
from hubbub.outbox import Flusher, Outbox, Sink
from hubbub.protocol import Command, Publication, StreamPosition
from hubbub.ratelimit import TokenBucket, Verdict
from hubbub.settings import NamespaceOptions, Settings
from hubbub.throttle import Throttle
from hubbub.timers import Clock
from hubbub.types import JSON, ClientId, JSONObject, Room

log = logging.getLogger("hubbub.session")
auth_log = logging.getLogger("hubbub.auth")
#: Refused tokens: anyone can send them, so at most a few lines a minute per reason (with a count of the rest).
AUTH_FAILURES: Final = Throttle(auth_log)
#: Rooms a closed connection could not leave in the backend: under an outage, every disconnect.
CLEANUP_FAILURES: Final = Throttle(log)
#: Longest failure message quoted in the log (some quote a `kid` from the token's header, the client's to choose).
MAX_SHOWN_REASON: Final = 200


def log_auth_failure(reason: str, message: str, *, where: str, conn: str | None = None) -> None:
    """One INFO line for a refused token: its reason (an AuthError.reason) and message, never the token."""
    extra = {"conn": conn} if conn is not None else None
    AUTH_FAILURES.log(
        logging.INFO,
        reason,
        "authentication failed (%s): %s: %s",
        where,
        reason,
        message[:MAX_SHOWN_REASON],
        extra=extra,
    )


AfterReply = Callable[[], Awaitable[None]]

#: Publishes of one connection in flight at once; the next waits for the oldest reply.
PIPELINE_DEPTH = 64


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


def recover(since: StreamPosition | None, found: HistoryResult) -> tuple[bool, list[Publication]]:
    """All-or-nothing recovery (protocol §4, rule 4): every missed publication, or none."""
    if since is None or since.epoch != found.epoch or since.offset > found.offset:
        return False, []
    missed = found.offset - since.offset
    pubs = found.publications
    if missed == 0:
        return True, []
    if len(pubs) == missed and pubs[0].offset == since.offset + 1:
        return True, pubs
    return False, []


class SessionHost(Protocol):
    """What a session needs from the node it runs on; `hubbub.node.Node` implements it.

    Read-only attributes: the node's settings (the room options and per-connection limits), its
    metrics, its clock (the command budget, `expires_in`) and the loop and flusher its outbox
    writes through. The rest is what the commands do beyond the connection itself.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def flusher(self) -> Flusher: ...

    async def authenticate(self, token: str) -> Principal:
        """The token's principal; raises AuthError."""

    def session_connected(self, session: Session) -> None:
        """`connect` succeeded: heartbeats and the token's expiry start."""

    def schedule_expiry(self, session: Session) -> None:
        """The session's principal changed (`refresh`): its expiry moves."""

    async def join_room(
        self, session: Session, room: Room, since: StreamPosition | None, options: NamespaceOptions
    ) -> HistoryResult:
        """Everything a join does to the room, up to the reply: undone when it raises."""

    async def complete_join(
        self, session: Session, room: Room, found: HistoryResult, options: NamespaceOptions
    ) -> None:
        """After the join reply: the session receives the room's publications after `found`."""

    async def leave_room(self, session: Session, room: Room, options: NamespaceOptions) -> None:
        """Undo a join (completed or not)."""

    async def publish(
        self,
        room: Room,
        data: JSON,
        idempotency_key: str | None,
        options: NamespaceOptions,
        *,
        info: JSONObject | None,
        source: str,
    ) -> PublishResult: ...

    async def history(
        self, room: Room, since: StreamPosition | None, limit: int, options: NamespaceOptions
    ) -> JSONObject: ...

    async def presence(self, room: Room) -> dict[ClientId, JSONObject]: ...

    async def presence_stats(self, room: Room) -> PresenceStats: ...


class Session:
    __slots__ = (
        "__weakref__",
        "_after",
        "_bucket",
        "_monotonic",
        "client_id",
        "close_code",
        "close_reason",
        "connect_due",
        "expire_due",
        "host",
        "outbox",
        "ping_due",
        "_pipeline",
        "pong_due",
        "principal",
        "rooms",
        "state",
    )

    def __init__(self, host: SessionHost, sink: Sink, *, principal: Principal | None) -> None:
        self.host = host
        self.client_id = ClientId(secrets.token_urlsafe(12))
        settings = host.settings
        self.outbox = Outbox(
            sink,
            client_id=self.client_id,
            max_bytes=settings.max_queue_bytes,
            on_overflow=self._slow_consumer,
            flusher=host.flusher,
            loop=host.loop,
        )
        self.outbox.request_close = self.close
        #: Principal from the upgrade request until `connect` replaces or confirms it.
        self.principal = principal
        self.state = State.CONNECTING
        self.rooms: dict[Room, NamespaceOptions] = {}
        #: The host clock's reading, bound once: every command reads it (the command budget).
        self._monotonic = host.clock.monotonic
        self._bucket = TokenBucket(settings.command_rate, settings.command_burst, self._monotonic())
        self._after: list[AfterReply] = []
        #: Pipelined publishes, oldest first: each task returns its reply frame (or the Disconnect it caused).
        self._pipeline: collections.deque[asyncio.Task[str | Disconnect]] = collections.deque()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connect_due: float | None = None
        self.ping_due: float | None = None
        self.pong_due: float | None = None
        self.expire_due: float | None = None

    @property
    def user(self) -> str:
        return self.principal.user if self.principal else ""

    def client_info(self) -> JSONObject:
        info: JSONObject = {"user": self.user, "client": self.client_id}
        if self.principal is not None and self.principal.info is not None:
            info["info"] = self.principal.info
        return info

    # --- closing ---------------------------------------------------------------------------

    def close(self, code: CloseCode, reason: str | None = None, *, drop_pending: bool = False) -> None:
        if self.close_code is not None:
            return
        self.close_code = int(code)
        self.close_reason = reason or code.info.reason
        self.outbox.close(
            int(code),
            self.close_reason,
            reconnect=code.info.reconnect,
            notify=code is not CloseCode.MESSAGE_TOO_BIG,
            drop_pending=drop_pending,
        )

    def _slow_consumer(self) -> None:
        self.host.metrics.slow_consumers.add(1)
        self.close(CloseCode.SLOW_CONSUMER, drop_pending=True)

    # --- inbound -----------------------------------------------------------------------------

    async def handle_text(self, text: str, *, more: bool = False) -> None:
        """Handle one inbound frame. Closes the connection on protocol violations.

        `more` says another frame is already waiting: publishes at the end of this one may then stay
        in flight when this returns (a later call finishes them), so they pipeline with the next frame's.
        """
        if self.close_code is not None:
            return
        try:
            try:
                commands = protocol.decode_frame(text)
            except Disconnect:
                if self.state is State.CONNECTING:
                    raise Disconnect(CloseCode.UNAUTHORIZED, "connect must be the first command") from None
                raise
            last = len(commands) - 1
            for index, command in enumerate(commands):
                if self.close_code is not None:
                    return
                if command.op == "publish" and self.state is State.CONNECTED:
                    if not self._pipeline and not more and index == last:
                        await self._dispatch(command)  # alone: no task needed
                        continue
                    self._pipeline.append(self.host.loop.create_task(self._answer(command)))
                    if len(self._pipeline) >= PIPELINE_DEPTH:
                        await self._settle(1)
                    continue
                await self._settle()
                await self._dispatch(command)
            if not more:
                await self._settle()
        except Disconnect as exc:
            self.close(exc.code, exc.reason)

    async def _settle(self, count: int | None = None) -> None:
        """Send the replies of the pipelined publishes (`count` oldest, or all), in order."""
        pipeline = self._pipeline
        while pipeline and (count is None or count > 0):
            reply = await pipeline[0]
            pipeline.popleft()
            if count is not None:
                count -= 1
            if isinstance(reply, Disconnect):
                raise reply
            if self.close_code is None:
                self.outbox.push(reply)

    def handle_binary(self) -> None:
        if self.state is State.CONNECTING:
            self.close(CloseCode.UNAUTHORIZED, "connect must be the first command")
        else:
            self.close(CloseCode.UNSUPPORTED_DATA)

    async def _dispatch(self, command: Command) -> None:
        op = command.op
        if self.state is State.CONNECTING and op != "connect":
            raise Disconnect(CloseCode.UNAUTHORIZED, "connect must be the first command")
        if op == "pong":
            self.pong_due = None
            if command.id:
                self.outbox.push(protocol.reply_ok(command.id, {}))
            return
        reply = await self._execute(command)
        if self.close_code is not None:
            self._after.clear()
            return
        self.outbox.push(reply)
        after, self._after = self._after, []
        for step in after:
            await step()

    async def _answer(self, command: Command) -> str | Disconnect:
        """A pipelined publish: its reply, or the Disconnect it caused, for `_settle` to act on in order."""
        try:
            return await self._execute(command)
        except Disconnect as exc:
            return exc

    async def _execute(self, command: Command) -> str:
        """Run a command (not pong) and return its reply frame; raises Disconnect."""
        op = command.op
        if op != "connect":
            verdict = self._bucket.take(self._monotonic())
            if verdict is Verdict.CLOSE:
                raise Disconnect(CloseCode.RATE_LIMITED)
            if verdict is Verdict.REJECT:
                self.host.metrics.rate_limit("commands")
                return self._reply_error(command, ErrorCode.TOO_MANY, "rate limited: slow down")
        handler = self._handlers[op]
        try:
            result = await handler(self, command.params)
        except CommandError as exc:
            self._after.clear()
            return self._reply_error(command, exc.code, exc.reason)
        except BackendUnavailable as exc:
            self._after.clear()
            return self._reply_error(command, ErrorCode.UNAVAILABLE, f"temporarily unavailable: {exc}")
        except Disconnect:
            self._after.clear()
            raise
        except Exception:
            self._after.clear()
            log.exception("command %s failed", op)
            return self._reply_error(command, ErrorCode.INTERNAL, "internal error")
        self.host.metrics.command(op, "ok")
        return protocol.reply_ok(command.id, result)

    def _reply_error(self, command: Command, code: ErrorCode, reason: str) -> str:
        self.host.metrics.command(command.op, str(int(code)))
        return protocol.reply_error(command.id, int(code), reason)

    # --- commands ------------------------------------------------------------------------------

    async def _connect(self, params: JSONObject) -> JSONObject:
        if self.state is State.CONNECTED:
            raise CommandError(ErrorCode.BAD_REQUEST, "already connected")
        rooms = params.get("rooms")
        if rooms is not None and not isinstance(rooms, dict):
            raise CommandError(ErrorCode.BAD_REQUEST, "`rooms` must be an object of room → {since}")
        token = params.get("token")
        host = self.host
        if token is not None:
            if not isinstance(token, str):
                raise Disconnect(CloseCode.UNAUTHORIZED, "token must be a string")
            self.principal = await self._authenticate(token)
        elif self.principal is None:
            if not host.settings.allow_anonymous:
                host.metrics.auth_failures.add(1, {"reason": "missing_token"})
                log_auth_failure("missing_token", "a token is required", where="connect", conn=self.client_id)
                raise Disconnect(CloseCode.UNAUTHORIZED, "a token is required")
            self.principal = Principal(user="", rooms=(), publish=(), info=None, expires_at=None)
        self.state = State.CONNECTED
        host.session_connected(self)
        joined: JSONObject = {}
        for name, spec in (rooms or {}).items():
            try:
                if spec is not None and not isinstance(spec, dict):
                    raise CommandError(ErrorCode.BAD_REQUEST, "each room takes an object {since?}")
                joined[name] = await self._join_room(name, (spec or {}).get("since"))
            except CommandError as exc:
                joined[name] = protocol.error_body(int(exc.code), exc.reason)
            except BackendUnavailable as exc:
                joined[name] = protocol.error_body(int(ErrorCode.UNAVAILABLE), f"temporarily unavailable: {exc}")
        return {
            "client": self.client_id,
            "user": self.principal.user,
            "expires_in": self._expires_in(),
            "ping_interval": protocol.wire_number(host.settings.ping_interval),
            "rooms": joined,
        }

    async def _authenticate(self, token: str) -> Principal:
        try:
            return await self.host.authenticate(token)
        except AuthError as exc:
            self.host.metrics.auth_failures.add(1, {"reason": exc.reason})
            log_auth_failure(exc.reason, exc.message, where="connect", conn=self.client_id)
            raise Disconnect(CloseCode.UNAUTHORIZED, exc.message) from None

    def _expires_in(self) -> int | None:
        if self.principal is None or self.principal.expires_at is None:
            return None
        return max(0, int(self.principal.expires_at - self.host.clock.wall()))

    async def _refresh(self, params: JSONObject) -> JSONObject:
        token = protocol.param_str(params, "token", max_len=16384)
        assert token is not None
        try:
            principal = await self.host.authenticate(token)
        except AuthError as exc:
            self.host.metrics.auth_failures.add(1, {"reason": exc.reason})
            log_auth_failure(exc.reason, exc.message, where="refresh", conn=self.client_id)
            raise CommandError(ErrorCode.UNAUTHORIZED, exc.message) from None
        if self.principal is not None and principal.user != self.principal.user:
            raise CommandError(ErrorCode.FORBIDDEN, "the new token is for another user")
        self.principal = principal
        self.host.schedule_expiry(self)
        return {"expires_in": self._expires_in()}

    async def _join(self, params: JSONObject) -> JSONObject:
        return await self._join_room(params.get("room"), params.get("since"))

    async def _join_room(self, name: object, raw_since: object) -> JSONObject:
        host = self.host
        room = rules.check_room(name)
        options = rules.room_options(host.settings, room)
        since = protocol.param_since(raw_since)
        if room in self.rooms:
            raise CommandError(ErrorCode.CONFLICT, "already joined")
        if len(self.rooms) >= host.settings.max_rooms_per_connection:
            raise CommandError(ErrorCode.TOO_MANY, "too many rooms on this connection")
        assert self.principal is not None
        rules.check_join(self.principal.rooms, room, options)
        # Recorded before the host's awaits: a connection that ends meanwhile leaves the room in `cleanup`.
        self.rooms[room] = options
        try:
            found = await host.join_room(self, room, since, options)
        except BaseException:
            # The host has undone its part; `cleanup` may have left the room meanwhile too.
            self.rooms.pop(room, None)
            raise
        recovered, pubs = recover(since, found)
        published = protocol.publications_json(pubs)
        if recovered and pubs and len(protocol.dumps(published)) > host.settings.max_queue_bytes // 2:
            # A reply that large would trip the slow-consumer limit by itself: say what is true instead.
            recovered, published = False, []

        async def finish() -> None:
            await host.complete_join(self, room, found, options)

        self._after.append(finish)
        return {
            "epoch": found.epoch,
            "offset": found.offset,
            "recovered": recovered,
            "publications": published,
        }

    def presence_entry(self) -> JSONObject:
        """What the room's presence says of this connection."""
        entry: JSONObject = {"user": self.user}
        if self.principal is not None and self.principal.info is not None:
            entry["info"] = self.principal.info
        return entry

    async def _leave(self, params: JSONObject) -> JSONObject:
        room = rules.check_room(params.get("room"))
        if room not in self.rooms:
            raise CommandError(ErrorCode.CONFLICT, "not joined")
        await self._leave_room(room)
        return {}

    async def _leave_room(self, room: Room) -> None:
        options = self.rooms.pop(room)
        await self.host.leave_room(self, room, options)

    async def _publish(self, params: JSONObject) -> JSONObject:
        room = rules.check_room(params.get("room"))
        options = rules.room_options(self.host.settings, room)
        assert self.principal is not None
        rules.check_publish(self.principal.publish, room, options)
        if "data" not in params:
            raise CommandError(ErrorCode.BAD_REQUEST, "`data` is required")
        key = protocol.param_idempotency_key(params.get("idempotency_key"))
        result = await self.host.publish(room, params["data"], key, options, info=self.client_info(), source="ws")
        return {"epoch": result.epoch, "offset": result.offset}

    async def _history(self, params: JSONObject) -> JSONObject:
        room = rules.check_room(params.get("room"))
        options = rules.room_options(self.host.settings, room)
        assert self.principal is not None
        rules.check_read(self.principal.rooms, room)
        since = protocol.param_since(params.get("since"))
        limit = protocol.param_limit(params.get("limit"))
        return await self.host.history(room, since, limit, options)

    async def _presence(self, params: JSONObject) -> JSONObject:
        room = self._presence_room(params)
        clients = await self.host.presence(room)
        return {"clients": clients}

    async def _presence_stats(self, params: JSONObject) -> JSONObject:
        room = self._presence_room(params)
        stats = await self.host.presence_stats(room)
        return {"clients": stats.clients, "users": stats.users}

    def _presence_room(self, params: JSONObject) -> Room:
        room = rules.check_room(params.get("room"))
        options = rules.room_options(self.host.settings, room)
        assert self.principal is not None
        rules.check_read(self.principal.rooms, room)
        if not options.presence:
            raise CommandError(ErrorCode.FORBIDDEN, "presence is disabled in this namespace")
        return room

    _handlers: Final[dict[str, Callable[[Session, JSONObject], Awaitable[JSONObject]]]] = {
        "connect": _connect,
        "refresh": _refresh,
        "join": _join,
        "leave": _leave,
        "publish": _publish,
        "history": _history,
        "presence": _presence,
        "presence_stats": _presence_stats,
    }

    # --- teardown ---------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Leave every room after the socket is gone; never raises."""
        self.state = State.CLOSED
        for room in list(self.rooms):
            try:
                await self._leave_room(room)
            except BackendUnavailable as exc:
                # Redis down or slow. The node has let go already (membership, subscription, the presence
                # entry it refreshes); what Redis still holds, the entry, expires within presence_ttl, and
                # the room's other members miss this leave push. When Redis fails every disconnect fails
                # alike: a few lines a minute, with a count of the rest.
                CLEANUP_FAILURES.log(
                    logging.WARNING,
                    "backend",
                    "leaving %s for closed connection %s failed (%s): its presence entry expires on its own",
                    room,
                    self.client_id,
                    exc,
                )
            except Exception:
                log.exception("cleanup of room %s failed for %s", room, self.client_id)
