"""Closing connections evenly over a period: the one pacing that draining (SIGTERM) and shedding
(`POST /api/shed`) share.

Closing every connection of a node at once would make all its clients reconnect in the same
instant, onto the other nodes (a thundering herd of handshakes, token checks and recoveries).
Closing them in proportion to the time elapsed spreads the reconnects evenly over `period`.

    closed = await close_evenly(open_sessions, close, period=20.0, clock=clock)            # draining
    closed = await close_evenly(open_sessions, close, period=10.0, limit=12, clock=clock)  # shedding

`target` is the arithmetic, kept pure for the unit tests; `close_evenly` is the loop around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from hubbub.timers import Clock

T = TypeVar("T")

#: Most seconds between two looks at the clock: a period of many connections closes a few per look.
TICK = 0.05


def target(total: int, elapsed: float, period: float) -> int:
    """How many of `total` closes are due `elapsed` seconds into a `period` (all of them once it is over)."""
    if period <= 0 or elapsed >= period:
        return total
    return min(total, math.ceil(total * max(0.0, elapsed) / period))


async def close_evenly(
    candidates: Callable[[], Sequence[T]],
    close: Callable[[T], None],
    *,
    period: float,
    clock: Clock,
    limit: int | None = None,
) -> int:
    """Close `limit` of the connections `candidates()` returns (None: all of them, including those that
    open meanwhile), spread evenly over `period` seconds; returns how many were closed.

    `candidates()` is asked again at each step and must leave out connections already closing. When
    fewer remain than planned (clients leave on their own), the plan shrinks with them.
    """
    started = clock.monotonic()
    closed = 0
    while True:
        open_now = candidates()
        total = closed + len(open_now) if limit is None else min(limit, closed + len(open_now))
        if closed >= total:
            return closed
        for item in open_now[: max(0, target(total, clock.monotonic() - started, period) - closed)]:
            close(item)
            closed += 1
        if closed >= total:
            return closed
        await clock.sleep(min(TICK, period / max(total, 1)) if period > 0 else 0)
