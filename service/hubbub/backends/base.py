"""The backend contracts: Broker (publish and fan-out between nodes), History and Presence.

A node talks to its backends only through these Protocols, so the embedded (memory) and
Redis implementations are interchangeable; `tests/process/scaleout/test_backends.py` runs one conformance suite
against every implementation. Guarantees are stated on each method.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from hubbub.protocol import Publication
from hubbub.types import ClientId, JSONObject, Room


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Per-room storage options, resolved by the node from the room's namespace."""

    history_size: int
    history_ttl: float
    idempotency_window: float
    meta_ttl: float


@dataclass(frozen=True, slots=True)
class PublishResult:
    epoch: str
    offset: int
    #: True when the idempotency key was seen before: nothing was published, the first result is returned.
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    epoch: str
    #: The room's newest offset (0 for a room that never had a publication).
    offset: int
    publications: list[Publication]


@dataclass(frozen=True, slots=True)
class PresenceStats:
    clients: int
    users: int


#: Why a room's local members are closed 4011 (a metrics label: hubbub_insufficient_state_disconnects_total).
#: epoch_changed: a publication arrived in a new epoch (the room's history was lost, Redis restarted empty);
#: offsets_reused: Redis handed out offsets again after losing acknowledged writes (a new epoch is started);
#: history_lost: a backfill found a new epoch; history_trimmed: the offsets to backfill are gone from the
#: stream (trimmed or expired); backfill_exhausted: a gap was still open after every backfill attempt.
InsufficientStateCause = Literal[
    "epoch_changed", "offsets_reused", "history_lost", "history_trimmed", "backfill_exhausted"
]


class BackendUnavailable(Exception):
    """The backend cannot serve right now (answered 503; the client may retry)."""


class BrokerEventHandler(Protocol):
    """What a Broker calls on the node. Implemented by `hub.Hub`. Calls never block."""

    def on_publication(self, room: Room, epoch: str, pub: Publication) -> None: ...

    def on_join(self, room: Room, info: JSONObject) -> None: ...

    def on_leave(self, room: Room, info: JSONObject) -> None: ...

    def on_insufficient_state(self, room: Room, cause: InsufficientStateCause) -> None:
        """Publications of `room` were lost and cannot be backfilled: local members must recover (4011)."""


@runtime_checkable
class TracingEventHandler(BrokerEventHandler, Protocol):
    """A BrokerEventHandler of a tracing node (`tracing.TracedHandler`): a broker that carries messages to other
    processes passes the publisher's trace context along, and hands it back around the remote fan-out."""

    def traceparent(self) -> str | None:
        """The current span's context as a W3C traceparent, for a message that leaves the process."""

    def remote_parent(self, traceparent: object) -> AbstractContextManager[None]:
        """Fan-outs within this block continue `traceparent` (from another node's message, or None)."""


class Broker(Protocol):
    async def start(self, handler: BrokerEventHandler) -> None:
        """Begin delivering events for subscribed rooms to `handler`."""

    async def subscribe(self, room: Room) -> None:
        """Deliver this room's events to this node from now on (called when a first local member joins)."""

    async def unsubscribe(self, room: Room) -> None:
        """Stop delivering this room's events (called when the last local member left)."""

    async def publish(
        self,
        room: Room,
        data: object,
        *,
        info: JSONObject | None,
        idempotency_key: str | None,
        options: StreamOptions,
        encoded: str | None = None,
    ) -> PublishResult:
        """Atomically: check the idempotency key, assign the next offset, append to history, fan out.

        `encoded`, when given, is `data` as JSON text, already checked: a backend that needs the text
        uses it instead of encoding `data` again.

        Offsets start at 1 and grow by 1 per publication of a room within an epoch. Every subscribed
        node receives the publication through `on_publication`, in offset order.
        Raises BackendUnavailable when nothing was published.
        """

    async def publish_join(self, room: Room, info: JSONObject) -> None:
        """Fan a join event out to every subscribed node (best effort, not stored)."""

    async def publish_leave(self, room: Room, info: JSONObject) -> None:
        """Fan a leave event out to every subscribed node (best effort, not stored)."""

    @property
    def available(self) -> bool:
        """False while the backend cannot serve (the node reports unready)."""

    async def aclose(self) -> None: ...


class History(Protocol):
    async def read(self, room: Room, *, since: int | None, limit: int, options: StreamOptions) -> HistoryResult:
        """Publications of `room` with offset > `since`, oldest first, at most `limit`.

        Without `since`: the newest `limit` publications, oldest first. Always returns the room's current
        epoch (creating one on first use) and newest offset. Expired publications are never returned.
        """


class Presence(Protocol):
    async def add(self, room: Room, client: ClientId, entry: JSONObject) -> None:
        """Insert or refresh `client` in `room`; `entry` is {"user": ..., "conn_info"?: ...}."""

    async def remove(self, room: Room, client: ClientId) -> None: ...

    async def get(self, room: Room) -> dict[ClientId, JSONObject]: ...

    async def stats(self, room: Room) -> PresenceStats:
        """Counts connections and distinct users separately."""

    def local_entries(self) -> int:
        """Entries this node's connections hold (read when metrics are scraped: must be cheap)."""


class LocalNode(Protocol):
    """What a ClusterView needs from this node."""

    def info(self) -> JSONObject: ...

    def room_count(self) -> int:
        """Rooms with members on this node."""

    def disconnect_user(self, user: str, code: int, reason: str | None) -> int: ...


class ClusterView(Protocol):
    """The other nodes: who is alive, and operations that must reach every node."""

    async def start(self, local: LocalNode) -> None: ...

    async def nodes(self) -> list[JSONObject]:
        """Every live node's `info()`, this one included."""

    async def rooms(self) -> int:
        """Distinct rooms with members on any node (a room with members on two nodes counts once)."""

    async def disconnect_user(self, user: str, code: int, reason: str | None) -> int:
        """Close `user`'s connections on every node; the number closed."""

    async def aclose(self) -> None: ...
