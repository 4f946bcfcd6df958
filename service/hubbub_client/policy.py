"""What the client does after a connection ends, by close code (protocol §7 and §10), and which refused
upgrades end a first connect. Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

#: Protocol §7's close-code table as the client reads it: every code the server closes with, and whether
#: the server announces a reconnect after it. The server defines the same table (`hubbub.codes`); this
#: copy keeps the client free of server imports, and tests/unit/test_client_package.py holds the two equal.
RECONNECT_AFTER: Final[Mapping[int, bool]] = {
    1000: False,  # normal close
    1003: False,  # binary frames are not supported
    1009: False,  # frame too large
    1011: True,  # internal error
    1012: True,  # node draining
    1013: True,  # node full
    4000: False,  # disconnected by the server API
    4001: False,  # unauthorized
    4003: False,  # forbidden
    4004: False,  # protocol violation
    4008: True,  # slow consumer
    4009: True,  # token expired
    4010: True,  # heartbeat timeout
    4011: True,  # insufficient state
    4029: True,  # rate limited
}

#: Codes after which the client must not reconnect on its own (4001 only with a new token).
TERMINAL_CLOSE_CODES: Final = frozenset(code for code, again in RECONNECT_AFTER.items() if not again)

DRAINING: Final = 1012
UNAUTHORIZED: Final = 4001
TOKEN_EXPIRED: Final = 4009
INSUFFICIENT_STATE: Final = 4011


class Action(enum.Enum):
    STOP = "stop"  # terminal: never reconnect
    BACKOFF = "backoff"  # reconnect after an exponential-backoff delay with full jitter
    AT_ONCE = "at_once"  # reconnect immediately, recovering (4011)
    DRAIN_DELAY = "drain_delay"  # reconnect after a random delay, recovering (1012: node draining)
    FRESH_TOKEN = "fresh_token"  # fetch a new token through the callback, then reconnect at once (4009)
    RETRY_AUTH = "retry_auth"  # 4001: retry once, only if the callback yields a different token


def action_for(code: int | None, *, server_reconnect: bool | None = None, has_token_callback: bool) -> Action:
    """The reconnect decision for a connection that ended with close `code` (None: no close code).

    `server_reconnect` is the `reconnect` flag of the server's `disconnect` push, if one arrived; it
    decides only for codes outside the protocol table.
    """
    if code == UNAUTHORIZED:
        return Action.RETRY_AUTH if has_token_callback else Action.STOP
    if code == TOKEN_EXPIRED:
        # Reconnecting with the same static token would only fail again with 4001.
        return Action.FRESH_TOKEN if has_token_callback else Action.STOP
    if code in TERMINAL_CLOSE_CODES:
        return Action.STOP
    if code == INSUFFICIENT_STATE:
        return Action.AT_ONCE
    if code == DRAINING:
        return Action.DRAIN_DELAY
    if code is not None and code not in RECONNECT_AFTER and code >= 4000 and server_reconnect is False:
        return Action.STOP
    return Action.BACKOFF


#: 4xx refusals that say "later", not "never": request timeout, too early, rate limited.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


def refusal_is_terminal(status: int) -> bool:
    """Whether an HTTP refusal of the upgrade ends the *first* connect at once.

    A 4xx says the request itself is wrong — wrong path (404), missing or bad credentials (401), an
    origin the server refuses (403), a malformed upgrade (400), a version it does not speak (426) — and
    sending it again cannot succeed, except 408, 425 and 429. 5xx (503: starting or overloaded) may pass.
    Once the client has connected, every refusal is retried: behind an ingress a rollout can answer 404
    or 503 for a while.
    """
    return 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS
