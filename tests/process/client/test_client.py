"""hubbub_client against a real server: commands, errors, rooms, events and closing; plus the pure parts
(backoff schedule, close-code policy, refresh timing, frame splitting, de-duplication)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from hubbub_client import (
    Backoff,
    Client,
    ClientClosed,
    CommandRejected,
    ConnectionState,
    JoinResult,
    Message,
    QueueFull,
    Rejoin,
    StreamPosition,
)
from hubbub_client.connection import split_frame
from hubbub_client.pacer import Pacer
from hubbub_client.policy import Action, action_for
from hubbub_client.room import Room
from hubbub_client.token import refresh_delay
from tests.conftest import ServerFactory
from tests.process.client.test_client_support import Recorder, client_for, take, unique
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import token

# --- pure parts ----------------------------------------------------------------------------------


class MaxRandom:
    """A random source that always returns the upper bound and records the bounds it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b


def test_backoff_ceiling_doubles_from_half_a_second_to_a_twenty_second_cap() -> None:
    rng = MaxRandom()
    backoff = Backoff(rng=rng)
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert all(low == 0.0 for low, _ in rng.calls)  # full jitter: always from zero
    assert backoff.attempt == 9


def test_backoff_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    rng = random.Random(7)
    runs = []
    for _ in range(300):
        backoff = Backoff(0.5, 20.0, rng=rng)
        runs.append([backoff.next_delay() for _ in range(12)])
    for attempt in range(12):
        ceiling = min(20.0, 0.5 * 2**attempt)
        samples = [run[attempt] for run in runs]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling  # spread over the whole range


def test_backoff_reset_starts_the_schedule_over_and_jitter_does_not_advance_it() -> None:
    backoff = Backoff(rng=MaxRandom())
    for _ in range(5):
        backoff.next_delay()
    assert backoff.jitter(3.0) == 3.0
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.5
    assert backoff.ceiling(10_000) == 20.0  # no overflow for huge attempt counts


def test_backoff_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


@pytest.mark.parametrize(
    ("code", "callback", "action"),
    [
        (1000, True, Action.STOP),
        (1003, True, Action.STOP),
        (1009, True, Action.STOP),
        (4000, True, Action.STOP),
        (4003, True, Action.STOP),
        (4004, True, Action.STOP),
        (4001, False, Action.STOP),
        (4001, True, Action.RETRY_AUTH),
        (4009, False, Action.STOP),
        (4009, True, Action.FRESH_TOKEN),
        (4011, False, Action.AT_ONCE),
        (1012, False, Action.DRAIN_DELAY),
        (1011, False, Action.BACKOFF),
        (1013, False, Action.BACKOFF),
        (4008, False, Action.BACKOFF),
        (4010, False, Action.BACKOFF),
        (4029, False, Action.BACKOFF),
        (1001, False, Action.BACKOFF),
        (None, False, Action.BACKOFF),
    ],
)
def test_close_code_policy_matches_the_protocol_table(code: int | None, callback: bool, action: Action) -> None:
    assert action_for(code, has_token_callback=callback) is action


def test_unknown_close_code_follows_the_servers_reconnect_flag() -> None:
    assert action_for(4321, server_reconnect=False, has_token_callback=True) is Action.STOP
    assert action_for(4321, server_reconnect=True, has_token_callback=True) is Action.BACKOFF


def test_refresh_margin_is_ten_percent_at_most_thirty_seconds_at_least_one() -> None:
    assert refresh_delay(3600) == 3570
    assert refresh_delay(100) == pytest.approx(90)
    assert refresh_delay(3) == 2
    assert refresh_delay(0.5) == 0


def test_pacer_allows_a_burst_then_the_rate() -> None:
    pacer = Pacer(rate=10, burst=3)
    pacer.reset(100.0)
    assert [pacer.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pacer.take(100.0) == pytest.approx(0.1)  # nothing taken: the caller comes back later
    assert pacer.take(100.1) == 0.0
    assert pacer.take(100.1) == pytest.approx(0.1)
    pacer.reset(200.0)
    assert pacer.take(200.0) == 0.0


def test_frames_are_split_on_newlines_into_json_objects() -> None:
    assert split_frame('{"push":"ping"}\n\n{"id":1,"ok":{}}\n') == [{"push": "ping"}, {"id": 1, "ok": {}}]
    with pytest.raises(ValueError):
        split_frame('{"push":"ping"}\nnot json')
    with pytest.raises(ValueError):
        split_frame("[1, 2]")


async def test_room_never_delivers_an_offset_twice_nor_goes_backwards() -> None:
    room = Room(Client("ws://127.0.0.1:9/ws", token=None), "chat:dedupe")
    room.joined(JoinResult("chat:dedupe", "e1", 2, recovered=False), since=None)
    for offset in (3, 3, 2, 4):
        assert room.publication({"offset": offset, "data": offset, "ts": 0})
    assert not room.publication({"offset": 9, "data": 9, "ts": 0})  # a gap is refused, not delivered
    pubs = [Message("chat:dedupe", "e1", n, n, 0) for n in (3, 4, 5, 6)]
    event = room.rejoined(JoinResult("chat:dedupe", "e1", 6, recovered=True, publications=pubs))
    assert event.recovered and event.position == StreamPosition("e1", 6)
    events = await take(room, room.pending)
    assert [e.offset for e in events if isinstance(e, Message)] == [3, 4, 5, 6]
    assert [e for e in events if isinstance(e, Rejoin)] == [event]
    assert events.index(event) == 2  # the re-join comes before what it recovered


# --- against a real server ---------------------------------------------------------------------


async def test_join_publish_iterate_history_presence_and_leave(server: ServerProcess) -> None:
    user = unique("alice-")
    name = unique("chat:")
    async with client_for(server.ws_url, user) as client:
        assert client.state is ConnectionState.CONNECTED and client.user == user
        room = await client.join(name)
        assert (room.offset, room.recovered, room.epoch is not None) == (0, None, True)
        first = await client.publish(name, {"text": "hello"})
        second = await room.publish({"text": "again"}, idempotency_key="k-2")
        assert (first.offset, second.offset) == (1, 2) and first.epoch == room.epoch
        received: list[Message] = []
        async for pub in room:
            received.append(pub)
            if len(received) == 2:
                break
        assert [p.data for p in received] == [{"text": "hello"}, {"text": "again"}]
        assert received[0].info is not None and received[0].info.user == user
        assert received[0].info.client == client.client_id
        assert room.position == StreamPosition(first.epoch, 2)

        history = await client.history(name)
        assert (history.epoch, history.offset) == (first.epoch, 2)
        assert [p.data for p in history.publications] == [{"text": "hello"}, {"text": "again"}]
        since = await client.history(name, since=StreamPosition(first.epoch, 1), limit=10)
        assert [p.offset for p in since.publications] == [2]

        presence = await client.presence(name)
        assert client.client_id in presence.clients and presence.users == {user}
        stats = await client.presence_stats(name)
        assert (stats.clients, stats.users) == (1, 1)

        await room.leave()
        assert name not in client.rooms and not room.active
        assert [p async for p in room] == []  # the iterator ends after a leave
        assert (await client.presence_stats(name)).clients == 0


async def test_idempotency_key_given_by_the_caller_returns_the_first_result(server: ServerProcess) -> None:
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        first = await client.publish(name, "once", idempotency_key="same-key")
        again = await client.publish(name, "twice?", idempotency_key="same-key")
        assert again == first
        assert [p.data for p in (await client.history(name)).publications] == ["once"]


async def test_error_replies_raise_command_error_with_the_code(server: ServerProcess) -> None:
    restricted = token(unique("eve-"), rooms=("quiet:*",), publish=())
    async with client_for(server.ws_url, token=restricted) as client:
        with pytest.raises(CommandRejected) as forbidden:
            await client.join(unique("chat:"))
        assert forbidden.value.code == 403
        with pytest.raises(CommandRejected) as unknown:
            await client.join(unique("nosuchns:"))
        assert unknown.value.code == 404
        with pytest.raises(CommandRejected) as no_publish:
            await client.publish(unique("quiet:"), "x")
        assert no_publish.value.code == 403
        with pytest.raises(CommandRejected) as not_joined:
            await client.leave(unique("quiet:"))
        assert not_joined.value.code == 409
        room = await client.join(unique("quiet:"))
        with pytest.raises(CommandRejected) as twice:
            await client.join(room.name)
        assert twice.value.code == 409
        assert client.state is ConnectionState.CONNECTED  # error replies never close the connection


async def test_join_and_leave_pushes_reach_other_members(server: ServerProcess) -> None:
    name = unique("chat:")
    bob_user = unique("bob-")
    async with client_for(server.ws_url) as alice, client_for(server.ws_url, bob_user) as bob:
        events = Recorder(alice)
        room = await alice.join(name)
        bob_room = await bob.join(name)
        await bob_room.leave()
        joined, left = await take(room, 2)
        assert [e.kind for e in (joined, left) if not isinstance(e, Message | Rejoin)] == ["join", "leave"]
        assert [(e.info.user, e.info.client) for e in events.presence] == [(bob_user, bob.client_id)] * 2


async def test_close_sends_normal_close_ends_iterators_and_fails_later_commands(server: ServerProcess) -> None:
    client = client_for(server.ws_url)
    events = Recorder(client)
    await client.connect()
    room = await client.join(unique("chat:"))

    reading = asyncio.Event()

    async def read_all() -> list[Message]:
        reading.set()
        return [pub async for pub in room]

    reader = asyncio.create_task(read_all())
    await reading.wait()  # the reader ran up to its first wait: the empty room
    assert not reader.done()
    await client.close()
    assert await asyncio.wait_for(reader, 10) == []  # a blocked iterator ends cleanly on close()
    assert client.state is ConnectionState.CLOSED
    assert events.states == [ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.CLOSED]
    assert [(d.code, d.reconnect) for d in events.disconnects] == [(1000, False)]
    assert client.attempts == 1
    with pytest.raises(ClientClosed):
        await client.publish(room.name, "late")
    with pytest.raises(ClientClosed):
        await client.history(room.name)
    with pytest.raises(ClientClosed):
        await client.connect()
    await client.close()  # idempotent


async def test_offline_queue_is_bounded_and_fails_on_close() -> None:
    client = Client("ws://127.0.0.1:9/ws", token=None, max_queue=2)
    queued = [asyncio.create_task(client.publish("chat:x", n)) for n in range(2)]
    await until(lambda: client.queued == 2)
    with pytest.raises(QueueFull):
        await client.publish("chat:x", "one too many")
    await client.close()
    for task in queued:
        with pytest.raises(ClientClosed):
            await task


async def test_many_concurrent_publishes_are_pipelined_batched_and_delivered_in_order(server: ServerProcess) -> None:
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        room = await client.join(name)
        results = await asyncio.wait_for(asyncio.gather(*(client.publish(name, {"n": n}) for n in range(150))), 30)
        assert [r.offset for r in results] == list(range(1, 151))
        received = await take(room, 150)
        assert [e.data for e in received if isinstance(e, Message)] == [{"n": n} for n in range(150)]


async def test_publishes_are_paced_below_the_servers_command_rate(server_factory: ServerFactory) -> None:
    server = server_factory(command_rate=50, command_burst=20)
    name = unique("chat:")
    async with client_for(server.ws_url, publish_rate=40, publish_burst=15) as client:
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(client.publish(name, n) for n in range(60))), 30)
        assert [r.offset for r in results] == list(range(1, 61))  # no 429, no 4029
        assert time.monotonic() - started >= (60 - 15) / 40 * 0.9
        assert client.connects == 1


async def test_join_with_since_resumes_from_a_position_the_application_kept(server: ServerProcess) -> None:
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        for n in range(3):
            await client.publish(name, n)
        history = await client.history(name)
        kept = StreamPosition(history.epoch, 1)

        room = await client.join(name, since=kept)
        assert room.recovered is True and room.position == StreamPosition(history.epoch, 3)
        rejoin, *missed = await take(room, 3)
        assert isinstance(rejoin, Rejoin) and rejoin.recovered and rejoin.previous == kept
        assert [p.data for p in missed if isinstance(p, Message)] == [1, 2]
        await room.leave()

        stale = await client.join(name, since=StreamPosition("some-old-epoch", 1))
        assert stale.recovered is False and stale.position == StreamPosition(history.epoch, 3)
        [signal] = await take(stale, 1)
        assert isinstance(signal, Rejoin) and not signal.recovered and signal.epoch_changed
