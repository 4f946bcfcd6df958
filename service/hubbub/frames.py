"""RFC 6455 framing, pure: the upgrade answer, server frames out, client frames in.

The server only ever sends unmasked, unfragmented frames; it accepts what a client may send:
masked frames, fragmented messages, control frames between fragments. Every violation is a
`FrameError` carrying the close code the connection must end with (1002, 1007 or 1009).
docs/websocket.md ("Frames") says what is refused and how.
"""

from __future__ import annotations

import base64
import codecs
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
    """A close frame; the reason is cut to the 123 bytes a control frame has room for, between characters."""
    encoded = reason.encode()
    if len(encoded) > 123:
        encoded = encoded[:123].decode(errors="ignore").encode()  # drops only a character cut in two
    body = _CLOSE_CODE.pack(code) + encoded
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

_Utf8Decoder: Final = codecs.getincrementaldecoder("utf-8")


class _Partial:
    """A frame whose header has been read but not all of its payload: what came so far, unmasked."""

    __slots__ = ("compressed", "data", "fin", "left", "mask", "opcode")

    def __init__(self, fin: int, opcode: int, compressed: int, mask: bytes, length: int) -> None:
        self.fin = fin
        self.opcode = opcode
        self.compressed = compressed
        self.mask = mask
        self.left = length
        self.data = bytearray()


