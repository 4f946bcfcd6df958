"""RFC 6455 framing (hubbub.frames), pure: no sockets."""

from __future__ import annotations

import os
import struct

import pytest

from hubbub import frames


def client_frame(
    payload: bytes, opcode: int = frames.TEXT, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """What a client sends: masked, any length encoding."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_accept_key_matches_the_rfc_example() -> None:
    assert frames.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert frames.valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not frames.valid_key("short") and not frames.valid_key("not base64 at all!!")


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
def test_violations_carry_the_close_code_to_end_with(data: bytes, code: int) -> None:
    with pytest.raises(frames.FrameError) as caught:
        frames.FrameReader(100).feed(data)
    assert caught.value.code == code


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    head = struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40)
    with pytest.raises(frames.FrameError) as caught:
        frames.FrameReader(65536).feed(head)
    assert caught.value.code == frames.TOO_BIG


def test_compressed_messages_are_flagged_only_when_negotiated() -> None:
    reader = frames.FrameReader(100, allow_compressed=True)
    assert reader.feed(client_frame(b"zz", rsv=0x40)) == [(frames.TEXT | frames.COMPRESSED, b"zz")]
    assert reader.feed(client_frame(b"plain")) == [(frames.TEXT, b"plain")]
    with pytest.raises(frames.FrameError):
        reader.feed(client_frame(b"x", frames.PING, rsv=0x40))


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


def test_unmask_fallback_matches_the_c_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    payload, key = os.urandom(1001), os.urandom(4)
    fast = frames.unmask(payload, key)
    monkeypatch.setattr(frames, "_apply_mask", None)
    assert frames.unmask(payload, key) == fast == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
