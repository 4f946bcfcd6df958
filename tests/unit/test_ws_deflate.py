"""permessage-deflate (hubbub.ws.deflate), pure: the header grammar, each negotiation rule, the codec."""

from __future__ import annotations

import random
import zlib

import pytest

from hubbub.ws import deflate, frames

ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def window(bits: int) -> str:
    return f"{ANSWER}; server_max_window_bits={bits}"


# (the Sec-WebSocket-Extensions of the request, the answer or None for no compression)
NEGOTIATION = [
    # what real clients offer
    ("", None),
    ("permessage-deflate", ANSWER),
    ("permessage-deflate; client_max_window_bits", ANSWER),  # Chromium, ws, websockets by default
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits", window(10)),
    # only permessage-deflate itself, compared exactly
    ("permessage-deflate-extended", None),
    ("x-permessage-deflate", None),
    ("Permessage-Deflate", None),
    ("x-webkit-deflate-frame", None),
    ("x-webkit-deflate-frame, permessage-deflate", ANSWER),
    # the first offer hubbub can honour wins; the ones before it are declined
    ("permessage-deflate; server_max_window_bits=10, permessage-deflate", window(10)),
    ("permessage-deflate, permessage-deflate; server_max_window_bits=10", ANSWER),
    ("permessage-deflate; x-unknown, permessage-deflate; server_max_window_bits=11", window(11)),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12", window(12)),
    # several header lines, joined by ", " (parse_request), and empty list elements
    ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=11", window(11)),
    (" , ,permessage-deflate,, ", ANSWER),
    # unknown parameter: the offer is declined (RFC 7692 §7)
    ("permessage-deflate; x-unknown", None),
    ("permessage-deflate; mux=1", None),
    ("permessage-deflate; Server_No_Context_Takeover", None),
    # a parameter twice: the offer is declined (§7), whatever the values
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", None),
    ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", None),
    # server_no_context_takeover: always answered; it takes no value
    ("permessage-deflate; server_no_context_takeover", ANSWER),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ('permessage-deflate; server_no_context_takeover=""', None),
    # client_no_context_takeover: always asked for; it takes no value
    ("permessage-deflate; client_no_context_takeover", ANSWER),
    ("permessage-deflate; client_no_context_takeover=true", None),
    # server_max_window_bits: 9..15 honoured and echoed; 8 declined (zlib cannot compress with it);
    # anything else, or no value, declines the offer
    *((f"permessage-deflate; server_max_window_bits={bits}", window(bits)) for bits in range(9, 16)),
    ('permessage-deflate; server_max_window_bits="10"', window(10)),
    ("permessage-deflate; server_max_window_bits=8", None),
    ("permessage-deflate; server_max_window_bits=7", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits=010", None),
    ("permessage-deflate; server_max_window_bits=+10", None),
    ("permessage-deflate; server_max_window_bits=ten", None),
    ("permessage-deflate; server_max_window_bits", None),
    # client_max_window_bits: without a value or 8..15, accepted and never answered (hubbub inflates
    # with the largest window, which reads any smaller one); a bad value declines the offer
    *((f"permessage-deflate; client_max_window_bits={bits}", ANSWER) for bits in range(8, 16)),
    ('permessage-deflate; client_max_window_bits="9"', ANSWER),
    ("permessage-deflate; client_max_window_bits=16", None),
    ("permessage-deflate; client_max_window_bits=7", None),
    ("permessage-deflate; client_max_window_bits=09", None),
    # every parameter at once, in any order, with the whitespace RFC 2616's implied *LWS allows
    (
        "permessage-deflate; client_max_window_bits=9; server_max_window_bits=13;"
        " client_no_context_takeover; server_no_context_takeover",
        window(13),
    ),
    ("permessage-deflate ;server_max_window_bits = 10\t; client_max_window_bits", window(10)),
    # outside RFC 6455's grammar: no compression at all (the upgrade still succeeds)
    ("permessage-deflate;", None),
    ("permessage-deflate; ; server_no_context_takeover", None),
    ("permessage-deflate server_no_context_takeover", None),
    ("permessage-deflate; =10", None),
    ("permessage-deflate; server_max_window_bits=", None),
    ("permessage-deflate; server_max_window_bits=10=10", None),
    ('permessage-deflate; server_max_window_bits="10', None),
    ('permessage-deflate; server_max_window_bits="1 0"', None),
    ("permessage-deflate, x-other one", None),
    ("permessage-deflate; server_max_window_bits=10 11", None),
    ("@", None),
    ("per message-deflate", None),
]


@pytest.mark.parametrize(("offer", "answer"), NEGOTIATION)
def test_negotiation_accepts_the_first_permessage_deflate_offer_it_can_honour(offer: str, answer: str | None) -> None:
    agreement = deflate.negotiate(offer)
    if answer is None:
        assert agreement is None
        return
    assert agreement is not None
    assert agreement.answer == answer
    # The answer is a single permessage-deflate, in the grammar a client parses.
    [(name, params)] = deflate.parse(agreement.answer)
    assert name == "permessage-deflate"
    assert len({param for param, _ in params}) == len(params)
    # hubbub compresses with the window it answered, or the largest.
    bits = dict(params).get("server_max_window_bits")
    assert agreement.window_bits == (int(bits) if bits is not None else 15)
    assert "client_max_window_bits" not in agreement.answer


def test_parse_keeps_extensions_and_parameters_in_order_and_unescapes_quoted_values() -> None:
    header = 'a; b=1; c="x\\yz", ,d;e ; f = "g" , a'
    assert deflate.parse(header) == [
        ("a", (("b", "1"), ("c", "xyz"))),
        ("d", (("e", None), ("f", "g"))),
        ("a", ()),
    ]
    assert deflate.parse("") == [] and deflate.parse(" ,\t, ") == []


@pytest.mark.parametrize("header", ["a;", "a b", 'a; b="c', 'a; b="c d"', "a; b=c=d", ";", "a; b=", "a,;"])
def test_parse_refuses_what_is_outside_the_grammar(header: str) -> None:
    with pytest.raises(deflate.MalformedHeader):
        deflate.parse(header)


# --- the codec ------------------------------------------------------------------------------------

#: Compressible at long distances (a 3000-byte block, repeated) and a little at short ones.
WORDS = random.Random(7).choices(["alpha", "beta", "gamma", "delta", "omega"], k=600)
MESSAGE = (" ".join(WORDS)[:3000] * 20).encode()


def strict_inflate(data: bytes, window_bits: int) -> bytes:
    """Inflate as a peer holding only a 2**window_bits-byte window would, tail restored.

    Output comes in small steps, so every back-reference must reach into the window, not into
    output of the same step: a message compressed with a larger window fails here.
    """
    inflater = zlib.decompressobj(wbits=-window_bits)
    out = [inflater.decompress(data + b"\x00\x00\xff\xff", 64)]
    while inflater.unconsumed_tail:
        out.append(inflater.decompress(inflater.unconsumed_tail, 64))
    return b"".join(out)


@pytest.mark.parametrize("bits", range(9, 16))
def test_compress_uses_the_negotiated_window_and_each_message_stands_alone(bits: int) -> None:
    data = deflate.compress(MESSAGE, bits)
    assert not data.endswith(b"\x00\x00\xff\xff")  # §7.2.1: the flush's tail is removed
    assert strict_inflate(data, bits) == MESSAGE
    assert deflate.compress(MESSAGE, bits) == data  # no context carried over from the previous message
    if bits > 9:
        with pytest.raises(zlib.error, match="distance too far back"):
            strict_inflate(data, 9)  # the check above can fail: a larger window does not fit a smaller one


def test_a_small_window_still_compresses() -> None:
    assert len(deflate.compress(MESSAGE, 9)) < len(MESSAGE) // 2
    assert len(deflate.compress(MESSAGE, 15)) < len(MESSAGE) // 50


@pytest.mark.parametrize("bits", range(9, 16))
def test_decompress_reads_messages_compressed_with_any_client_window(bits: int) -> None:
    """Inbound inflation keeps the largest window, whatever client_max_window_bits the client chose."""
    compressor = zlib.compressobj(wbits=-bits)
    data = compressor.compress(MESSAGE) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert deflate.decompress(data[:-4], len(MESSAGE)) == MESSAGE


def test_decompress_refuses_garbage_and_messages_over_the_limit() -> None:
    with pytest.raises(frames.FrameError) as garbage:
        deflate.decompress(b"\xff\xff\xff\xff", 1000)
    assert garbage.value.code == frames.INVALID_DATA
    with pytest.raises(frames.FrameError) as too_big:
        deflate.decompress(deflate.compress(MESSAGE, 15), len(MESSAGE) - 1)
    assert too_big.value.code == frames.TOO_BIG


@pytest.mark.parametrize("size", [10, 200, 70_000])
def test_a_compressed_text_frame_is_final_flagged_rsv1_and_inflates_back(size: int) -> None:
    payload = (MESSAGE * (size // len(MESSAGE) + 1))[:size]
    frame = deflate.text_frame(payload, 15)
    assert frame[0] == 0x80 | 0x40 | frames.TEXT  # FIN, RSV1, text
    length, head = frame[1], 2
    if length == 126:
        length, head = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, head = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == head + length
    assert deflate.decompress(frame[head:], size) == payload
