"""What a node has been doing lately, for the status page: totals, recent rates, recent disconnects.

Prometheus has the same counters (metrics.py) for dashboards and alerts; these are plain integers
the node can put in its registry entry, so one node can show the whole cluster without a
Prometheus server. Rates come from samples taken by the node's ticker, not from the hot path.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Final

from hubbub.protocol import wire_number
from hubbub.types import JSONObject

#: Seconds of samples a rate is computed over.
RATE_WINDOW: Final = 10.0
#: Disconnects kept for the status page, per node.
RECENT_DISCONNECTS: Final = 20


@dataclass(frozen=True, slots=True)
class DisconnectRecord:
    ts: int  # ms since the epoch
    code: int
    reason: str
    user: str


class Activity:
    """Counters are bumped by the node; `sample()` is called about once a second."""

    __slots__ = ("publications", "deliveries", "connects", "disconnects", "by_code", "recent", "_samples")

    def __init__(self) -> None:
        self.publications = 0
        self.deliveries = 0
        self.connects = 0
        self.disconnects = 0
        self.by_code: collections.Counter[int] = collections.Counter()
        self.recent: collections.deque[DisconnectRecord] = collections.deque(maxlen=RECENT_DISCONNECTS)
        self._samples: collections.deque[tuple[float, tuple[int, int, int, int]]] = collections.deque()

    def disconnected(self, code: int, reason: str, user: str) -> None:
        self.disconnects += 1
        self.by_code[code] += 1
        self.recent.append(DisconnectRecord(int(time.time() * 1000), code, reason, user))

    def _totals(self) -> tuple[int, int, int, int]:
        return (self.publications, self.deliveries, self.connects, self.disconnects)

    def sample(self, now: float) -> None:
        self._samples.append((now, self._totals()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def rates(self, now: float) -> dict[str, int | float]:
        """Per-second rates between the oldest sample in the window and the current totals."""
        names = ("publications", "deliveries", "connects", "disconnects")
        if not self._samples or now - self._samples[0][0] <= 0:
            return dict.fromkeys(names, 0)
        then, old = self._samples[0]
        elapsed = now - then
        return {
            name: wire_number(round((new - was) / elapsed, 2))
            for name, new, was in zip(names, self._totals(), old, strict=True)
        }

    def snapshot(self, now: float) -> JSONObject:
        return {
            "rates": self.rates(now),
            "totals": {
                "publications": self.publications,
                "deliveries": self.deliveries,
                "connects": self.connects,
                "disconnects": self.disconnects,
            },
            "disconnects": {
                "by_code": {str(code): count for code, count in sorted(self.by_code.items())},
                "recent": [
                    {"ts": r.ts, "code": r.code, "reason": r.reason, "user": r.user} for r in reversed(self.recent)
                ],
            },
        }
