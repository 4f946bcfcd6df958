"""RFC 6455 framing, pure: server frames out, client frames in.

The server only ever sends unmasked, unfragmented frames; it accepts what a client may send:
masked frames, fragmented messages, control frames between fragments. Every violation is a
`FrameError` carrying the close code the connection must end with (1002, 1007 or 1009).
docs/websocket.md ("Frames") says what is refused and how.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Final

_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # the C helper that ships with `websockets`; the fallback below is correct, only slower
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets is a dependency, its wheel has the extension
    _apply_mask = None

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

    __slots__ = ("compressed", "data", "fin", "left", "mask", "opcode", "text")

    def __init__(self, fin: int, opcode: int, compressed: int, mask: bytes, length: int, *, text: bool) -> None:
        self.fin = fin
        self.opcode = opcode
        self.compressed = compressed
        self.mask = mask
        self.left = length
        self.data = bytearray()
        #: Whether it carries uncompressed text, whose UTF-8 is checked as it comes.
        self.text = text


#: The stream has ended (a close frame or a violation): nothing more is read.
_ENDED: Final = _Partial(0, 0, 0, b"", 0, text=False)


class FrameReader:
    """Incremental reader of client frames: `feed()` bytes, get back the messages they complete, in order.

    Data messages come out whole (fragments joined), their opcode plus COMPRESSED when the
    peer compressed them (only allowed with `allow_compressed`); control frames come out as
    they arrive. A message larger than `max_size` is refused as soon as its length says so.

    A close frame ends the stream: it is the last message returned and nothing after it is read.
    So does a violation: `feed()` still returns the messages that came before it, and sets `error`.

    The work is linear in the bytes received, however they are split: a whole frame is unmasked
    straight out of the read; a frame cut by the end of a read is unmasked piece by piece into a
    buffer of its own, each byte once.

    UTF-8: the consumer decodes every text message it gets, and fails it (1007) if it is not UTF-8.
    A message that arrives in pieces (fragments, or a frame split across reads) could hold the
    connection open with bytes that can never become valid text, so every piece but the last is
    checked as it arrives and fails (1007) as soon as the text so far cannot begin valid UTF-8.
    A message read whole in one frame costs nothing here. Compressed text can only be checked once
    inflated, by the consumer.
    """

    __slots__ = (
        "_decoder",
        "_fragments",
        "_fragments_size",
        "_opcode",
        "_pending",
        "allow_compressed",
        "error",
        "max_size",
    )

    def __init__(self, max_size: int, *, allow_compressed: bool = False) -> None:
        self.max_size = max_size
        self.allow_compressed = allow_compressed
        #: The violation that ended the stream, if one did.
        self.error: FrameError | None = None
        #: What the previous read left unfinished, None when it ended between frames (one test on the hot
        #: path): the start of a frame whose header (mask included) is not all here yet, at most 13 bytes;
        #: a frame whose payload is not (_Partial); or _ENDED after a close frame or a violation.
        self._pending: bytes | _Partial | None = None
        self._opcode = 0  # the opcode of the message being reassembled; 0 when none
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        #: Carries a character cut between two pieces of a text message over to the next; None otherwise.
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        messages: list[tuple[int, bytes]] = []
        pos = 0
        try:
            pending = self._pending
            if pending is not None:
                if pending is _ENDED:
                    return messages
                self._pending = None
                if isinstance(pending, bytes):
                    data = pending + data  # at most 13 bytes more than the read: still linear
                else:
                    pos = self._resume(pending, data, messages)
                    if self._pending is not None:
                        return messages  # still in that frame, or it was a close
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
                    self._begin(fin, opcode, compressed, mask, length, data[start:end])
                    return messages
                payload = unmask(data[start : start + length], mask) if length else b""
                pos = start + length
                if fin and opcode in (TEXT, BINARY):
                    messages.append((opcode | compressed, payload))  # the common case, kept inline
                elif self._complete(fin, opcode, compressed, payload, messages, checked=False):
                    return messages  # a close frame: nothing after it is read
            if pos < end:
                self._pending = data[pos:end]
        except FrameError as exc:
            self.error = exc
            self._pending = _ENDED
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
                self._pending = _ENDED
                return True
            return False
        if opcode == CONTINUATION:
            fragments = self._fragments
            assert fragments is not None  # the header check saw to it
            if not fin and not checked and self._opcode == TEXT:
                self._check(payload)
            fragments.append(payload)
            self._fragments_size += len(payload)
            if fin:
                messages.append((self._opcode, b"".join(fragments)))
                self._fragments, self._fragments_size, self._opcode, self._decoder = None, 0, 0, None
            return False
        if fin:  # a whole message in one frame, split across reads
            messages.append((opcode | compressed, payload))
            self._decoder = None
            return False
        if opcode == TEXT and not compressed and not checked:
            self._check(payload)
        self._fragments, self._fragments_size, self._opcode = [payload], len(payload), opcode | compressed
        return False

    def _begin(self, fin: int, opcode: int, compressed: int, mask: bytes, length: int, piece: bytes) -> None:
        """A frame cut by the end of the read: keep what came of it, unmasked (and checked, if text)."""
        text = (opcode == TEXT and not compressed) or (opcode == CONTINUATION and self._opcode == TEXT)
        partial = self._pending = _Partial(fin, opcode, compressed, mask, length, text=text)
        self._take(partial, piece)

    def _take(self, partial: _Partial, piece: bytes) -> None:
        if not piece:
            return
        offset = len(partial.data) & 3  # the mask goes on where the previous piece stopped
        mask = partial.mask[offset:] + partial.mask[:offset] if offset else partial.mask
        plain = unmask(piece, mask)
        partial.data += plain
        partial.left -= len(piece)
        # The last piece of a message is left to the consumer, which decodes the whole message anyway.
        if partial.text and (partial.left or not partial.fin):
            self._check(plain)

    def _resume(self, partial: _Partial, data: bytes, messages: list[tuple[int, bytes]]) -> int:
        """Go on with the frame the previous read cut; how many bytes of `data` it took."""
        wanted = partial.left
        if len(data) < wanted:
            self._take(partial, data)
            self._pending = partial
            return len(data)
        self._take(partial, data[:wanted] if wanted < len(data) else data)
        self._complete(partial.fin, partial.opcode, partial.compressed, bytes(partial.data), messages, checked=True)
        return wanted

    def _check(self, text: bytes) -> None:
        """Fail (1007) unless the text received so far, ending with `text`, can begin valid UTF-8."""
        decoder = self._decoder
        if decoder is None:
            try:
                text.decode()
                return  # whole characters, the common case: nothing to carry over
            except UnicodeDecodeError:
                decoder = self._decoder = _Utf8Decoder()  # invalid, or a character cut in two: tell which
        try:
            decoder.decode(text)
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "text message is not UTF-8") from None
