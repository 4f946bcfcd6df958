"""Typed views of the server's replies and pushes (protocol §3–§4), parsed from decoded JSON.

Parsing is strict about the fields the client relies on: a reply missing them raises
`ValueError`, which the connection treats as a protocol error from the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

#: A decoded JSON value (publication data is whatever the publisher sent).
JSON: TypeAlias = Any
JSONObject: TypeAlias = dict[str, Any]


def _int(obj: JSONObject, name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    return value


def _str(obj: JSONObject, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string, got {value!r}")
    return value


def _object(value: object, what: str) -> JSONObject:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a room's stream: its `epoch` and an `offset` (offsets start at 1; 0 means "before any")."""

    epoch: str
    offset: int

    def to_json(self) -> JSONObject:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_json(cls, obj: JSONObject) -> StreamPosition:
        return cls(_str(obj, "epoch"), _int(obj, "offset"))


#: The ok payload of `publish`: where the publication landed.
PublishResult: TypeAlias = StreamPosition


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a publication or a presence push is from: a user id, its connection id and the token's `info`."""

    user: str
    client: str
    info: JSONObject | None = None

    @classmethod
    def from_json(cls, value: object) -> ClientInfo:
        obj = _object(value, "info")
        extra = obj.get("info")
        return cls(_str(obj, "user"), _str(obj, "client"), extra if isinstance(extra, dict) else None)


@dataclass(frozen=True, slots=True)
class Message:
    """One publication of a room as the client delivers it: from a `pub` push, or from the `publications`
    of a join or history reply. `info` is None for publications made through the HTTP API."""

    room: str
    epoch: str
    offset: int
    data: JSON
    ts: int
    info: ClientInfo | None = None

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)

    @classmethod
    def from_json(cls, room: str, epoch: str, value: object) -> Message:
        obj = _object(value, "a publication")
        info = obj.get("info")
        return cls(
            room=room,
            epoch=epoch,
            offset=_int(obj, "offset"),
            data=obj.get("data"),
            ts=_int(obj, "ts"),
            info=ClientInfo.from_json(info) if info is not None else None,
        )


def _publications(room: str, epoch: str, value: object) -> list[Message]:
    if not isinstance(value, list):
        raise ValueError("`publications` must be a list")
    return [Message.from_json(room, epoch, item) for item in value]


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The ok payload of `join` (and of each room of `connect`): the room's newest position and what was
    recovered. `recovered` is False without `since`; when False, `publications` is empty."""

    room: str
    epoch: str
    offset: int
    recovered: bool
    publications: list[Message] = field(default_factory=list)

    @classmethod
    def from_json(cls, room: str, obj: JSONObject) -> JoinResult:
        epoch = _str(obj, "epoch")
        recovered = obj.get("recovered")
        if not isinstance(recovered, bool):
            raise ValueError("`recovered` must be a boolean")
        return cls(room, epoch, _int(obj, "offset"), recovered, _publications(room, epoch, obj.get("publications", [])))


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """The ok payload of `history`: the room's current position and the selected publications, oldest first."""

    room: str
    epoch: str
    offset: int
    publications: list[Message]

    @classmethod
    def from_json(cls, room: str, obj: JSONObject) -> HistoryResult:
        epoch = _str(obj, "epoch")
        return cls(room, epoch, _int(obj, "offset"), _publications(room, epoch, obj.get("publications", [])))


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One connection in a room's presence."""

    user: str
    info: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """The ok payload of `presence`: every connection in the room, by client id."""

    clients: dict[str, PresenceEntry]

    @property
    def users(self) -> set[str]:
        return {entry.user for entry in self.clients.values()}

    @classmethod
    def from_json(cls, obj: JSONObject) -> Presence:
        clients: dict[str, PresenceEntry] = {}
        for client_id, raw in _object(obj.get("clients"), "`clients`").items():
            entry = _object(raw, "a presence entry")
            extra = entry.get("info")
            clients[client_id] = PresenceEntry(_str(entry, "user"), extra if isinstance(extra, dict) else None)
        return cls(clients)


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """The ok payload of `presence_stats`: distinct connections and distinct users in the room."""

    clients: int
    users: int

    @classmethod
    def from_json(cls, obj: JSONObject) -> PresenceStats:
        return cls(_int(obj, "clients"), _int(obj, "users"))


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A `join` or `leave` push: someone else entered or left a room (namespaces with `join_leave`)."""

    kind: Literal["join", "leave"]
    room: str
    info: ClientInfo

    @classmethod
    def from_json(cls, obj: JSONObject) -> PresenceEvent:
        kind = obj.get("push")
        if kind not in ("join", "leave"):
            raise ValueError(f"not a presence push: {kind!r}")
        return cls("join" if kind == "join" else "leave", _str(obj, "room"), ClientInfo.from_json(obj.get("info")))


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """The ok payload of `connect` (rooms are handled by the client and not repeated here)."""

    client: str
    user: str
    expires_in: int | None
    ping_interval: float

    @classmethod
    def from_json(cls, obj: JSONObject) -> ConnectResult:
        expires_in = obj.get("expires_in")
        if expires_in is not None and not isinstance(expires_in, int | float):
            raise ValueError("`expires_in` must be a number or null")
        ping_interval = obj.get("ping_interval")
        if not isinstance(ping_interval, int | float) or ping_interval <= 0:
            raise ValueError("`ping_interval` must be a positive number")
        return cls(
            _str(obj, "client"),
            _str(obj, "user"),
            None if expires_in is None else int(expires_in),
            float(ping_interval),
        )
