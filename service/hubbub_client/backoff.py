"""The reconnect delay schedule: exponential backoff with full jitter.

`delay = uniform(0, min(cap, base * 2**attempt))` where `attempt` counts failures since the last
successful connect (AWS architecture blog, "Exponential Backoff And Jitter"). Pure: the random
source is injectable, there is no clock and no I/O.
"""

from __future__ import annotations

import random
from typing import Protocol

#: Exponents beyond this cannot change the result (2**64 * any sane base is above any sane cap).
_MAX_EXPONENT = 64


class Uniform(Protocol):
    """What the schedule needs from a random source (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


class Backoff:
    """Delays before reconnect attempts; `reset()` after a successful connect."""

    def __init__(self, base: float = 0.5, cap: float = 20.0, *, rng: Uniform | None = None) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("backoff base and cap must be positive")
        if cap < base:
            raise ValueError("backoff cap must be at least the base")
        self.base = base
        self.cap = cap
        self.rng: Uniform = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Delays handed out since the last `reset()`."""
        return self._attempt

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay for the `attempt`-th retry (0-based)."""
        return min(self.cap, self.base * (1 << min(max(attempt, 0), _MAX_EXPONENT)))

    def next_delay(self) -> float:
        """The delay before the next attempt, drawn uniformly from [0, ceiling]; advances the schedule."""
        delay = self.rng.uniform(0.0, self.ceiling(self._attempt))
        self._attempt += 1
        return delay

    def jitter(self, upper: float) -> float:
        """A random delay in [0, upper] that does not advance the schedule (used after a drain, 1012)."""
        return self.rng.uniform(0.0, upper) if upper > 0 else 0.0

    def reset(self) -> None:
        self._attempt = 0
