"""Close codes and reply error codes of protocol v1: one table, defined once.

Every server-initiated close goes through `CloseCode`; the `reconnect` flag is what the
server announces in the `disconnect` push and what the project's clients obey.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CloseInfo:
    reason: str
    reconnect: bool


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    UNSUPPORTED_DATA = 1003
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    DRAINING = 1012
    OVERLOADED = 1013
    DISCONNECTED_BY_API = 4000
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    PROTOCOL_VIOLATION = 4004
    SLOW_CONSUMER = 4008
    TOKEN_EXPIRED = 4009
    HEARTBEAT_TIMEOUT = 4010
    INSUFFICIENT_STATE = 4011
    RATE_LIMITED = 4029

    @property
    def info(self) -> CloseInfo:
        return CLOSE_TABLE[self]


CLOSE_TABLE: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo("normal close", reconnect=False),
    CloseCode.UNSUPPORTED_DATA: CloseInfo("binary frames are not supported", reconnect=False),
    CloseCode.MESSAGE_TOO_BIG: CloseInfo("frame too large", reconnect=False),
    CloseCode.INTERNAL_ERROR: CloseInfo("internal error", reconnect=True),
    CloseCode.DRAINING: CloseInfo("node draining", reconnect=True),
    CloseCode.OVERLOADED: CloseInfo("node full", reconnect=True),
    CloseCode.DISCONNECTED_BY_API: CloseInfo("disconnected by the server API", reconnect=False),
    CloseCode.UNAUTHORIZED: CloseInfo("unauthorized", reconnect=False),
    CloseCode.FORBIDDEN: CloseInfo("forbidden", reconnect=False),
    CloseCode.PROTOCOL_VIOLATION: CloseInfo("protocol violation", reconnect=False),
    CloseCode.SLOW_CONSUMER: CloseInfo("slow consumer", reconnect=True),
    CloseCode.TOKEN_EXPIRED: CloseInfo("token expired", reconnect=True),
    CloseCode.HEARTBEAT_TIMEOUT: CloseInfo("heartbeat timeout", reconnect=True),
    CloseCode.INSUFFICIENT_STATE: CloseInfo("insufficient state", reconnect=True),
    CloseCode.RATE_LIMITED: CloseInfo("rate limited", reconnect=True),
}

#: Codes after which a client must not reconnect on its own (4001 only with a new token).
TERMINAL_CLOSE_CODES: frozenset[int] = frozenset(int(c) for c, i in CLOSE_TABLE.items() if not i.reconnect)


class ErrorCode(enum.IntEnum):
    """Reply error codes (`{"id": n, "error": {"code": ..., "reason": ...}}`), also used as HTTP statuses."""

    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    TOO_LARGE = 413
    TOO_MANY = 429
    INTERNAL = 500
    UNAVAILABLE = 503


class CommandError(Exception):
    """A command failed with a reply error; the connection stays open."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason


class Disconnect(Exception):
    """Raised inside a session to close the connection with a protocol close code."""

    def __init__(self, code: CloseCode, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason or code.info.reason
        super().__init__(f"{int(code)} {self.reason}")
