"""Timer queues for heartbeats and timeouts: one ticker per node instead of a timer per connection.

Deadlines with the same delay are created in time order, so a plain deque is already sorted:
`FixedDelayQueue` is O(1) per operation. Entries are cancelled lazily: the owner checks, when an
entry comes due, whether it still stands (its own recorded deadline equals the entry's).
Variable deadlines (token expiry) use a heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


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
    __slots__ = ("_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._counter = itertools.count()

    def add(self, item: T, due: float) -> float:
        heapq.heappush(self._heap, (due, next(self._counter), item))
        return due

    def pop_due(self, now: float) -> Iterator[tuple[float, T]]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, item = heapq.heappop(heap)
            yield due, item

    def __len__(self) -> int:
        return len(self._heap)
