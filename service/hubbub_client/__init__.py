"""hubbub_client: an asyncio client for the hubbub WebSocket protocol v1 (see docs/client.md).

    async with Client("ws://localhost:8000/ws", token=get_token) as client:
        room = await client.join("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for message in room:
            print(message.offset, message.data)

`connect()` raises `ConnectFailed` when the first connect cannot succeed (a wrong path, a refused origin,
an invalid token, or nothing within `connect_timeout`). Once connected, the client reconnects with
exponential backoff and full jitter, re-joins its rooms recovering missed publications (or says it could
not), queues publishes while offline with idempotency keys, answers the server's pings, and refreshes its
token before it expires.

It imports nothing of `hubbub`, not even the server's pure protocol modules: it needs only two things of
theirs, the JSON codec (`wire`) and the close-code table (`policy`), both small and both fixed by the
protocol, so it keeps its own copies and tests/unit/test_client_package.py holds them equal to the server's.
Importing them would have loaded the server's package for some 60 lines of it. So this package depends
on `websockets` and `orjson` alone (the `client` extra) and could ship as a distribution of its own;
import-linter holds it to that (pyproject.toml).

`hubbub.client` re-exports everything here, and still answers to the names this client had when it
lived there (`CommandError`, `Disconnect`, `Publication`), as deprecated aliases.
"""

from __future__ import annotations

from hubbub_client.backoff import Backoff
from hubbub_client.client import Client
from hubbub_client.emitter import Emitter
from hubbub_client.errors import (
    ClientClosed,
    ClientError,
    CommandRejected,
    CommandTimeout,
    ConnectFailed,
    QueueFull,
)
from hubbub_client.events import ConnectError, ConnectionState, Disconnection, Rejoin, TokenRefresh
from hubbub_client.models import (
    ClientInfo,
    HistoryResult,
    JoinResult,
    Message,
    Presence,
    PresenceEntry,
    PresenceEvent,
    PresenceStats,
    PublishResult,
    StreamPosition,
)
from hubbub_client.room import Room, RoomEvent
from hubbub_client.token import TokenCallback

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientInfo",
    "CommandRejected",
    "CommandTimeout",
    "ConnectError",
    "ConnectFailed",
    "ConnectionState",
    "Disconnection",
    "Emitter",
    "HistoryResult",
    "JoinResult",
    "Message",
    "Presence",
    "PresenceEntry",
    "PresenceEvent",
    "PresenceStats",
    "PublishResult",
    "QueueFull",
    "Rejoin",
    "Room",
    "RoomEvent",
    "StreamPosition",
    "TokenCallback",
    "TokenRefresh",
]
