"""Local rooms: which of this node's connections are in which room, and fan-out to them.

The hub is the Broker's event handler. A publication is encoded once per node and the same
string is queued to every member. Joins happen in two steps so that no publication is missed
or duplicated while a join is in flight: `begin_join` buffers publications for the joiner,
`complete_join` delivers the buffered ones newer than the position the join reply reported.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from hubbub.activity import Activity
from hubbub.backends.base import InsufficientStateCause
from hubbub.codes import CloseCode
from hubbub.metrics import Metrics
from hubbub.outbox import Outbox
from hubbub.protocol import Publication, presence_push, pub_push
from hubbub.types import JSONObject, Room
from hubbub.ws.frames import text_frame


@dataclass(slots=True)
class _Room:
    #: Resolved True once the broker delivers this room's events to the node (False if that failed).
    subscribed: asyncio.Future[bool]
    members: dict[Outbox, None] = field(default_factory=dict)
    joining: dict[Outbox, list[tuple[str, Publication]]] = field(default_factory=dict)
    epoch: str = ""
    offset: int = 0


class Hub:
    def __init__(self, metrics: Metrics, activity: Activity) -> None:
        self._rooms: dict[Room, _Room] = {}
        self._metrics = metrics
        self._activity = activity

    def __len__(self) -> int:
        return len(self._rooms)

    def members(self, room: Room) -> int:
        state = self._rooms.get(room)
        return len(state.members) if state else 0

    def begin_join(self, room: Room, outbox: Outbox) -> bool:
        """Start buffering `room`'s publications for `outbox`. True when the node must subscribe."""
        state = self._rooms.get(room)
        first = state is None
        if state is None:
            state = self._rooms[room] = _Room(subscribed=asyncio.get_running_loop().create_future())
        state.joining[outbox] = []
        return first

    def subscription(self, room: Room) -> asyncio.Future[bool]:
        """Resolves when the node's subscription to `room` is in place; later joiners wait for it."""
        return self._rooms[room].subscribed

    def complete_join(self, room: Room, outbox: Outbox, epoch: str, offset: int) -> None:
        """Make `outbox` a member; deliver what was buffered after position (epoch, offset)."""
        state = self._rooms[room]
        buffered = state.joining.pop(outbox, [])
        if state.epoch != epoch or offset > state.offset:
            # The join's read is newer than anything delivered so far (or the epoch changed).
            state.epoch, state.offset = epoch, offset
        state.members[outbox] = None
        for pub_epoch, pub in buffered:
            if pub_epoch == epoch and pub.offset > offset:
                outbox.push(pub_push(room, pub))

    def remove(self, room: Room, outbox: Outbox) -> bool:
        """Drop `outbox` from `room` (member or still joining). True when the node should unsubscribe."""
        state = self._rooms.get(room)
        if state is None:
            return False
        state.members.pop(outbox, None)
        state.joining.pop(outbox, None)
        if not state.members and not state.joining:
            del self._rooms[room]
            return True
        return False

    # --- BrokerEventHandler ---------------------------------------------------------------

    def on_publication(self, room: Room, epoch: str, pub: Publication) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        if epoch == state.epoch and pub.offset <= state.offset:
            return  # already delivered (a backfill overlapping the live stream)
        state.epoch, state.offset = epoch, pub.offset
        for buffer in state.joining.values():
            buffer.append((epoch, pub))
        members = state.members
        if members:
            frame = pub_push(room, pub)
            # Framed once for every member: a member with nothing else queued gets these exact bytes.
            wire = text_frame(frame.encode())
            for outbox in members:
                outbox.push(frame, wire)
            self._metrics.deliveries.add(len(members))
            self._activity.deliveries += len(members)
        self._metrics.fanout_latency.observe(max(0.0, time.time() - pub.ts / 1000))

    def on_insufficient_state(self, room: Room, cause: InsufficientStateCause) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        closing = [outbox for outbox in [*state.members, *state.joining] if not outbox.closed]
        for outbox in closing:
            outbox.request_close(CloseCode.INSUFFICIENT_STATE)
        self._metrics.insufficient(cause, len(closing))

    def on_join(self, room: Room, info: JSONObject) -> None:
        self._presence_event("join", room, info)

    def on_leave(self, room: Room, info: JSONObject) -> None:
        self._presence_event("leave", room, info)

    def _presence_event(self, kind: str, room: Room, info: JSONObject) -> None:
        state = self._rooms.get(room)
        if state is None or not state.members:
            return
        frame = presence_push(kind, room, info)
        origin = info.get("client")
        for outbox in state.members:
            if outbox.client_id != origin:
                outbox.push(frame)
