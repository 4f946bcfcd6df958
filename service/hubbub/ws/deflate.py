"""The permessage-deflate extension (RFC 7692): negotiation and the per-message codec.

hubbub compresses and inflates every message on its own, without context takeover in either
direction, so a connection keeps no zlib state between messages. Negotiation happens once per
upgrade (`negotiate`, which handshake.accept calls); the codec (`compress`, `text_frame`,
`decompress`) runs per message and parses nothing.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Final

from hubbub.ws import frames

NAME: Final = "permessage-deflate"
#: What every accepted offer is answered with. `server_no_context_takeover`: hubbub compresses each
#: message with a fresh compressor (and must answer it when offered, §7.1.1.1).
#: `client_no_context_takeover`: hubbub inflates each message with a fresh decompressor, so the
#: client must not refer back to earlier messages; a server may always ask for it (§7.1.1.2).
ANSWER: Final = f"{NAME}; server_no_context_takeover; client_no_context_takeover"
#: The LZ77 window hubbub compresses with unless the client asks for a smaller one.
DEFAULT_WINDOW_BITS: Final = 15
#: zlib cannot compress raw deflate with a 256-byte window (8 bits: it refuses wbits=-8, madler/zlib
#: issue 171), so an offer limiting hubbub to 8 is declined (§7.1.2.1 lets a server decline what it
#: does not support), as the Python `websockets` server does. Node's `ws` instead answers 8 and
#: compresses with 9, which a strict 256-byte inflater could reject.
MIN_WINDOW_BITS: Final = 9
#: RFC 7692 §7.1.2: "a decimal integer value without leading zeroes between 8 to 15".
_WINDOW_BITS_VALUES: Final = {str(bits): bits for bits in range(8, 16)}
#: What a sync flush ends with; removed from a compressed message and restored before inflating (§7.2).
_TAIL: Final = b"\x00\x00\xff\xff"

# RFC 6455 §9.1 on RFC 2616 rules: tokens, quoted-strings, optional whitespace around separators.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED: Final = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR: Final = re.compile(r"\\(.)")

Param = tuple[str, str | None]
Extension = tuple[str, tuple[Param, ...]]


class MalformedHeader(ValueError):
    """A Sec-WebSocket-Extensions value outside RFC 6455's grammar."""


@dataclass(frozen=True, slots=True)
class Agreement:
    """An accepted permessage-deflate offer."""

    #: The LZ77 window (base-2 logarithm) hubbub compresses its messages with.
    window_bits: int
    #: The Sec-WebSocket-Extensions value of the 101 response.
    answer: str


def parse(header: str) -> list[Extension]:
    """The extensions of a Sec-WebSocket-Extensions value, in order, each with its parameters in order.

    Several header lines arrive joined by ", ", which is the same list. Empty list elements are
    skipped (RFC 7230 §7); a quoted value is unescaped, and must then be a token (RFC 6455 §9.1).
    """
    extensions: list[Extension] = []
    pos, end = 0, len(header)
    while True:
        pos = _skip_space(header, pos)
        if pos == end:
            return extensions
        if header[pos] == ",":
            pos += 1
            continue
        name, pos = _token(header, pos)
        params: list[Param] = []
        pos = _skip_space(header, pos)
        while pos < end and header[pos] == ";":
            param, pos = _token(header, _skip_space(header, pos + 1))
            pos = _skip_space(header, pos)
            value: str | None = None
            if pos < end and header[pos] == "=":
                value, pos = _value(header, _skip_space(header, pos + 1))
                pos = _skip_space(header, pos)
            params.append((param, value))
        extensions.append((name, tuple(params)))
        if pos < end and header[pos] != ",":
            raise MalformedHeader(f"unexpected {header[pos]!r} at {pos}")


def _skip_space(header: str, pos: int) -> int:
    while pos < len(header) and header[pos] in " \t":
        pos += 1
    return pos


def _token(header: str, pos: int) -> tuple[str, int]:
    match = _TOKEN.match(header, pos)
    if match is None:
        raise MalformedHeader(f"a token was expected at {pos}")
    return match.group(), match.end()


def _value(header: str, pos: int) -> tuple[str, int]:
    quoted = _QUOTED.match(header, pos)
    if quoted is None:
        return _token(header, pos)
    value = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
    if _TOKEN.fullmatch(value) is None:
        raise MalformedHeader(f"the quoted value at {pos} is not a token")
    return value, quoted.end()


def negotiate(header: str) -> Agreement | None:
    """The first permessage-deflate offer of a Sec-WebSocket-Extensions value that hubbub can honour.

    The other offers, and every other extension, are declined (left out of the answer). A
    malformed header is no reason to fail the upgrade: the connection goes on without compression.
    """
    try:
        extensions = parse(header)
    except MalformedHeader:
        return None
    for name, params in extensions:
        if name == NAME:
            agreement = _accept(params)
            if agreement is not None:
                return agreement
    return None


def _accept(params: tuple[Param, ...]) -> Agreement | None:
    """The agreement for one permessage-deflate offer, or None to decline it (RFC 7692 §5, §7)."""
    seen: set[str] = set()
    window_bits: int | None = None
    for name, value in params:
        if name in seen:
            return None  # §7: an offer with a parameter twice is declined
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None  # these take no value (§7.1.1)
        elif name == "server_max_window_bits":
            # A limit on hubbub's window: honoured with that window, and echoed (§7.1.2.1).
            window_bits = _WINDOW_BITS_VALUES.get(value) if value is not None else None
            if window_bits is None or window_bits < MIN_WINDOW_BITS:
                return None
        elif name == "client_max_window_bits":
            # Without a value: the client could take a limit. hubbub never sets one (it inflates with
            # the largest window, which reads any smaller one), so it is left out of the answer (§7.1.2.2).
            if value is not None and value not in _WINDOW_BITS_VALUES:
                return None
        else:
            return None  # §7: an unknown parameter
    if window_bits is None:
        return Agreement(DEFAULT_WINDOW_BITS, ANSWER)
    return Agreement(window_bits, f"{ANSWER}; server_max_window_bits={window_bits}")


def compress(payload: bytes, window_bits: int) -> bytes:
    """One message, compressed on its own with a window of 2**window_bits bytes, tail removed (§7.2.1)."""
    compressor = zlib.compressobj(wbits=-window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def text_frame(payload: bytes, window_bits: int) -> bytes:
    """A final text frame carrying `payload` compressed on its own, RSV1 set (§6)."""
    data = compress(payload, window_bits)
    first = 0x80 | 0x40 | frames.TEXT  # FIN, RSV1 (compressed), text
    return bytes((first,)) + frames.header(frames.TEXT, len(data))[1:] + data


def decompress(payload: bytes, limit: int) -> bytes:
    """One compressed message (§7.2.2), at most `limit` bytes once inflated.

    The largest window (15) inflates a message compressed with any smaller one, so whatever
    window the client chose needs no state here.
    """
    inflater = zlib.decompressobj(wbits=-15)
    try:
        data = inflater.decompress(payload + _TAIL, limit + 1)
    except zlib.error:
        raise frames.FrameError(frames.INVALID_DATA, "invalid compressed data") from None
    if len(data) > limit:
        raise frames.FrameError(frames.TOO_BIG, f"message larger than {limit} bytes")
    return data
