"""Where tokens come from (a fixed string or an application callback) and when to refresh them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

#: An application callback returning a fresh JWT; called for every (re)connect and every refresh.
TokenCallback: TypeAlias = Callable[[], Awaitable[str]]

#: Refresh this fraction of the lifetime before expiry...
REFRESH_FRACTION = 0.1
#: ...but never more than this many seconds before...
REFRESH_MAX_MARGIN = 30.0
#: ...and never less.
REFRESH_MIN_MARGIN = 1.0


def refresh_delay(expires_in: float) -> float:
    """Seconds from now until a token that expires in `expires_in` seconds should be refreshed.

    The margin before expiry is 10% of the remaining lifetime or 30 s, whichever is smaller, but at
    least 1 s (a refresh is a round trip, and the server checks expiry on a timer).
    """
    margin = max(REFRESH_MIN_MARGIN, min(REFRESH_FRACTION * expires_in, REFRESH_MAX_MARGIN))
    return max(0.0, expires_in - margin)


class TokenSource:
    """A fixed token, a callback, or nothing (servers that allow anonymous access)."""

    def __init__(self, token: str | TokenCallback | None) -> None:
        if token is not None and not isinstance(token, str) and not callable(token):
            raise TypeError("token must be a string, an async callable returning one, or None")
        self._token = token

    @property
    def refreshable(self) -> bool:
        """True when a new token can be asked for (a callback was given)."""
        return callable(self._token)

    async def get(self) -> str | None:
        """The token to present now: the fixed one, or a fresh one from the callback."""
        if self._token is None or isinstance(self._token, str):
            return self._token
        token = await self._token()
        if not isinstance(token, str) or not token:
            raise TypeError(f"the token callback must return a non-empty string, got {type(token).__name__}")
        return token
