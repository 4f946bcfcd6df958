"""Refused browser origins: one WARNING that names the origin and the setting to change, rate-limited.

A page on another origin that is not in `allowed_origins` sees only a failed WebSocket (browsers
hide the 403) or a failed module import, and retries forever; the server log is the one place
that can say why. The log must not become an amplifier either: anyone can send handshakes with
made-up `Origin` headers, so an origin is logged at most once per interval, at most
`per_interval` distinct origins are logged per interval, the memory of logged origins is
bounded, and what was held back is counted in the next line.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Final

from hubbub.throttle import Throttle

log = logging.getLogger("hubbub.origins")

#: What a browser sends as `Origin` (RFC 6454 serialisation): a suggestion to add it is safe to print.
_ORIGIN_RE: Final = re.compile(r"[a-z][a-z0-9+.\-]*://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
#: Longest origin quoted in the log; the rest is cut (the header is the client's to choose).
MAX_SHOWN: Final = 120


def advice(origin: str, allowed: Sequence[str]) -> str:
    """What to change so that a page on `origin` may connect, as a sentence for the log."""
    if origin == "null":
        return (
            "the page has an opaque origin (a file:// page or a sandboxed frame); serve it over http(s) "
            "and add that origin to allowed_origins"
        )
    if not _ORIGIN_RE.fullmatch(origin):
        return "not a browser origin; allowed_origins lists the origins that may connect"
    wanted = json.dumps([*allowed, origin])
    return f"add {json.dumps(origin)} to allowed_origins (HUBBUB_ALLOWED_ORIGINS='{wanted}')"


def shown(origin: str) -> str:
    """The origin as a JSON string (escapes whatever the header held), cut to MAX_SHOWN characters."""
    return json.dumps(origin if len(origin) <= MAX_SHOWN else origin[:MAX_SHOWN] + "…")


class OriginRefusals:
    """Counts refused origins and logs them within bounds (see the module docstring).

    The lines per interval and the count of what was held back are a `Throttle`'s (one kind, every
    origin); on top of it, an origin logged once stays quiet for an interval.
    """

    KIND: Final = "origin"

    def __init__(
        self,
        *,
        interval: float = 60.0,
        per_interval: int = 10,
        memory: int = 256,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval = interval
        self.memory = memory
        self._clock = clock
        self._log = logger
        self._throttle = Throttle(logger, per_interval=per_interval, interval=interval, clock=clock)
        #: origin → when it was last logged, oldest first; at most `memory` entries.
        self._logged: collections.OrderedDict[str, float] = collections.OrderedDict()

    @property
    def suppressed(self) -> int:
        """Refusals not logged since the last line."""
        return self._throttle.held(self.KIND)

    def refused(self, origin: str, what: str, allowed: Sequence[str]) -> bool:
        """Note that `what` ("a WebSocket", "/hubbub.js") was refused to `origin`; True if it was logged."""
        now = self._clock()
        last = self._logged.get(origin)
        if last is not None and now - last < self.interval:
            self._throttle.hold(self.KIND)
            return False
        held = self._throttle.admit(self.KIND)
        if held is None:
            return False
        self._logged[origin] = now
        self._logged.move_to_end(origin)
        while len(self._logged) > self.memory:
            self._logged.popitem(last=False)
        note = f" ({held} more refusal(s) not logged since the previous warning)" if held else ""
        self._log.warning("refused %s from origin %s: %s%s", what, shown(origin), advice(origin, allowed), note)
        return True


#: The process's one log of refused origins (a node is a process).
REFUSALS: Final = OriginRefusals()
