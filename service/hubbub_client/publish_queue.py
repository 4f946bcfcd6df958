"""`PublishQueue`: the client's publishes that have no reply yet, queued while offline and in flight while online.

Every publish carries an idempotency key (a uuid4 unless the caller gave one), so sending it again after
a lost reply never publishes twice (the server returns the first result within its idempotency window).
The queue of not-yet-sent publishes is bounded; publishes whose reply was lost to a disconnect go back to
its front, in their original order, whatever the bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from hubbub_client.errors import QueueFull
from hubbub_client.models import JSON, JSONObject, PublishResult


@dataclass(eq=False, slots=True)
class PendingPublish:
    room: str
    data: JSON
    idempotency_key: str
    future: asyncio.Future[PublishResult]
    #: Fires `command_timeout` after the last send; cancelled by the reply or a disconnect.
    timer: asyncio.TimerHandle | None = field(default=None)

    def params(self) -> JSONObject:
        return {"room": self.room, "data": self.data, "idempotency_key": self.idempotency_key}

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class PublishQueue:
    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self._queued: deque[PendingPublish] = deque()
        self._in_flight: dict[PendingPublish, None] = {}  # insertion-ordered set: send order

    @property
    def queued(self) -> int:
        """Publishes waiting for a connection."""
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        """Publishes sent on the current connection and not answered yet."""
        return len(self._in_flight)

    def enqueue(self, item: PendingPublish) -> None:
        """Queue a publish until the next connect; raises `QueueFull` at the bound."""
        if len(self._queued) >= self.max_queue:
            raise QueueFull(f"the offline publish queue is full ({self.max_queue} publishes)")
        self._queued.append(item)

    def pop(self) -> PendingPublish | None:
        """The next queued publish, skipping those the caller gave up on; None when the queue is empty."""
        while self._queued:
            item = self._queued.popleft()
            if not item.future.done():
                return item
        return None

    def sent(self, item: PendingPublish) -> None:
        self._in_flight[item] = None

    def answered(self, item: PendingPublish) -> bool:
        """The reply arrived (or the publish timed out); False if it was no longer in flight."""
        item.stop_timer()
        if item not in self._in_flight:
            return False
        del self._in_flight[item]
        return True

    def requeue_in_flight(self) -> None:
        """The connection ended: unanswered publishes go back to the front, to be sent again (same key)."""
        items = list(self._in_flight)
        self._in_flight.clear()
        for item in reversed(items):
            item.stop_timer()
            if not item.future.done():
                self._queued.appendleft(item)

    def fail_all(self, error: BaseException) -> None:
        items = [*self._in_flight, *self._queued]
        self._in_flight.clear()
        self._queued.clear()
        for item in items:
            item.stop_timer()
            if not item.future.done():
                item.future.set_exception(error)
