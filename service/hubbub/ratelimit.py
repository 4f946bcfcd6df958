"""Rate limits: a connection's commands, and requests per client address.

TokenBucket: a command finding the bucket empty is answered 429; a client that keeps sending
anyway runs up a debt, and once the debt reaches the burst size the connection is closed (4029).
AddressLimiter: an open HTTP endpoint answers 429 with Retry-After once an address (or everyone
together) has used its share.
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


class AddressLimiter:
    """Requests per client address, for an endpoint anyone may call (the demo's token endpoint).

    Each address gets a bucket of `burst` requests refilled at `rate` per second; a refused request
    costs nothing (unlike TokenBucket, no debt: an HTTP client told to wait has not done harm yet).
    All addresses together share a second bucket `shared_factor` times larger, so that many addresses
    (a botnet, IPv6 addresses are plenty) cannot mint without bound either. The table keeps the
    `max_addresses` most recent addresses; a forgotten address starts again with a full bucket,
    which costs an attacker who cycles addresses the shared bucket all the same.
    """

    __slots__ = (
        "_buckets",
        "_max_addresses",
        "_shared",
        "_shared_last",
        "burst",
        "rate",
        "shared_burst",
        "shared_rate",
    )

    def __init__(self, rate: float, burst: int, *, max_addresses: int = 10_000, shared_factor: int = 10) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.shared_rate = rate * shared_factor
        self.shared_burst = float(burst * shared_factor)
        self._max_addresses = max_addresses
        #: address → (tokens, last refill); insertion order is recency order (moved on every use).
        self._buckets: dict[str, tuple[float, float]] = {}
        self._shared = self.shared_burst
        self._shared_last = 0.0

    def acquire(self, address: str, now: float) -> float:
        """0 when the request may go ahead (and is counted); otherwise the seconds until it may."""
        tokens, last = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        shared = min(self.shared_burst, self._shared + max(0.0, now - self._shared_last) * self.shared_rate)
        wait = max((1.0 - tokens) / self.rate, (1.0 - shared) / self.shared_rate, 0.0)
        if wait == 0.0:
            tokens -= 1.0
            shared -= 1.0
        self._buckets[address] = (tokens, now)
        self._shared, self._shared_last = shared, now
        if len(self._buckets) > self._max_addresses:
            del self._buckets[next(iter(self._buckets))]
        return wait
