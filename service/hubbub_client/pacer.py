"""`Pacer`: a client-side token bucket that keeps publishes under the server's inbound command rate.

The server answers 429 once a connection's bucket is empty and closes it with 4029 when the client
keeps going (protocol §7). A reconnect can release a whole offline backlog at once, so the client paces
its publishes itself, by default at half the server's default rate (100/s, burst 200). Pure: the caller
passes the clock.
"""

from __future__ import annotations

_EPSILON = 1e-9


class Pacer:
    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the publish rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    def reset(self, now: float) -> None:
        """A new connection: the server's bucket for it starts full, so does ours."""
        self._tokens = self.burst
        self._last = now

    def take(self, now: float) -> float:
        """Take a token and return 0.0, or return the seconds until one is available (taking nothing)."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0 - _EPSILON:  # a timer set for exactly the wait must find its token
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate
