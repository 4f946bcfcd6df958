"""RFC 6455 framing (hubbub.ws.frames), pure: no sockets."""

from __future__ import annotations

import os
import struct
import time

import pytest

from hubbub.ws import frames
from tests.support.ws_fakes import client_frame


def read(reader: frames.FrameReader, *reads: bytes) -> tuple[list[tuple[int, bytes]], int | None]:
    """Everything `reads` complete, in order, and the close code of the violation that ended the stream (if any)."""
    messages: list[tuple[int, bytes]] = []
    for data in reads:
        messages.extend(reader.feed(data))
    return messages, reader.error.code if reader.error is not None else None


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frames_use_the_shortest_length_encoding(size: int) -> None:
    frame = frames.text_frame(b"x" * size)
    assert frame[0] == 0x81
    expected_head = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == expected_head + size
    reader = frames.FrameReader(100_000)
    # The same bytes, masked as a client would send them, read back whole.
    assert reader.feed(client_frame(b"x" * size)) == [(frames.TEXT, b"x" * size)]


def test_messages_split_anywhere_across_reads_come_out_whole_and_in_order() -> None:
    stream = b"".join(client_frame(f"message {i}".encode() * (i * 20 + 1)) for i in range(20))
    reader = frames.FrameReader(100_000)
    got: list[tuple[int, bytes]] = []
    for start in range(0, len(stream), 7):
        got.extend(reader.feed(stream[start : start + 7]))
    assert [payload for _, payload in got] == [f"message {i}".encode() * (i * 20 + 1) for i in range(20)]


def test_fragments_are_joined_and_control_frames_pass_between_them() -> None:
    reader = frames.FrameReader(1000)
    data = (
        client_frame(b"hel", frames.TEXT, fin=False)
        + client_frame(b"ping!", frames.PING)
        + client_frame(b"lo", frames.CONTINUATION, fin=False)
        + client_frame(b"!", frames.CONTINUATION)
    )
    assert reader.feed(data) == [(frames.PING, b"ping!"), (frames.TEXT, b"hello!")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(b"x", mask=False), frames.PROTOCOL_ERROR),
        (client_frame(b"x", rsv=0x40), frames.PROTOCOL_ERROR),
        (client_frame(b"x", rsv=0x20), frames.PROTOCOL_ERROR),
        (client_frame(b"x", 0x3), frames.PROTOCOL_ERROR),
        (client_frame(b"x", 0xB), frames.PROTOCOL_ERROR),
        (client_frame(b"x", frames.CONTINUATION), frames.PROTOCOL_ERROR),
        (client_frame(b"x" * 126, frames.PING), frames.PROTOCOL_ERROR),
        (client_frame(b"x", frames.PING, fin=False), frames.PROTOCOL_ERROR),
        (client_frame(b"a", fin=False) + client_frame(b"b"), frames.PROTOCOL_ERROR),
        (client_frame(b"x" * 101), frames.TOO_BIG),
        (client_frame(b"x" * 60, fin=False) + client_frame(b"x" * 60, frames.CONTINUATION), frames.TOO_BIG),
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "byte-by-byte"])
def test_violations_carry_the_close_code_to_end_with(data: bytes, code: int, split: bool) -> None:
    assert read(frames.FrameReader(100), *(bytewise(data) if split else [data])) == ([], code)


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    head = struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40)
    assert read(frames.FrameReader(65536), head) == ([], frames.TOO_BIG)


def test_compressed_messages_are_flagged_only_when_negotiated() -> None:
    reader = frames.FrameReader(100, allow_compressed=True)
    assert reader.feed(client_frame(b"zz", rsv=0x40)) == [(frames.TEXT | frames.COMPRESSED, b"zz")]
    assert reader.feed(client_frame(b"plain")) == [(frames.TEXT, b"plain")]
    assert read(reader, client_frame(b"x", frames.PING, rsv=0x40)) == ([], frames.PROTOCOL_ERROR)


# --- order within a read: everything before a violation or a close, nothing after -----------------------


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (client_frame(b"x", 0x3), frames.PROTOCOL_ERROR),
        (client_frame(b"x", rsv=0x20), frames.PROTOCOL_ERROR),
        (client_frame(b"x", mask=False), frames.PROTOCOL_ERROR),
        (client_frame(b"x" * 101), frames.TOO_BIG),
        (client_frame(b"\xff", fin=False), frames.INVALID_DATA),
    ],
)
def test_the_frames_before_a_violation_in_the_same_read_come_out_in_order(bad: bytes, code: int) -> None:
    good = client_frame(b"command") + client_frame(b"are you there", frames.PING) + client_frame(b"", frames.PONG)
    after = client_frame(b"never read") + client_frame(b"nor this", frames.PING)
    reader = frames.FrameReader(100)
    expected = [(frames.TEXT, b"command"), (frames.PING, b"are you there"), (frames.PONG, b"")]
    assert read(reader, good + bad + after) == (expected, code)
    assert read(reader, client_frame(b"later")) == ([], code)  # the stream has ended


def test_a_close_frame_ends_the_stream_and_nothing_after_it_is_parsed() -> None:
    close = client_frame(struct.pack("!H", 1000), frames.CLOSE)
    garbage = client_frame(b"x", 0x3) + b"\xff" * 20
    reader = frames.FrameReader(100)
    assert read(reader, client_frame(b"last words") + close + garbage) == (
        [(frames.TEXT, b"last words"), (frames.CLOSE, struct.pack("!H", 1000))],
        None,
    )
    assert read(reader, client_frame(b"x", mask=False)) == ([], None)  # nothing more is read at all


# --- UTF-8 of text arriving in pieces: checked as it comes -----------------------------------------------

#: Autobahn 6.4.1's message: valid Greek, then U+110000 in the 4-byte pattern (no such code point), then ASCII.
GREEK = "κόσμε".encode()
BEYOND_UNICODE = b"\xf4\x90\x80\x80"


def test_invalid_utf8_in_a_fragment_fails_as_soon_as_the_fragment_arrives() -> None:
    reader = frames.FrameReader(1000)
    assert read(reader, client_frame(GREEK, fin=False)) == ([], None)
    assert read(reader, client_frame(BEYOND_UNICODE, frames.CONTINUATION, fin=False)) == ([], frames.INVALID_DATA)


def test_invalid_utf8_fails_at_its_first_byte_that_cannot_begin_valid_text() -> None:
    """Autobahn 6.4.2: the fragment holding only 0xf4 might still be valid; 0x90 after it cannot."""
    reader = frames.FrameReader(1000)
    assert read(reader, client_frame(GREEK + b"\xf4", fin=False)) == ([], None)
    assert read(reader, client_frame(b"\x90", frames.CONTINUATION, fin=False)) == ([], frames.INVALID_DATA)


@pytest.mark.parametrize("cut", [len(GREEK), len(GREEK) + 1])
def test_invalid_utf8_in_a_frame_split_across_reads_fails_with_the_read_that_brings_it(cut: int) -> None:
    """Autobahn 6.4.3 and 6.4.4: one frame, sent in three pieces with pauses between them."""
    frame = client_frame(GREEK + BEYOND_UNICODE + b"edited")
    head = len(frame) - len(GREEK + BEYOND_UNICODE + b"edited")
    reader = frames.FrameReader(1000)
    assert read(reader, frame[: head + cut]) == ([], None)
    assert read(reader, frame[head + cut : head + len(GREEK) + 2]) == ([], frames.INVALID_DATA)


def test_a_cut_character_may_go_on_in_the_next_piece_and_the_end_is_the_consumers_to_judge() -> None:
    """Text that ends inside a character is complete, and invalid, only when the message ends; the consumer
    decodes every message anyway (and closes 1007), so the reader leaves the last piece to it."""
    reader = frames.FrameReader(1000)
    assert read(reader, client_frame(GREEK[:-1], fin=False)) == ([], None)
    assert read(reader, client_frame(b"", frames.CONTINUATION)) == ([(frames.TEXT, GREEK[:-1])], None)


