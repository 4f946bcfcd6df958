"""Timer queues for heartbeats and timeouts: one ticker per node instead of a timer per connection.

Deadlines with the same delay are created in time order, so a plain deque is already sorted:
`FixedDelayQueue` is O(1) per operation. Entries are cancelled lazily: the owner checks, when an
entry comes due, whether it still stands (its own recorded deadline equals the entry's).
Variable deadlines (token expiry) use a heap.

Every time the node acts on (heartbeats, timeouts, token expiry, drain and shed pacing) is read
from one `Clock`, which tests replace with a fake one they advance by hand
(tests/support/inprocess.py): what takes 25 seconds of pings in production then takes none.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Where the node reads the time and waits for it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every deadline of the timer queues is on it."""

    def wall(self) -> float:
        """Seconds since the epoch: a token's `exp` is on this clock, converted once when scheduled."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on the monotonic clock."""


class SystemClock:
    """The real clocks: `time.monotonic` (the event loop's own clock), `time.time` and `asyncio.sleep`."""

    __slots__ = ()

    # The functions themselves, not methods calling them: a session reads the clock on every command.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class FixedDelayQueue(Generic[T]):
    __slots__ = ("_entries", "delay")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._entries: deque[tuple[float, T]] = deque()

    def add(self, item: T, now: float) -> float:
        due = now + self.delay
        self._entries.append((due, item))
        return due

    def pop_due(self, now: float) -> Iterator[tuple[float, T]]:
        entries = self._entries
        while entries and entries[0][0] <= now:
            yield entries.popleft()

    def __len__(self) -> int:
        return len(self._entries)


class DeadlineHeap(Generic[T]):
    """Variable deadlines, cancelled lazily too, but purged once cancelled entries are the majority.

    A deadline here can be hours away (a token's `exp`): left to come due, the entry of a closed
    connection would keep its session, outbox and socket buffers alive until then, so memory would
    grow with the connection churn of the last token lifetime. `cancel` counts cancellations and
    rebuilds the heap without stale entries when they could be half of it: amortised O(1) per
    cancellation, and a heap that is empty once every connection is gone.
    """

    __slots__ = ("_cancelled", "_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._counter = itertools.count()
        self._cancelled = 0

    def add(self, item: T, due: float) -> float:
        heapq.heappush(self._heap, (due, next(self._counter), item))
        return due

    def pop_due(self, now: float) -> Iterator[tuple[float, T]]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, item = heapq.heappop(heap)
            yield due, item

    def cancel(self, stands: Callable[[float, T], bool]) -> None:
        """Note that one entry no longer stands; purge every entry `stands` rejects once they may be half the heap."""
        self._cancelled += 1
        if self._cancelled * 2 >= len(self._heap):
            self._heap = [entry for entry in self._heap if stands(entry[0], entry[2])]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap)
