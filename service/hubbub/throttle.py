"""Log lines that something outside the node can repeat at will, kept within bounds.

Two shapes of repetition, one helper each; both pure (the clock is a parameter) and both count
what they hold back, so the log stays truthful while it stays short:

- `Throttle`: events of a *kind* caused by others (refused API keys, failed tokens, refused origins).
  At most `per_interval` lines per kind per interval; the next line of that kind says how many
  were held back. Anyone on the network can cause these, so the log must not amplify them.
- `RepeatedError`: one failure that recurs while a dependency is down (Redis during an outage,
  retried every second or faster). The first occurrence is logged, then again after 1 s, 2 s,
  4 s … up to a line a minute, each saying how often it happened since the previous line; and
  one line when it recovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

#: Distinct messages of one outage logged as they first appear (a changed cause is news, e.g. a timeout
#: that turns into a refused password); beyond it a new message waits its turn like a repeated one.
NEW_MESSAGES_PER_OUTAGE: Final = 8


class Throttle:
    """At most `per_interval` lines per kind in any `interval` seconds; the rest are counted.

    Kinds are chosen by the code (a fixed set such as "api_key" or an AuthError reason), never by a
    client, so the per-kind state is bounded by the program, not by the traffic.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_interval: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_interval = per_interval
        self.interval = interval
        self._clock = clock
        #: kind → [start of its window, lines logged in it, events held back since its last line]
        self._kinds: dict[str, list[float]] = {}

    def _state(self, kind: str) -> list[float]:
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = [-float("inf"), 0, 0]
        return state

    def held(self, kind: str) -> int:
        """Events of `kind` held back since its last line."""
        state = self._kinds.get(kind)
        return int(state[2]) if state is not None else 0

    def hold(self, kind: str) -> None:
        """Count one event of `kind` that the caller decided not to log (it is reported with the next line)."""
        self._state(kind)[2] += 1

    def admit(self, kind: str) -> int | None:
        """May a line of `kind` be logged now? None: no (the event is counted); otherwise yes, and how many
        events were held back since the previous line (the caller says so in this one)."""
        state = self._state(kind)
        now = self._clock()
        if now - state[0] >= self.interval:
            state[0], state[1] = now, 0
        if state[1] >= self.per_interval:
            state[2] += 1
            return None
        state[1] += 1
        held, state[2] = int(state[2]), 0
        return held

    def log(self, level: int, kind: str, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> bool:
        """Log `msg % args` unless `kind` has had its lines this interval; True if it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        held = self.admit(kind)
        if held is None:
            return False
        if held:
            msg += f" ({held} more like this not logged since the previous line)"
        self.logger.log(level, msg, *args, extra=extra)
        return True


class RepeatedError:
    """One recurring failure (`what`, e.g. "redis unreachable"), logged with backoff and a count.

    Call `failed(message)` on every failed attempt and `recovered()` on every successful one; the
    instance decides what reaches the log:

        first failure        WARNING  redis unreachable: Connection refused
        after 1 s, 2 s, 4 s … (at most `cap` apart)
                             WARNING  redis unreachable: Connection refused (repeated 7 times in the last 4 s)
        a new message        logged at once (a changed cause is news), up to NEW_MESSAGES_PER_OUTAGE per outage
        first success after  WARNING  redis unreachable: recovered after 4 s (12 failures)

    Not thread-safe: one instance belongs to one loop's task.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        first: float = 1.0,
        cap: float = 60.0,
        recovery: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        #: The recovery line's words ("redis reachable again"); default "<what>: recovered".
        self.recovery = recovery or f"{what}: recovered"
        self.level = level
        self.first = first
        self.cap = cap
        self._clock = clock
        #: When the current outage began (None: no outage).
        self.since: float | None = None
        #: Failures in the current outage.
        self.failures = 0
        self._gap = first
        self._last_line = 0.0
        self._held = 0
        self._seen: set[str] = set()

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, message: str) -> bool:
        """Note one failed attempt; True if it was logged."""
        now = self._clock()
        self.failures += 1
        if self.since is None:
            self.since = now
            self._gap = self.first
            self._seen = {message}
            self._emit(now, f"{self.what}: {message}")
            return True
        if message not in self._seen and len(self._seen) < NEW_MESSAGES_PER_OUTAGE:
            self._seen.add(message)
            self._emit(now, f"{self.what}: {message}{self._repeats(now)}")
            return True
        if now - self._last_line < self._gap:
            self._held += 1
            return False
        self._held += 1  # this one is among the repetitions the line counts
        self._emit(now, f"{self.what}: {message}{self._repeats(now)}")
        self._gap = min(self._gap * 2, self.cap)
        return True

    def recovered(self) -> bool:
        """Note one successful attempt; True if it ended an outage (and said so)."""
        if self.since is None:
            return False
        now = self._clock()
        count = self.failures
        self.logger.log(
            self.level, "%s after %s (%d failure%s)", self.recovery, _span(now - self.since), count, "s" * (count != 1)
        )
        self.since = None
        self.failures = 0
        self._held = 0
        return True

    def _repeats(self, now: float) -> str:
        if not self._held:
            return ""
        held, self._held = self._held, 0
        return f" (repeated {held} time{'s' * (held != 1)} in the last {_span(now - self._last_line)})"

    def _emit(self, now: float, text: str) -> None:
        self._last_line = now
        self.logger.log(self.level, "%s", text)


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
