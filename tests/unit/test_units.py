"""Pure core: codec, room rules, recovery, rate limiting, timers and outbox batching, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub import protocol, rules
from hubbub.backends.base import HistoryResult
from hubbub.codes import CLOSE_TABLE, TERMINAL_CLOSE_CODES, CloseCode, CommandError, Disconnect
from hubbub.outbox import MAX_BATCH_CHARS, Flusher, Outbox, _batches
from hubbub.protocol import Publication, StreamPosition
from hubbub.ratelimit import AddressLimiter, TokenBucket, Verdict
from hubbub.session import recover
from hubbub.settings import NamespaceOptions
from hubbub.timers import DeadlineHeap, FixedDelayQueue
from hubbub.types import ClientId
from hubbub.ws.connection import _has_pong

# --- protocol codec ---------------------------------------------------------------------------------


def test_decode_frame_splits_newline_delimited_commands_and_ignores_blank_lines() -> None:
    commands = protocol.decode_frame('{"id":1,"op":"connect"}\n\n{"op":"pong"}\n')
    assert [(c.id, c.op) for c in commands] == [(1, "connect"), (0, "pong")]


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "\n\n",
        "{",
        "[]",
        '{"op":"join"}',
        '{"id":1}',
        '{"id":1,"op":"nope"}',
        '{"id":1,"op":"join"}\n{"id":1,"op":"x"}',
    ],
)
def test_decode_frame_rejects_violations_with_4004(frame: str) -> None:
    with pytest.raises(Disconnect) as info:
        protocol.decode_frame(frame)
    assert info.value.code is CloseCode.PROTOCOL_VIOLATION


def test_loads_accepts_big_integers_and_rejects_nan() -> None:
    assert protocol.loads('{"n": 100000000000000000000000}') == {"n": 10**23}
    with pytest.raises(ValueError):
        protocol.loads('{"n": NaN}')
    with pytest.raises(ValueError):
        protocol.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError):
        protocol.loads('{"n": [1e400]}')  # no double holds it: refused rather than turned into null


def test_dumps_is_compact_and_round_trips_big_integers_and_unicode() -> None:
    assert protocol.dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
    assert protocol.loads(protocol.dumps({"s": "\ud800"})) == {"s": "\ud800"}
    assert protocol.loads(protocol.dumps({"n": 10**30})) == {"n": 10**30}
    with pytest.raises(ValueError):
        protocol.dumps(object())


def test_pub_push_shape_matches_the_contract() -> None:
    pub = Publication(58, {"t": 1}, 1000, {"user": "alice", "client": "c1"})
    assert protocol.loads(protocol.pub_push("chat:lobby", pub)) == {
        "push": "pub",
        "room": "chat:lobby",
        "offset": 58,
        "data": {"t": 1},
        "ts": 1000,
        "info": {"user": "alice", "client": "c1"},
    }
    assert "info" not in protocol.loads(protocol.pub_push("r", Publication(1, None, 0)))


def test_encode_data_enforces_the_byte_limit_in_utf8() -> None:
    protocol.encode_data("é" * 10, 22)
    with pytest.raises(CommandError) as info:
        protocol.encode_data("é" * 11, 22)  # 22 chars + quotes, but 24 bytes
    assert info.value.code == 413


@pytest.mark.parametrize("since", ["x", {"epoch": 1, "offset": 1}, {"epoch": "e", "offset": -1}, {"epoch": "e"}])
def test_param_since_rejects_malformed_positions(since: Any) -> None:
    with pytest.raises(CommandError):
        protocol.param_since(since)


def test_close_table_marks_terminal_codes() -> None:
    assert {1000, 1003, 1009, 4000, 4001, 4003, 4004} == TERMINAL_CLOSE_CODES
    assert set(CLOSE_TABLE) == set(CloseCode)


# --- rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [("chat:lobby", True), ("a", True), ("x" * 255, True), ("x" * 256, False), ("", False), ("a b", False)]
    + [("user@host/x=y.z-_", True), ("émoji", False), ("a\nb", False)],
)
def test_room_names(name: str, valid: bool) -> None:
    assert rules.is_valid_room(name) is valid


def test_namespace_is_the_part_before_the_first_colon() -> None:
    assert rules.namespace_of("chat:a:b") == "chat"
    assert rules.namespace_of("lobby") == ""


@pytest.mark.parametrize(
    ("patterns", "room", "allowed"),
    [
        (("*",), "anything:at/all", True),
        (("chat:*",), "chat:x/y:z", True),
        (("chat:*",), "chatx", False),
        (("chat:lobby",), "chat:lobby", True),
        (("chat:lobby",), "chat:lobby2", False),
        (("a.b",), "axb", False),  # dots are literal
        (("*:admin",), "ops:admin", True),
        ((), "chat:x", False),
    ],
)
def test_claim_globs(patterns: tuple[str, ...], room: str, allowed: bool) -> None:
    assert rules.matches_any(patterns, room) is allowed


def test_public_namespace_allows_join_without_claim_but_not_read() -> None:
    public = NamespaceOptions(public=True)
    rules.check_join((), "news:x", public)
    with pytest.raises(CommandError):
        rules.check_read((), "news:x")


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "h:1", (), True),
        ("http://h:1", "h:1", (), True),
        ("https://evil", "h:1", (), False),
        ("https://app.example.com", "h", ("https://*.example.com",), True),
        ("https://example.com.evil", "h", ("https://*.example.com",), False),
        ("https://any", "h", ("*",), True),
        # A proxy that rewrites Host to `$host` drops the port: the host name must still match.
        ("http://h:8080", "h", (), True),
        ("http://H:8080", "h", (), True),
        ("http://h:8080", "h:9090", (), False),
        ("http://evil:8080", "h", (), False),
        ("http://h.evil:8080", "h", (), False),
        ("http://[::1]:8080", "[::1]", (), True),
        ("http://[::1]:8080", "[::1]:8080", (), True),
        ("http://[::2]:8080", "[::1]", (), False),
    ],
)
def test_origin_check(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert rules.origin_allowed(origin, host, allowed) is ok


# --- recovery ----------------------------------------------------------------------------------------


def pubs(*offsets: int) -> list[Publication]:
    return [Publication(o, o, 0) for o in offsets]


@pytest.mark.parametrize(
    ("since", "found", "recovered", "count"),
    [
        (None, HistoryResult("e", 5, pubs(4, 5)), False, 0),
        (StreamPosition("x", 3), HistoryResult("e", 5, pubs(4, 5)), False, 0),
        (StreamPosition("e", 3), HistoryResult("e", 5, pubs(4, 5)), True, 2),
        (StreamPosition("e", 5), HistoryResult("e", 5, []), True, 0),
        (StreamPosition("e", 6), HistoryResult("e", 5, []), False, 0),
        (StreamPosition("e", 1), HistoryResult("e", 5, pubs(4, 5)), False, 0),  # 2 and 3 fell out of history
    ],
)
def test_recovery_is_all_or_nothing(
    since: StreamPosition | None, found: HistoryResult, recovered: bool, count: int
) -> None:
    assert recover(since, found)[0] is recovered
    assert len(recover(since, found)[1]) == count


# --- rate limit, timers -------------------------------------------------------------------------------


def test_token_bucket_rejects_past_burst_and_closes_once_debt_reaches_burst() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [Verdict.ALLOW] * 3
    assert bucket.take(0) is Verdict.REJECT
    assert bucket.take(0) is Verdict.REJECT
    assert bucket.take(0) is Verdict.CLOSE


def test_token_bucket_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=0)
    assert bucket.take(0) is Verdict.ALLOW
    assert bucket.take(0.05) is Verdict.REJECT
    assert bucket.take(0.3) is Verdict.ALLOW


def test_address_limiter_refuses_past_the_burst_and_says_how_long_to_wait() -> None:
    limiter = AddressLimiter(rate=0.5, burst=3)
    assert [limiter.acquire("a", 0) for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a", 0) == pytest.approx(2.0)
    assert limiter.acquire("b", 0) == 0, "another address has its own share"
    assert limiter.acquire("a", 1.0) == pytest.approx(1.0)
    assert limiter.acquire("a", 2.0) == 0


def test_address_limiter_does_not_charge_refused_requests() -> None:
    limiter = AddressLimiter(rate=1, burst=1)
    assert limiter.acquire("a", 0) == 0
    for _ in range(100):
        assert limiter.acquire("a", 0.5) > 0
    assert limiter.acquire("a", 1.0) == 0, "hammering while refused must not push the next allowed request back"


def test_address_limiter_caps_all_addresses_together() -> None:
    limiter = AddressLimiter(rate=1, burst=2, shared_factor=5)
    allowed = sum(limiter.acquire(f"10.0.0.{n}", 0) == 0 for n in range(50))
    assert allowed == 10
    assert limiter.acquire("10.0.1.1", 0) == pytest.approx(1 / 5)


def test_address_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = AddressLimiter(rate=1000, burst=1, max_addresses=100)
    for n in range(10_000):
        limiter.acquire(f"addr-{n}", n)
    assert len(limiter._buckets) == 100


def test_fixed_delay_queue_pops_in_deadline_order() -> None:
    queue: FixedDelayQueue[str] = FixedDelayQueue(10)
    queue.add("a", 0)
    queue.add("b", 1)
    assert list(queue.pop_due(10.5)) == [(10, "a")]
    assert list(queue.pop_due(11)) == [(11, "b")]
    assert len(queue) == 0


def test_deadline_heap_orders_arbitrary_deadlines() -> None:
    heap: DeadlineHeap[str] = DeadlineHeap()
    for due, item in ((5, "c"), (1, "a"), (3, "b")):
        heap.add(item, due)
    assert [item for _, item in heap.pop_due(4)] == ["a", "b"]
    assert len(heap) == 1


# --- outbox --------------------------------------------------------------------------------------------


def test_batches_respect_the_frame_cap() -> None:
    items = ["x" * 1000] * 600
    frames = _batches(items)
    assert len(frames) > 1
    assert all(len(f) <= MAX_BATCH_CHARS + 1000 for f in frames)
    assert sum(f.count("\n") + 1 for f in frames) == 600


class FakeSink:
    def __init__(self) -> None:
        self.paused = False
        self.frames: list[str] = []
        self.framed: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.aborted = False

    def write_texts(self, texts: list[str]) -> None:
        self.frames.extend(texts)

    def write_framed(self, wire: bytes, text: str) -> None:
        self.framed.append(wire)
        self.frames.append(text)

    def write_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def abort(self) -> None:
        self.aborted = True


def make_outbox(sink: FakeSink, overflowed: list[bool], max_bytes: int = 100) -> Outbox:
    loop = asyncio.get_running_loop()
    return Outbox(
        sink,
        client_id=ClientId("c"),
        max_bytes=max_bytes,
        on_overflow=lambda: overflowed.append(True),
        flusher=Flusher(loop),
        loop=loop,
    )


async def test_outbox_sends_everything_waiting_as_one_frame_in_order() -> None:
    sink = FakeSink()
    overflowed: list[bool] = []
    outbox = make_outbox(sink, overflowed)
    for i in range(3):
        outbox.push(f'{{"n":{i}}}')
    assert sink.frames == []  # nothing is written from push itself
    await asyncio.sleep(0)
    assert sink.frames == ['{"n":0}\n{"n":1}\n{"n":2}']
    outbox.push("y" * 200)
    assert overflowed == [True]
    outbox.close(4008, "slow consumer", reconnect=True, drop_pending=True)
    await asyncio.sleep(0)
    assert sink.closes == [(4008, "slow consumer")]
    assert protocol.loads(sink.frames[-1]) == {
        "push": "disconnect",
        "code": 4008,
        "reason": "slow consumer",
        "reconnect": True,
    }


async def test_outbox_holds_messages_while_the_socket_is_paused_and_counts_them() -> None:
    sink = FakeSink()
    overflowed: list[bool] = []
    outbox = make_outbox(sink, overflowed, max_bytes=50)
    sink.paused = True
    outbox.push("a" * 20)
    outbox.push("b" * 20)
    await asyncio.sleep(0)
    assert sink.frames == [] and outbox.pending == 40
    sink.paused = False
    outbox.flush()  # what resume_writing does
    assert sink.frames == ["a" * 20 + "\n" + "b" * 20] and outbox.pending == 0
    sink.paused = True
    for _ in range(3):
        outbox.push("c" * 20)
    assert overflowed == [True]


async def test_a_close_that_cannot_go_out_aborts_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hubbub.outbox.CLOSE_GRACE", 0.05)
    sink = FakeSink()
    outbox = make_outbox(sink, [])
    sink.paused = True  # the peer stopped reading
    outbox.close(1012, "node draining", reconnect=True)
    await asyncio.sleep(0.1)
    assert sink.aborted and sink.closes == []


async def test_a_shared_prepared_frame_is_written_as_is_only_when_it_is_alone_in_the_queue() -> None:
    sink = FakeSink()
    outbox = make_outbox(sink, [], max_bytes=1000)
    outbox.push("pub-1", b"WIRE-1")
    await asyncio.sleep(0)
    assert sink.framed == [b"WIRE-1"] and sink.frames == ["pub-1"]
    outbox.push('{"id":1,"ok":{}}')  # a reply first: the publication is batched with it as text
    outbox.push("pub-2", b"WIRE-2")
    await asyncio.sleep(0)
    assert sink.framed == [b"WIRE-1"] and sink.frames[-1] == '{"id":1,"ok":{}}\npub-2'
    outbox.push("pub-3", b"WIRE-3")
    outbox.push("pub-4", b"WIRE-4")
    await asyncio.sleep(0)
    assert sink.framed == [b"WIRE-1"] and sink.frames[-1] == "pub-3\npub-4"


@pytest.mark.parametrize(
    ("frame", "found"),
    [
        ('{"op":"pong"}', True),
        ('{"id":3,"op":"publish","room":"chat:x","data":1}\n{"op": "pong"}', True),
        ('{"id":9,"op":"pong"}', True),
        ('{"id":3,"op":"publish","room":"chat:x","data":"' + "x" * 80 + '","note":"pong"}', False),
        ('{"id":4,"op":"join","room":"chat:x"}', False),
    ],
)
def test_a_pong_is_spotted_on_arrival_without_decoding_the_frame(frame: str, found: bool) -> None:
    """Pongs count when they arrive (hubbub.ws.connection), even behind a long queue of commands."""
    assert _has_pong(frame) is found


@pytest.mark.parametrize(("value", "wire"), [(25.0, "25"), (2.5, "2.5"), (300, "300"), (0.0, "0"), (1e-3, "0.001")])
def test_whole_quantities_are_written_without_a_fraction(value: float, wire: str) -> None:
    encoded = protocol.dumps({"v": protocol.wire_number(value)})
    assert encoded == '{"v":' + wire + "}"
