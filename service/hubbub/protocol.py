"""Wire format of protocol v1: decoding frames into commands, encoding replies and pushes.

Pure: no I/O, no clocks. Encoding uses orjson and falls back to the standard library only
for values orjson refuses (integers beyond 64 bits), so every JSON a client can send can be
echoed back. Frames are newline-delimited JSON objects (one or more per frame).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from hubbub.codes import CloseCode, CommandError, Disconnect, ErrorCode
from hubbub.types import JSON, JSONObject

SUBPROTOCOL: Final = "hubbub.v1.json"

#: Ids above 2**53 - 1 cannot be represented by JavaScript clients; they are a protocol violation.
MAX_COMMAND_ID: Final = 2**53 - 1
MAX_IDEMPOTENCY_KEY: Final = 128
MAX_HISTORY_LIMIT: Final = 1000
#: Deepest nesting of publication `data` (400 beyond): orjson's own encoding limit, so data is held to the
#: same bound whichever encoder takes it. Stored data is re-encoded later inside envelopes (pub push,
#: join/history replies: up to 4 more levels), by the standard library encoder once past orjson's limit,
#: which recurses on the interpreter's stack (limit 1000, shared with the call stack). Without a bound, data
#: a few levels short of that encoded once but not in its push (a gap for every member) nor in a history or
#: recovering join reply (close 1011 for anyone reading the room).
MAX_DATA_DEPTH: Final = 254

OPS: Final = frozenset(
    {"connect", "refresh", "join", "leave", "publish", "history", "presence", "presence_stats", "pong"}
)

PING_PUSH: Final = '{"push":"ping"}'


@dataclass(frozen=True, slots=True)
class Command:
    id: int  # 0 only for `pong`, which carries no id
    op: str
    params: JSONObject


@dataclass(frozen=True, slots=True)
class StreamPosition:
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Encoded:
    """Publication data still as the JSON text it arrived in, spliced into pushes as it is.

    A publication crosses Redis as text; a node that only relays it to its members need not decode
    and re-encode it (nor re-check it for integers beyond 64 bits, which decoding would round).
    `value()` decodes it for whoever does need the value.
    """

    text: str

    def value(self) -> JSON:
        return loads(self.text)


@dataclass(frozen=True, slots=True)
class Publication:
    offset: int
    data: JSON | Encoded
    ts: int
    info: JSONObject | None = None

    @property
    def value(self) -> JSON:
        """The data, decoded if it is still encoded."""
        data = self.data
        return data.value() if isinstance(data, Encoded) else data

    def to_json(self) -> JSONObject:
        out: JSONObject = {"offset": self.offset, "data": self.value, "ts": self.ts}
        if self.info is not None:
            out["info"] = self.info
        return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # `1e400` is valid JSON syntax but no double: refusing it beats silently publishing `null`.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# orjson turns integers beyond 64 bits into floats, silently losing digits; such texts are re-read exactly.
_LONG_INTEGER = re.compile(r"\d{19,}")


def loads(text: str | bytes) -> JSON:
    """Decode JSON strictly and exactly; raises ValueError on anything that is not RFC 8259 JSON."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson also refuses lone surrogate escapes, which are valid JSON: let the standard library judge.
        pass
    else:
        probe = text if isinstance(text, str) else text.decode("utf-8", "replace")
        if _LONG_INTEGER.search(probe) is None:
            return value
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def dumps(value: JSON) -> str:
    """Encode compactly; raises ValueError for values that are not JSON.

    The fallback escapes non-ASCII so that strings holding lone surrogates (legal as JSON escapes)
    still encode to valid UTF-8 on the wire.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"value is not JSON-encodable: {exc}") from exc


def decode_frame(text: str) -> list[Command]:
    """Split a text frame into commands. Raises Disconnect(4004) on anything malformed.

    Blank lines are ignored; a frame with no command at all is a violation. Ids must be unique
    within a frame, since every command of a frame is in flight at once.
    """
    commands: list[Command] = []
    seen: set[int] = set()
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            raise Disconnect(CloseCode.PROTOCOL_VIOLATION, "malformed JSON") from exc
        command = parse_command(obj)
        if command.id:
            if command.id in seen:
                raise Disconnect(CloseCode.PROTOCOL_VIOLATION, f"duplicate in-flight id {command.id}")
            seen.add(command.id)
        commands.append(command)
    if not commands:
        raise Disconnect(CloseCode.PROTOCOL_VIOLATION, "empty frame")
    return commands


def wire_number(value: float) -> int | float:
    """A quantity for the wire: whole values as integers (`25`, not `25.0`), so that a client decoding
    into an integer type (Go, Java) works for every default; fractional values stay fractional."""
    if isinstance(value, int):  # typed float, but an int passes too, and int has no is_integer() before 3.12
        return value
    return int(value) if value.is_integer() else value


def unknown_op_reason(op: JSON) -> str:
    """The close reason for a command without a known op: names it, within a close reason's 123 bytes."""
    if op is None:
        return "a command needs an op (connect, join, publish, ...)"
    if not isinstance(op, str):
        return "op must be a string (connect, join, publish, ...)"
    printable = "".join(c if " " <= c <= "~" else "?" for c in op[:24])
    shown = json.dumps(printable)
    close = difflib.get_close_matches(op, sorted(OPS), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else " (ops: connect, join, leave, publish, history, ...)"
    return f"unknown op {shown}{hint}"


def parse_command(obj: JSON) -> Command:
    if not isinstance(obj, dict):
        raise Disconnect(CloseCode.PROTOCOL_VIOLATION, "a command must be a JSON object")
    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Disconnect(CloseCode.PROTOCOL_VIOLATION, unknown_op_reason(op))
    raw_id = obj.get("id")
    if raw_id is None and op == "pong":
        return Command(0, op, obj)
    if type(raw_id) is not int or not 1 <= raw_id <= MAX_COMMAND_ID:
        raise Disconnect(CloseCode.PROTOCOL_VIOLATION, "id must be an integer from 1 to 2^53-1")
    return Command(raw_id, op, obj)


# --- parameter accessors: a bad parameter is a 400 reply, never a close -------------------------


def param_str(params: JSONObject, name: str, *, required: bool = True, max_len: int = 255) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise CommandError(ErrorCode.BAD_REQUEST, f"`{name}` is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise CommandError(ErrorCode.BAD_REQUEST, f"`{name}` must be a non-empty string of at most {max_len} chars")
    return value


def param_since(value: JSON) -> StreamPosition | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "`since` must be an object {epoch, offset}")
    epoch, offset = value.get("epoch"), value.get("offset")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise CommandError(ErrorCode.BAD_REQUEST, "`since.epoch` must be a string")
    if type(offset) is not int or not 0 <= offset <= MAX_COMMAND_ID:
        raise CommandError(ErrorCode.BAD_REQUEST, "`since.offset` must be a non-negative integer")
    return StreamPosition(epoch, offset)


def param_limit(value: JSON, default: int = 100) -> int:
    if value is None:
        return default
    if type(value) is not int or value < 0:
        raise CommandError(ErrorCode.BAD_REQUEST, "`limit` must be a non-negative integer")
    return min(value, MAX_HISTORY_LIMIT)


def param_idempotency_key(value: JSON) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise CommandError(
            ErrorCode.BAD_REQUEST, f"`idempotency_key` must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY}"
        )
    return value


def encode_data(data: JSON, limit: int) -> str:
    """Validate publication data: encodable, finite, and at most `limit` bytes once encoded."""
    if isinstance(data, float) and not math.isfinite(data):
        raise CommandError(ErrorCode.BAD_REQUEST, "`data` must be JSON")
    try:
        text = orjson.dumps(data).decode()  # refuses nesting beyond MAX_DATA_DEPTH itself
    except TypeError:
        # Integers beyond 64 bits, lone surrogates, or too deep: bound the depth before the recursive fallback.
        if _depth(data) > MAX_DATA_DEPTH:
            raise CommandError(ErrorCode.BAD_REQUEST, f"`data` is nested deeper than {MAX_DATA_DEPTH} levels") from None
        try:
            text = dumps(data)
        except ValueError as exc:
            raise CommandError(ErrorCode.BAD_REQUEST, "`data` must be JSON") from exc
    if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
        raise CommandError(ErrorCode.TOO_LARGE, f"publication data is larger than {limit} bytes")
    return text


def _depth(value: JSON) -> int:
    """Nesting depth of arrays and objects (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[JSON, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[JSON] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


# --- encoders ---------------------------------------------------------------------------------


def reply_ok(command_id: int, result: JSONObject) -> str:
    return dumps({"id": command_id, "ok": result})


def reply_error(command_id: int, code: int, reason: str) -> str:
    return dumps({"id": command_id, "error": {"code": code, "reason": reason}})


def error_body(code: int, reason: str) -> JSONObject:
    return {"error": {"code": code, "reason": reason}}


def pub_push(room: str, pub: Publication) -> str:
    data = pub.data
    if isinstance(data, Encoded):
        # The same members in the same order as the encoder writes them below.
        info = "" if pub.info is None else f',"info":{dumps(pub.info)}'
        return f'{{"push":"pub","room":{dumps(room)},"offset":{pub.offset},"data":{data.text},"ts":{pub.ts}{info}}}'
    out: JSONObject = {"push": "pub", "room": room, "offset": pub.offset, "data": data, "ts": pub.ts}
    if pub.info is not None:
        out["info"] = pub.info
    return dumps(out)


def presence_push(kind: str, room: str, info: JSONObject) -> str:
    return dumps({"push": kind, "room": room, "info": info})


def disconnect_push(code: int, reason: str, reconnect: bool) -> str:
    return dumps({"push": "disconnect", "code": code, "reason": reason, "reconnect": reconnect})


def publications_json(pubs: Iterable[Publication]) -> list[JSONObject]:
    return [p.to_json() for p in pubs]
