"""The events a client reports: connection states, disconnects, failed attempts, re-joins, refreshes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hubbub_client.errors import CommandRejected
from hubbub_client.models import StreamPosition


class ConnectionState(enum.Enum):
    """Where the client is in its lifecycle. `CLOSED` is final."""

    IDLE = "idle"  # created, `connect()` not called yet
    CONNECTING = "connecting"  # opening a WebSocket and waiting for the `connect` reply
    CONNECTED = "connected"  # the `connect` reply arrived; commands flow
    RECONNECTING = "reconnecting"  # the connection was lost; waiting before the next attempt
    CLOSED = "closed"  # `close()` was called, or a terminal close code was received


@dataclass(frozen=True, slots=True)
class Disconnection:
    """An established connection ended (or the client closed before any).

    `code` is the close code (from the server's `disconnect` push or the close frame); None when the
    connection broke without one (network error, heartbeat timeout detected by the client).
    `reconnect` is what the client does next: False means the client is now `CLOSED`.
    `delay` is the wait before the next attempt (None when not reconnecting).
    """

    code: int | None
    reason: str
    reconnect: bool
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class ConnectError:
    """An attempt to (re)connect failed before a `connect` reply (e.g. connection refused)."""

    attempt: int  # failures in a row, 1 for the first
    error: BaseException
    delay: float  # seconds until the next attempt


@dataclass(frozen=True, slots=True)
class Rejoin:
    """A room was joined again after a reconnect (or joined with `since`), recovered or not.

    `recovered` True: every publication after `previous` is delivered (in order, before live ones).
    `recovered` False: publications were lost (history gone, or a new epoch): the application must
    resynchronise the room from its own source of truth. `error` is set when the room could not be
    joined again at all (the room is then closed and its iterator raises the error).
    """

    room: str
    recovered: bool
    previous: StreamPosition | None
    position: StreamPosition | None
    error: CommandRejected | None = None

    @property
    def epoch_changed(self) -> bool:
        return self.previous is not None and self.position is not None and self.previous.epoch != self.position.epoch


@dataclass(frozen=True, slots=True)
class TokenRefresh:
    """A token refresh was attempted: `expires_in` from the server on success, or the `error`."""

    expires_in: int | None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
