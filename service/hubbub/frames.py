"""RFC 6455 framing, pure: the upgrade answer, server frames out, client frames in.

The server only ever sends unmasked, unfragmented frames; it accepts what a client may send:
masked frames, fragmented messages, control frames between fragments. Every violation is a
`FrameError` carrying the close code the connection must end with (1002, 1007 or 1009).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from typing import Final

_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # the C helper that ships with `websockets`; the fallback below is correct, only slower
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets is a dependency, its wheel has the extension
    _apply_mask = None

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
TOO_BIG: Final = 1009

_U16: Final = struct.Struct("!BBH")
_U64: Final = struct.Struct("!BBQ")
_CLOSE_CODE: Final = struct.Struct("!H")


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def header(opcode: int, length: int) -> bytes:
    """The header of an unmasked final frame carrying `length` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _U16.pack(first, 126, length)
    return _U64.pack(first, 127, length)


def text_frame(payload: bytes) -> bytes:
    return header(TEXT, len(payload)) + payload


def close_frame(code: int, reason: str) -> bytes:
    body = _CLOSE_CODE.pack(code) + reason.encode()[:123]
    return header(CLOSE, len(body)) + body


def pong_frame(payload: bytes) -> bytes:
    return header(PONG, len(payload)) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    if _apply_mask is not None:
        return bytes(_apply_mask(payload, mask))
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a received close frame (1005 when it has no code)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = _CLOSE_CODE.unpack_from(payload)
    if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) and not (3000 <= code <= 4999):
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None


#: Added to the opcode of a data message whose first frame had RSV1 set (permessage-deflate).
COMPRESSED: Final = 0x40


class FrameReader:
    """Incremental reader of client frames: `feed()` bytes, get back complete (opcode, payload) messages.

    Data messages come out whole (fragments joined), their opcode plus COMPRESSED when the
    peer compressed them (only allowed with `allow_compressed`); control frames come out as
    they arrive. A message larger than `max_size` is refused as soon as its length says so.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_size", "_opcode", "allow_compressed", "max_size")

    def __init__(self, max_size: int, *, allow_compressed: bool = False) -> None:
        self.max_size = max_size
        self.allow_compressed = allow_compressed
        self._buffer = b""
        self._opcode = 0  # the opcode of the message being reassembled; 0 when none
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            fin = first & 0x80
            opcode = first & 0x0F
            compressed = first & 0x40
            if first & 0x30 or (
                compressed and not (self.allow_compressed and opcode in (TEXT, BINARY) and self._fragments is None)
            ):
                raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated for them)")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            if opcode >= CLOSE:
                if length > 125 or not fin:
                    raise FrameError(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            elif length + self._fragments_size > self.max_size:
                raise FrameError(TOO_BIG, f"message larger than {self.max_size} bytes")
            if end - pos < head + 4 + length:
                break
            mask = buffer[pos + head : pos + head + 4]
            start = pos + head + 4
            payload = unmask(buffer[start : start + length], mask) if length else b""
            pos = start + length
            if opcode >= CLOSE:
                if opcode not in (CLOSE, PING, PONG):
                    raise FrameError(PROTOCOL_ERROR, f"unknown control opcode {opcode}")
                messages.append((opcode, payload))
            elif opcode == CONTINUATION:
                if self._fragments is None:
                    raise FrameError(PROTOCOL_ERROR, "continuation frame without a message to continue")
                self._fragments.append(payload)
                self._fragments_size += length
                if fin:
                    messages.append((self._opcode, b"".join(self._fragments)))
                    self._fragments, self._fragments_size, self._opcode = None, 0, 0
            elif opcode in (TEXT, BINARY):
                if self._fragments is not None:
                    raise FrameError(PROTOCOL_ERROR, "new message before the previous one was finished")
                if fin:
                    messages.append((opcode | compressed, payload))
                else:
                    self._fragments, self._fragments_size, self._opcode = [payload], length, opcode | compressed
            else:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._buffer = buffer[pos:] if pos < end else b""
        return messages
