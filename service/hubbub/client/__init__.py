"""hubbub.client: an asyncio client for the hubbub WebSocket protocol v1 (see docs/client.md).

    async with Client("ws://localhost:8000/ws", token=get_token) as client:
        room = await client.join("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for pub in room:
            print(pub.offset, pub.data)

`connect()` raises `ConnectFailed` when the first connect cannot succeed (a wrong path, a refused origin,
an invalid token, or nothing within `connect_timeout`). Once connected, the client reconnects with
exponential backoff and full jitter, re-joins its rooms recovering missed publications (or says it could
not), queues publishes while offline with idempotency keys, answers the server's pings, and refreshes its
token before it expires.
"""

from __future__ import annotations

from hubbub.client.backoff import Backoff
from hubbub.client.client import Client
from hubbub.client.emitter import Emitter
from hubbub.client.errors import (
    ClientClosed,
    ClientError,
    CommandError,
    CommandTimeout,
    ConnectFailed,
    QueueFull,
)
from hubbub.client.events import ConnectError, ConnectionState, Disconnect, Rejoin, TokenRefresh
from hubbub.client.models import (
    ClientInfo,
    HistoryResult,
    JoinResult,
    Presence,
    PresenceEntry,
    PresenceEvent,
    PresenceStats,
    Publication,
    PublishResult,
    StreamPosition,
)
from hubbub.client.room import Room, RoomEvent
from hubbub.client.token import TokenCallback

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientInfo",
    "CommandError",
    "CommandTimeout",
    "ConnectError",
    "ConnectFailed",
    "ConnectionState",
    "Disconnect",
    "Emitter",
    "HistoryResult",
    "JoinResult",
    "Presence",
    "PresenceEntry",
    "PresenceEvent",
    "PresenceStats",
    "Publication",
    "PublishResult",
    "QueueFull",
    "Rejoin",
    "Room",
    "RoomEvent",
    "StreamPosition",
    "TokenCallback",
    "TokenRefresh",
]
