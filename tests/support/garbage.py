"""Garbage to send a node: wrong types and hostile values for every field of every command of protocol v1.

Shared by the process tests (tests/process/session/test_garbage.py, which sends it over real sockets, also in its seeded
fuzz run) and the in-process ones (tests/inprocess/test_session_inprocess.py, which sends it straight to sessions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.wsclient import token

#: Reply error codes a garbage command may earn (500 would be a server bug).
REPLY_CODES = frozenset({400, 401, 403, 404, 409, 413, 429})
#: The room of the process tests' bystanders, where the fuzzed publishes go.
BYSTAND_ROOM = "chat:bystand"
USER = "fuzz"


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim, for tokens `json.dumps` cannot produce (1e400, NaN, leading zeros...)."""

    text: str


def render(obj: object) -> str:
    raws: list[str] = []

    def default(value: object) -> object:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00raw{len(raws) - 1}\x00"
        raise TypeError(f"cannot encode {value!r}")

    text = json.dumps(obj, default=default)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw)
    return text


def nested(depth: int, leaf: object = 0) -> Raw:
    return Raw("[" * depth + render(leaf) + "]" * depth)


#: Wrong types and hostile values, tried in every field of every op.
GARBAGE: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -0.0,
    2**53,
    2**64 + 1,
    10**400,
    -(10**400),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("01"),
    Raw("1" * 5000),  # more digits than Python converts by default
    "",
    "x" * 300,
    "\x00",
    "\ud800",  # a lone surrogate, legal as a JSON escape only
    "\U0001f600",
    "chat:../../etc",
    "chat:" + "a" * 300,
    BYSTAND_ROOM,
    [],
    {},
    [1, [2, [3]]],
    {"epoch": 5, "offset": "x"},
    {"epoch": "e", "offset": -1},
    {"epoch": "e" * 100, "offset": 2**60},
    nested(254),
    nested(255),
    nested(1000),
    nested(1000, 10**30),
)

#: A well-formed command of each op; the fuzz breaks one field at a time.
TEMPLATES: dict[str, dict[str, Any]] = {
    "connect": {"token": "", "rooms": {"chat:fuzz": {"since": {"epoch": "e", "offset": 0}}}},
    "refresh": {"token": ""},
    "join": {"room": "chat:fuzz", "since": {"epoch": "e", "offset": 1}},
    "leave": {"room": "chat:fuzz"},
    "publish": {"room": BYSTAND_ROOM, "data": {"fuzz": True}, "idempotency_key": "k"},
    "history": {"room": "chat:fuzz", "since": {"epoch": "e", "offset": 0}, "limit": 10},
    "presence": {"room": "chat:fuzz"},
    "presence_stats": {"room": "chat:fuzz"},
    "pong": {},
}


def template(op: str, command_id: int) -> dict[str, Any]:
    command: dict[str, Any] = {"id": command_id, "op": op, **json.loads(json.dumps(TEMPLATES[op]))}
    if "token" in command:
        command["token"] = token(USER)
    if op == "pong":
        del command["id"]
    return command


def field_paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from field_paths(value, (*prefix, key))


def every_field(op: str) -> list[tuple[str, ...]]:
    return [("id",), ("op",), *field_paths(TEMPLATES[op])]


MISSING = object()


def mutated(op: str, command_id: int, path: tuple[str, ...], value: object) -> dict[str, Any]:
    """The template of `op` with the field at `path` set to `value` (or removed, for MISSING)."""
    command = template(op, command_id)
    target = command
    for key in path[:-1]:
        target = target[key]
    if value is MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return command
