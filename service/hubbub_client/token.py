"""Where tokens come from (a fixed string or an application callback), and refreshing them before expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from hubbub_client.errors import ConnectionLost
from hubbub_client.events import TokenRefresh
from hubbub_client.models import JSONObject

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


async def keep_fresh(
    tokens: TokenSource,
    refresh: Callable[[str], Awaitable[JSONObject]],
    expires_in: float,
    report: Callable[[TokenRefresh], None],
) -> None:
    """Send `refresh` with a new token from `tokens` some margin before each expiry, until cancelled (the
    connection ended) or the server reports no expiry. A failed refresh is reported and retried while
    there is time; otherwise the server closes 4009 and the reconnect asks the callback again."""
    loop = asyncio.get_running_loop()
    expiry = loop.time() + expires_in
    delay = refresh_delay(expires_in)
    while True:
        await asyncio.sleep(delay)
        try:
            token = await tokens.get()
            if token is None:
                return
            ok = await refresh(token)
        except ConnectionLost:
            return
        except Exception as exc:
            report(TokenRefresh(None, exc))
            remaining = expiry - loop.time()
            if remaining <= 2 * REFRESH_MIN_MARGIN:
                return
            delay = min(5.0, remaining / 2)
            continue
        new = ok.get("expires_in")
        if not isinstance(new, int | float):
            report(TokenRefresh(None))
            return
        report(TokenRefresh(int(new)))
        expiry = loop.time() + new
        delay = refresh_delay(new)
