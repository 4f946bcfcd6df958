"""The exceptions the client raises to applications."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubbub_client.events import Disconnection


class ClientError(Exception):
    """Base class of every error raised by `hubbub_client`."""


class CommandRejected(ClientError):
    """The server answered a command with an error reply (protocol §2); the connection stays open.

    `code` is the reply code: 400 bad params, 401, 403 forbidden, 404 unknown namespace, 409 conflict,
    413 too large, 429 rate limited / too many rooms, 500, 503 temporarily unavailable.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason

    @classmethod
    def from_json(cls, value: object) -> CommandRejected:
        """From an error body `{"code": ..., "reason": ...}` (a malformed one reads as 500)."""
        obj = value if isinstance(value, dict) else {}
        code, reason = obj.get("code"), obj.get("reason")
        return cls(code if type(code) is int else 500, reason if isinstance(reason, str) else "")


class CommandTimeout(ClientError, TimeoutError):
    """No reply within `command_timeout` (waiting for a connection included, except for queued publishes).

    For a publish the outcome is unknown; retrying with the same `idempotency_key` (given here) is safe.
    """

    def __init__(self, op: str, timeout: float, *, idempotency_key: str | None = None) -> None:
        super().__init__(f"{op}: no reply within {timeout:g} s")
        self.op = op
        self.timeout = timeout
        self.idempotency_key = idempotency_key


class QueueFull(ClientError):
    """The offline publish queue is at its bound (`max_queue`); the publish was not queued."""


class ClientClosed(ClientError):
    """The client is closed: by `close()`, or for good after a terminal close code.

    `disconnect` says why (None before the client ever connected).
    """

    def __init__(self, disconnect: Disconnection | None) -> None:
        detail = f": {disconnect.code} {disconnect.reason}" if disconnect is not None else ""
        super().__init__(f"client closed{detail}")
        self.disconnect = disconnect


class ConnectFailed(ClientClosed):
    """The client never connected and has given up: raised by `connect()` (and so `async with`).

    Either `connect_timeout` elapsed while every attempt failed, or an attempt failed in a way that
    retrying cannot fix: the server refused the WebSocket upgrade with a 4xx status other than 408,
    425 or 429 (404 wrong path, 401, 403 origin not allowed, 400, ...), the URL is invalid, or the
    server closed with a terminal close code such as 4001 (invalid token). The client is then `CLOSED`.
    `str()` of the error says what happened in one line, with the server's own words for a refusal.

    - `url`: what the client tried to reach;
    - `attempts`: connection attempts made;
    - `cause`: the last attempt's exception (None when the server closed with a close code: see
      `disconnect.code`);
    - `status`, `body`: for a refused upgrade, the HTTP status and the response body text (at most
      `MAX_BODY` characters); None otherwise.
    """

    #: Characters of a refusal's response body kept in `body`.
    MAX_BODY = 1000

    def __init__(
        self,
        message: str,
        *,
        url: str,
        disconnect: Disconnection,
        attempts: int,
        cause: BaseException | None = None,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(disconnect)
        self.args = (message,)  # what went wrong, e.g. "HTTP 404 from ws://host/: WebSocket endpoint is /ws"
        self.url = url
        self.attempts = attempts
        self.cause = cause
        self.status = status
        self.body = body[: self.MAX_BODY] if body is not None else None


class ConnectionLost(ClientError):
    """The connection ended while a command was in flight (internal: commands are retried on reconnect)."""
