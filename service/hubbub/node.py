"""The node: one process's sessions, rooms, backends, timers and lifecycle (start, drain, stop).

Heartbeats and timeouts of every connection are driven by one ticker task per node (see
`timers`), so an idle connection costs no task and no timer handle. The node is each session's
`SessionHost` (hubbub.session): the sessions know it only through that Protocol. Every time it
acts on comes from its `clock`, which tests replace with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from hubbub import __version__, pacing, protocol
from hubbub.activity import Activity
from hubbub.auth import Principal
from hubbub.backends import Backends
from hubbub.backends.base import BackendUnavailable, HistoryResult, PresenceStats, PublishResult, StreamOptions
from hubbub.codes import CloseCode, CommandError, ErrorCode
from hubbub.hub import Hub
from hubbub.metrics import LagProbe, Metrics
from hubbub.outbox import Flusher
from hubbub.preflight import make_authenticator
from hubbub.protocol import StreamPosition
from hubbub.session import Session, State
from hubbub.settings import NamespaceOptions, Settings
from hubbub.timers import SYSTEM_CLOCK, Clock, DeadlineHeap, FixedDelayQueue
from hubbub.tracing import Tracing
from hubbub.types import JSON, ClientId, JSONObject, Room

log = logging.getLogger("hubbub.node")

#: Seconds between two samples of every connection's queued bytes (hubbub_outbound_queue_bytes).
QUEUE_SAMPLE_INTERVAL = 5.0
#: The reason of a shed connection's 1012 close: clients and logs tell it from a drain ("node draining").
SHED_REASON = "rebalancing"


@dataclass(frozen=True, slots=True)
class Shedding:
    """What a shed request started: how many connections will be closed, and whether it replaced a running one."""

    connections: int
    replaced: bool


#: Timer entries hold weak references: an entry is cancelled lazily, and a strong one would keep a gone
#: connection's session, outbox and socket (the server's protocol object and its buffers) alive until the
#: entry fell due, up to `ping_interval` later, so memory would track the disconnect rate of that window.
SessionRef = weakref.ref[Session]


def _live(entries: Iterator[tuple[float, SessionRef]]) -> Iterator[tuple[float, Session]]:
    for due, ref in entries:
        session = ref()
        if session is not None:
            yield due, session


def _client_side_reason(code: int) -> str:
    if code == 1006:
        return "connection lost"
    return "closed by the client" if code in (1000, 1001) else f"client closed with {code}"


def _expiry_stands(due: float, ref: SessionRef) -> bool:
    session = ref()
    return session is not None and session.expire_due == due


class Node:
    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backends = backends
        self.metrics = metrics or Metrics(settings.node_name)
        #: None when tracing is off: traced call sites test this once and then call no OpenTelemetry code.
        self.tracing = tracing or Tracing.from_settings(settings)
        self.activity = Activity()
        self.hub = Hub(self.metrics, self.activity)
        self.auth = make_authenticator(settings)
        self.loop = asyncio.get_event_loop()
        self.flusher = Flusher(self.loop)
        self.started_at = clock.wall()
        #: Every open WebSocket (connected or not yet), for capacity, draining and cleanup checks.
        self.sessions: set[Session] = set()
        self._by_user: dict[str, weakref.WeakSet[Session]] = {}
        self.draining = False
        #: Set once draining starts closing connections: new ones are closed with 1012 at once.
        self.closing = False
        self._connect_q: FixedDelayQueue[SessionRef] = FixedDelayQueue(settings.connect_timeout)
        self._ping_q: FixedDelayQueue[SessionRef] = FixedDelayQueue(settings.ping_interval)
        self._pong_q: FixedDelayQueue[SessionRef] = FixedDelayQueue(settings.pong_timeout)
        self._expiry: DeadlineHeap[SessionRef] = DeadlineHeap()
        self._ticker: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._shedder: asyncio.Task[None] | None = None
        self.drained = asyncio.Event()
        self._sampled = 0.0
        self._queues_sampled = 0.0
        self.metrics.describe_node(version=__version__, backend=backends.kind, max_connections=settings.max_connections)
        self.metrics.ready.source = lambda: 1 if self.readiness()[0] else 0
        self.metrics.presence_entries.source = backends.presence.local_entries
        self._lag = LagProbe(self.metrics.event_loop_lag)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.flusher = Flusher(self.loop)
        await self.backends.start(self.hub if self.tracing is None else self.tracing.handler(self.hub), self)
        self._ticker = self.loop.create_task(self._tick_forever())
        self._lag.start(self.loop)

    async def stop(self) -> None:
        self._lag.stop()
        for task in (self._ticker, self._drainer, self._shedder):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.backends.aclose()
        await self.auth.aclose()
        self.metrics.shutdown()
        if self.tracing is not None:
            # Exports what is buffered: up to the exporter's timeout when the receiver is down, so off the loop.
            await asyncio.to_thread(self.tracing.shutdown)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if len(self.sessions) >= self.settings.max_connections:
            return False, "at connection capacity"
        if not self.backends.broker.available:
            return False, "broker unavailable"
        return True, "ready"

    @property
    def full(self) -> bool:
        return len(self.sessions) >= self.settings.max_connections

    # --- sessions -----------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """A new connection: counted, its `connect_timeout` running; closed at once (1012) once draining
        closes connections, or (1013) over `max_connections`."""
        self.sessions.add(session)
        self.metrics.connections.add(1)
        session.connect_due = self._connect_q.add(weakref.ref(session), self.clock.monotonic())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection opened", extra={"conn": session.client_id, "user": session.user})
        if self.closing:
            self.metrics.refused("draining")
            session.close(CloseCode.DRAINING)
        elif len(self.sessions) > self.settings.max_connections:
            self.metrics.refused("capacity")
            session.close(CloseCode.OVERLOADED)

    async def authenticate(self, token: str) -> Principal:
        return await self.auth.authenticate(token)

    def session_connected(self, session: Session) -> None:
        session.connect_due = None
        now = self.clock.monotonic()
        session.ping_due = self._ping_q.add(weakref.ref(session), now)
        self._by_user.setdefault(session.user, weakref.WeakSet()).add(session)
        self.schedule_expiry(session)
        self.metrics.connects.add(1)
        self.activity.connects += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connected", extra={"conn": session.client_id, "user": session.user})

    def schedule_expiry(self, session: Session) -> None:
        principal = session.principal
        replaced = session.expire_due is not None
        if principal is None or principal.expires_at is None:
            session.expire_due = None
        else:
            # Convert the wall-clock `exp` into the monotonic clock once, when scheduling.
            due = self.clock.monotonic() + max(0.0, principal.expires_at - self.clock.wall())
            session.expire_due = self._expiry.add(weakref.ref(session), due)
        if replaced:
            self._expiry.cancel(_expiry_stands)  # a refresh replaced the previous deadline

    async def detach(self, session: Session, code: int) -> None:
        """The socket is gone: release everything the session held. Never raises."""
        await session.cleanup()
        self.sessions.discard(session)
        users = self._by_user.get(session.user)
        if users is not None:
            users.discard(session)
            if not users:
                del self._by_user[session.user]
        had_expiry = session.expire_due is not None
        session.connect_due = session.ping_due = session.pong_due = session.expire_due = None
        if had_expiry:
            # The other timer entries fall due within seconds; a token deadline may be an hour away.
            self._expiry.cancel(_expiry_stands)
        self.metrics.connections.add(-1)
        final = session.close_code or code
        self.metrics.disconnected(final)
        self.activity.disconnected(final, session.close_reason or _client_side_reason(final), session.user)
        if log.isEnabledFor(logging.DEBUG):
            reason = session.close_reason or _client_side_reason(final)
            log.debug(
                "connection closed: %d %s", final, reason, extra={"conn": session.client_id, "user": session.user}
            )

    def sessions_of(self, user: str) -> list[Session]:
        return list(self._by_user.get(user, ()))

    # --- rooms, publish, history ----------------------------------------------------------

    def stream_options(self, options: NamespaceOptions) -> StreamOptions:
        return StreamOptions(
            history_size=options.history_size,
            history_ttl=options.history_ttl,
            idempotency_window=self.settings.idempotency_window,
            meta_ttl=max(self.settings.history_meta_ttl, options.history_ttl),
        )

    async def join_room(
        self, session: Session, room: Room, since: StreamPosition | None, options: NamespaceOptions
    ) -> HistoryResult:
        """The room's side of a join, up to its reply: the room's publications start buffering for the
        session, the node subscribes (a first local member) or waits for its subscription, the room's
        position (and with `since` what came after it) is read, and the session's presence entry added.
        What was done is undone when a step fails (or the connection's task is cancelled)."""
        outbox = session.outbox
        first = self.hub.begin_join(room, outbox)
        try:
            subscribed = self.hub.subscription(room)
            if first:
                try:
                    await self.backends.broker.subscribe(room)
                except BaseException:
                    subscribed.set_result(False)
                    raise
                subscribed.set_result(True)
            # A joiner must not read the room's position before the node receives its publications,
            # or what is published in between would reach nobody on this node.
            elif not await asyncio.shield(subscribed):
                raise BackendUnavailable("subscription to the room failed")
            # Recovery needs everything after `since`; without it only the position is needed.
            limit = options.history_size if since is not None else 0
            found = await self.backends.history.read(
                room, since=since.offset if since else None, limit=limit, options=self.stream_options(options)
            )
            if options.presence:
                await self.backends.presence.add(room, session.client_id, session.presence_entry())
        except BaseException:
            await self._release(room, session)
            raise
        return found

    async def complete_join(
        self, session: Session, room: Room, found: HistoryResult, options: NamespaceOptions
    ) -> None:
        """After the join reply went out: the session is a member, gets what was buffered after `found`, and
        the room's other members (with join/leave on) a join push."""
        self.hub.complete_join(room, session.outbox, found.epoch, found.offset)
        if options.join_leave:
            await self.backends.broker.publish_join(room, session.client_info())

    async def leave_room(self, session: Session, room: Room, options: NamespaceOptions) -> None:
        """Undo a join, completed or still in flight: membership, presence entry, a leave push."""
        await self._release(room, session)
        if options.presence:
            await self.backends.presence.remove(room, session.client_id)
        if options.join_leave:
            await self.backends.broker.publish_leave(room, session.client_info())

    async def _release(self, room: Room, session: Session) -> None:
        if self.hub.remove(room, session.outbox):
            await self.backends.broker.unsubscribe(room)

    async def publish(
        self,
        room: Room,
        data: JSON,
        idempotency_key: str | None,
        options: NamespaceOptions,
        *,
        info: JSONObject | None,
        source: str,
    ) -> PublishResult:
        # Encoded once: the size check needs the text, and the Redis broker sends that same text.
        encoded = protocol.encode_data(data, self.settings.max_publication_bytes)
        published = self.backends.broker.publish(
            room,
            data,
            info=info,
            idempotency_key=idempotency_key,
            options=self.stream_options(options),
            encoded=encoded,
        )
        tracing = self.tracing
        result = await (published if tracing is None else tracing.publish(room, source, self.backends.kind, published))
        if not result.duplicate:
            self.metrics.publications.add(1, {"source": source})
            self.activity.publications += 1
        return result

    async def history(
        self, room: Room, since: StreamPosition | None, limit: int, options: NamespaceOptions
    ) -> JSONObject:
        found = await self.backends.history.read(
            room, since=since.offset if since else None, limit=limit, options=self.stream_options(options)
        )
        pubs = found.publications
        if since is not None and since.epoch != found.epoch:
            pubs = []
        # Oldest first, and no more than half the outbound queue: a client pages on with `since`.
        budget = self.settings.max_queue_bytes // 2
        selected: list[JSONObject] = []
        for pub in protocol.publications_json(pubs):
            budget -= len(protocol.dumps(pub)) + 1
            if budget < 0 and selected:
                break
            selected.append(pub)
        return {"epoch": found.epoch, "offset": found.offset, "publications": selected}

    async def presence(self, room: Room) -> dict[ClientId, JSONObject]:
        return await self.backends.presence.get(room)

    async def presence_stats(self, room: Room) -> PresenceStats:
        return await self.backends.presence.stats(room)

    def disconnect_user(self, user: str, code: int, reason: str | None) -> int:
        """Close this node's connections of `user` (the cluster view reaches the other nodes)."""
        sessions = [s for s in self.sessions_of(user) if s.close_code is None]
        for session in sessions:
            session.close(CloseCode(code), reason)
        return len(sessions)

    def info(self) -> JSONObject:
        return {
            "name": self.settings.node_name,
            "connections": len(self.sessions),
            "rooms": len(self.hub),
            "draining": self.draining,
            "uptime": protocol.wire_number(round(self.clock.wall() - self.started_at, 1)),
            "backend": self.backends.kind,
            "ready": self.readiness()[0],
            **self.activity.snapshot(self.clock.monotonic()),
        }

    def room_count(self) -> int:
        return len(self.hub)

    def internals(self) -> JSONObject:
        """Counts of everything a connection can leave behind, for leak checks and the status page."""
        return {
            "sessions": len(self.sessions),
            "users": len(self._by_user),
            "hub_rooms": len(self.hub),
            "timer_entries": len(self._connect_q) + len(self._ping_q) + len(self._pong_q) + len(self._expiry),
            "tasks": len(asyncio.all_tasks(self.loop)),
            **self.backends.internals(),
        }

    # --- timers -------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        resolution = self.settings.timer_resolution
        clock = self.clock
        while True:
            await clock.sleep(resolution)
            try:
                now = clock.monotonic()
                self.tick(now)
                if now - self._sampled >= 1.0:
                    self._sampled = now
                    self.activity.sample(now)
                if now - self._queues_sampled >= QUEUE_SAMPLE_INTERVAL:
                    self._queues_sampled = now
                    # A list of ints, then one pass: ~0.5 ms for 10,000 connections (mostly empty queues).
                    self.metrics.queue_bytes.observe_sizes([s.outbox.pending for s in self.sessions])
            except Exception:
                log.exception("timer tick failed")

    def tick(self, now: float) -> None:
        for due, session in _live(self._connect_q.pop_due(now)):
            if session.connect_due == due and session.state is State.CONNECTING:
                session.close(CloseCode.UNAUTHORIZED, "no connect within connect_timeout")
        for due, session in _live(self._pong_q.pop_due(now)):
            if session.pong_due == due:
                session.close(CloseCode.HEARTBEAT_TIMEOUT)
        for due, session in _live(self._expiry.pop_due(now)):
            if session.expire_due == due and session.close_code is None:
                session.close(CloseCode.TOKEN_EXPIRED)
        for due, session in _live(self._ping_q.pop_due(now)):
            if session.ping_due == due and session.close_code is None:
                session.outbox.push(protocol.PING_PUSH)
                if session.pong_due is None:
                    session.pong_due = self._pong_q.add(weakref.ref(session), now)
                session.ping_due = self._ping_q.add(weakref.ref(session), now)

    # --- draining -------------------------------------------------------------------------------

    async def close_all(self, code: CloseCode, *, grace: float) -> None:
        """Close every connection at once and wait up to `grace` seconds for the closes to go out."""
        for session in list(self.sessions):
            session.close(code)
        deadline = self.clock.monotonic() + grace
        while self.sessions and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.02)

    def begin_drain(self) -> None:
        """SIGTERM: report unready at once, keep serving `drain_delay`, then close over `drain_period`."""
        if self.draining:
            return
        self.draining = True
        self.metrics.draining.add(1)
        if self._shedder is not None:
            self._shedder.cancel()  # the drain closes every connection: a shed would only race it
        log.warning(
            "draining: unready now, closing %d connections in %.1fs over %.1fs",
            len(self.sessions),
            self.settings.drain_delay,
            self.settings.drain_period,
        )
        self._drainer = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        clock = self.clock
        await clock.sleep(self.settings.drain_delay)
        self.closing = True
        closed = await pacing.close_evenly(
            self._open_sessions,
            lambda s: s.close(CloseCode.DRAINING),
            period=self.settings.drain_period,
            clock=clock,
        )
        # Give close handshakes a moment to finish before the server stops.
        deadline = clock.monotonic() + 3.0
        while self.sessions and clock.monotonic() < deadline:
            await clock.sleep(0.05)
        log.warning("drained: %d connections closed", closed)
        self.drained.set()

    def _open_sessions(self) -> list[Session]:
        return [s for s in self.sessions if s.close_code is None]

    # --- shedding (rebalancing) -----------------------------------------------------------------

    def shed(self, connections: int, period: float) -> Shedding:
        """Close `connections` of this node's open connections with 1012 ("rebalancing"), evenly over
        `period` seconds, so their clients reconnect (through the load balancer) to less loaded nodes.

        A shed already running is replaced, not extended: the caller (the operator) computes each
        request from the counts it sees now, which already reflect what the running one has closed.
        Raises CommandError 409 while draining: the drain closes everything anyway.
        """
        if self.draining:
            raise CommandError(ErrorCode.CONFLICT, "the node is draining: it closes all its connections anyway")
        replaced = self._shedder is not None and not self._shedder.done()
        if replaced:
            assert self._shedder is not None
            self._shedder.cancel()
        # Only connections open now: one that reconnects here meanwhile (the load balancer may send it
        # back) is not closed again.
        # Weakly: a shed may last minutes, and a gone connection's session, outbox and socket must not wait for it.
        began: weakref.WeakSet[Session] = weakref.WeakSet(self._open_sessions())
        count = min(connections, len(began))
        self._shedder = self.loop.create_task(self._shed(began, count, period)) if count else None
        log.info(
            "shedding %d of %d connections over %.1fs to rebalance%s",
            count,
            len(self.sessions),
            period,
            " (replacing the running shed)" if replaced else "",
        )
        return Shedding(count, replaced)

    async def _shed(self, began: weakref.WeakSet[Session], count: int, period: float) -> None:
        def close(session: Session) -> None:
            session.close(CloseCode.DRAINING, SHED_REASON)
            self.metrics.shed.add(1)

        def candidates() -> list[Session]:
            return [s for s in began if s.close_code is None]

        closed = await pacing.close_evenly(candidates, close, period=period, clock=self.clock, limit=count)
        log.info("shed %d connections to rebalance", closed)
