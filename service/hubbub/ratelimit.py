"""Inbound command rate limiting: a token bucket that may go into debt.

A command finding the bucket empty is answered 429; a client that keeps sending anyway runs
up a debt, and once the debt reaches the burst size the connection is closed (4029).
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    ALLOW = 0
    REJECT = 1
    CLOSE = 2


class TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> Verdict:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return Verdict.ALLOW
        if self._tokens <= -self._burst:
            return Verdict.CLOSE
        return Verdict.REJECT