def test_valid_text_split_anywhere_into_fragments_and_reads_comes_out_whole() -> None:
    text = "ascii, κόσμε, 日本語, 🎉 and more".encode()
    for cut in range(1, len(text)):
        stream = (
            client_frame(text[:cut], fin=False)
            + client_frame(b"between", frames.PING)
            + client_frame(text[cut:], frames.CONTINUATION)
        )
        expected = [(frames.PING, b"between"), (frames.TEXT, text)]
        assert read(frames.FrameReader(1000), stream) == (expected, None)
        assert read(frames.FrameReader(1000), *bytewise(stream)) == (expected, None)
        assert read(frames.FrameReader(1000), stream[: cut + 3], stream[cut + 3 :]) == (expected, None)


def test_compressed_text_is_not_checked_before_it_is_inflated() -> None:
    reader = frames.FrameReader(1000, allow_compressed=True)
    stream = client_frame(b"\xff\xfe", rsv=0x40, fin=False) + client_frame(b"\xff", frames.CONTINUATION)
    assert read(reader, *bytewise(stream)) == ([(frames.TEXT | frames.COMPRESSED, b"\xff\xfe\xff")], None)


def test_binary_messages_are_not_checked_as_text() -> None:
    stream = client_frame(b"\xff", frames.BINARY, fin=False) + client_frame(b"\xfe", frames.CONTINUATION)
    assert read(frames.FrameReader(1000), *bytewise(stream)) == ([(frames.BINARY, b"\xff\xfe")], None)


# --- the cost of a frame in many pieces ------------------------------------------------------------------


def test_reading_a_frame_in_pieces_costs_time_linear_in_its_size() -> None:
    """Two frames fed in the same number of pieces, one 16 times the size of the other: the work per feed is
    a function call plus the bytes it brings, so the big one must cost about as much, not 16 times (or, when
    every feed re-copied what came before, 25 times: 0.15 s against 3.6 s)."""

    def cost(size: int) -> float:
        frame = client_frame(b"x" * size)
        piece = len(frame) // 65536 + 1
        pieces = [frame[i : i + piece] for i in range(0, len(frame), piece)]
        best = float("inf")
        for _ in range(3):
            reader = frames.FrameReader(8 * 1024 * 1024)
            start = time.process_time()
            got = [message for data in pieces for message in reader.feed(data)]
            best = min(best, time.process_time() - start)
            assert got == [(frames.TEXT, b"x" * size)]
        return best

    small, big = cost(256 * 1024), cost(4 * 1024 * 1024)
    assert big < 4 * small, f"4 MiB in 64 Ki pieces took {big:.3f} s, 256 KiB in as many {small:.3f} s"


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [(b"", (1005, "")), (struct.pack("!H", 1000), (1000, "")), (struct.pack("!H", 4001) + b"bye", (4001, "bye"))],
)
def test_close_payloads(payload: bytes, parsed: tuple[int, str]) -> None:
    assert frames.parse_close(payload) == parsed


@pytest.mark.parametrize("payload", [b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 5000)])
def test_invalid_close_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.parse_close(payload)


def test_close_frame_reason_is_cut_to_fit_a_control_frame() -> None:
    frame = frames.close_frame(4008, "r" * 300)
    assert frame[1] == 125 and frame[2:4] == struct.pack("!H", 4008)


@pytest.mark.parametrize("char", ["é", "日", "🎉"])
def test_close_frame_reason_is_cut_between_characters(char: str) -> None:
    frame = frames.close_frame(4008, char * 200)
    assert frame[1] <= 125 and frame[2:4] == struct.pack("!H", 4008)
    reason = frame[4:].decode()  # valid UTF-8: the peer must not fail the close with 1007
    assert reason == char * (123 // len(char.encode()))


def test_unmask_fallback_matches_the_c_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    payload, key = os.urandom(1001), os.urandom(4)
    fast = frames.unmask(payload, key)
    monkeypatch.setattr(frames, "_apply_mask", None)
    assert frames.unmask(payload, key) == fast == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