class FrameReader:
    """Incremental reader of client frames: `feed()` bytes, get back the messages they complete, in order.

    Data messages come out whole (fragments joined), their opcode plus COMPRESSED when the
    peer compressed them (only allowed with `allow_compressed`); control frames come out as
    they arrive. A message larger than `max_size` is refused as soon as its length says so.

    A close frame ends the stream: it is the last message returned and nothing after it is read.
    So does a violation: `feed()` still returns the messages that came before it, and sets `error`.

    The work is linear in the bytes received, however they are split: a whole frame is unmasked
    straight out of the read; a frame cut by the end of a read is unmasked piece by piece into a
    buffer of its own, each byte once. Text that arrives in pieces (a fragmented message, or a frame
    split across reads) is checked as UTF-8 piece by piece, so it fails (1007) as soon as its bytes
    cannot begin valid UTF-8; a text frame read whole is left to its consumer to decode, once.
    Compressed text can only be checked once inflated, which is the consumer's business too.
    """

    __slots__ = (
        "_decoder",
        "_ended",
        "_fragments",
        "_fragments_size",
        "_head",
        "_opcode",
        "_partial",
        "allow_compressed",
        "error",
        "max_size",
    )

    def __init__(self, max_size: int, *, allow_compressed: bool = False) -> None:
        self.max_size = max_size
        self.allow_compressed = allow_compressed
        #: The violation that ended the stream, if one did.
        self.error: FrameError | None = None
        self._ended = False
        #: The start of a frame whose header (mask included) is not complete yet: at most 13 bytes.
        self._head = b""
        self._partial: _Partial | None = None
        self._opcode = 0  # the opcode of the message being reassembled; 0 when none
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        #: Checks the UTF-8 of a text message arriving in pieces; None otherwise.
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        messages: list[tuple[int, bytes]] = []
        if self._ended:
            return messages
        try:
            pos = 0
            if self._partial is not None:
                pos = self._resume(data, messages)
                if self._partial is not None or self._ended:
                    return messages
            elif self._head:
                data = self._head + data  # at most 13 bytes more than the read: still linear
                self._head = b""
            end = len(data)
            while end - pos >= 2:
                first, second = data[pos], data[pos + 1]
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
                # Everything the header says is checked before its payload is waited for.
                if opcode >= CLOSE:
                    if opcode > PONG:
                        raise FrameError(PROTOCOL_ERROR, f"unknown control opcode {opcode}")
                    if length > 125 or not fin:
                        raise FrameError(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
                elif opcode == CONTINUATION:
                    if self._fragments is None:
                        raise FrameError(PROTOCOL_ERROR, "continuation frame without a message to continue")
                elif opcode > BINARY:
                    raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
                elif self._fragments is not None:
                    raise FrameError(PROTOCOL_ERROR, "new message before the previous one was finished")
                head = 2
                if length == 126:
                    if end - pos < 4:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                    head = 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    head = 10
                if opcode < CLOSE and length + self._fragments_size > self.max_size:
                    raise FrameError(TOO_BIG, f"message larger than {self.max_size} bytes")
                start = pos + head + 4
                if end < start:
                    break
                mask = data[start - 4 : start]
                if end - start < length:
                    pos = end
                    self._begin(fin, opcode, compressed, mask, length, data[start:end])
                    break
                payload = unmask(data[start : start + length], mask) if length else b""
                pos = start + length
                if fin and opcode in (TEXT, BINARY):
                    messages.append((opcode | compressed, payload))  # the common case, kept inline
                elif self._complete(fin, opcode, compressed, payload, messages, checked=False):
                    return messages  # a close frame: nothing after it is read
            if pos < end:
                self._head = data[pos:end]
        except FrameError as exc:
            self.error = exc
            self._ended = True
            self._partial = None
        return messages

    def _complete(
        self,
        fin: int,
        opcode: int,
        compressed: int,
        payload: bytes,
        messages: list[tuple[int, bytes]],
        *,
        checked: bool,
    ) -> bool:
        """A frame is all here (its header checked): hand out what it completes; True for a close frame.

        `checked`: its payload already went through the UTF-8 check as it arrived (a frame split across reads).
        """
        if opcode >= CLOSE:
            messages.append((opcode, payload))
            if opcode == CLOSE:
                self._ended = True
                return True
            return False
        if opcode == CONTINUATION:
            fragments = self._fragments
            assert fragments is not None  # the header check saw to it
            if self._decoder is not None and not checked:
                self._check(payload, final=bool(fin))
            fragments.append(payload)
            self._fragments_size += len(payload)
            if fin:
                messages.append((self._opcode, b"".join(fragments)))
                self._fragments, self._fragments_size, self._opcode, self._decoder = None, 0, 0, None
            return False
        if fin:  # a whole message in one frame, split across reads (checked as it came)
            messages.append((opcode | compressed, payload))
            self._decoder = None
            return False
        if opcode == TEXT and not compressed and not checked:
            self._decoder = _Utf8Decoder()
            self._check(payload, final=False)
        self._fragments, self._fragments_size, self._opcode = [payload], len(payload), opcode | compressed
        return False

    def _begin(self, fin: int, opcode: int, compressed: int, mask: bytes, length: int, piece: bytes) -> None:
        """A frame cut by the end of the read: keep what came of it, unmasked (and checked, if text)."""
        partial = self._partial = _Partial(fin, opcode, compressed, mask, length)
        if opcode == TEXT and not compressed:
            self._decoder = _Utf8Decoder()
        self._take(partial, piece)

    def _take(self, partial: _Partial, piece: bytes) -> None:
        if not piece:
            return
        offset = len(partial.data) & 3  # the mask goes on where the previous piece stopped
        mask = partial.mask[offset:] + partial.mask[:offset] if offset else partial.mask
        plain = unmask(piece, mask)
        partial.data += plain
        partial.left -= len(piece)
        if self._decoder is not None and partial.opcode < CLOSE:
            self._check(plain, final=False)

    def _resume(self, data: bytes, messages: list[tuple[int, bytes]]) -> int:
        """Go on with the frame the previous read cut; how many bytes of `data` it took."""
        partial = self._partial
        assert partial is not None
        wanted = partial.left
        if len(data) < wanted:
            self._take(partial, data)
            return len(data)
        self._take(partial, data[:wanted] if wanted < len(data) else data)
        self._partial = None
        if self._decoder is not None and partial.fin and partial.opcode < CLOSE:
            self._check(b"", final=True)
        self._complete(partial.fin, partial.opcode, partial.compressed, bytes(partial.data), messages, checked=True)
        return wanted

    def _check(self, text: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        try:
            self._decoder.decode(text, final)
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "text message is not UTF-8") from None
