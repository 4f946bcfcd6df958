"""hubbub_client reconnects against real servers: restarts, recovery, the offline queue, lost replies,
dead connections and command timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest

from hubbub_client import (
    CommandRejected,
    CommandTimeout,
    ConnectionState,
    Message,
    Rejoin,
    StreamPosition,
)
from tests.conftest import ServerFactory
from tests.process.client.test_client_support import Recorder, Relay, client_for, take, unique
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import token


async def test_restart_reconnects_with_backoff_and_reports_not_recovered_with_a_new_epoch(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        events = Recorder(client)
        room = await client.join(name)
        await client.publish(name, "before")
        old = await take(room, 1)
        assert isinstance(old[0], Message) and old[0].offset == 1
        old_epoch, old_client = room.epoch, client.client_id

        await asyncio.to_thread(server.stop)
        await until(lambda: len(events.connect_errors) >= 1, what="a failed attempt while the server is down")
        [stopped] = events.disconnects
        assert stopped.reconnect and stopped.code in (1012, None)  # 1012: uvicorn's close on shutdown
        assert client.state is ConnectionState.RECONNECTING
        assert client.backoff.attempt >= 1

        await asyncio.to_thread(server.start)
        await client.wait_connected(timeout=30)
        assert client.client_id != old_client
        assert client.backoff.attempt == 0  # reset by the successful connect
        [rejoin] = events.rejoins
        assert rejoin.room == name and rejoin.recovered is False and rejoin.error is None
        assert rejoin.previous == StreamPosition(str(old_epoch), 1)
        assert rejoin.position is not None and rejoin.position.epoch != old_epoch and rejoin.epoch_changed
        assert room.recovered is False and room.epoch == rejoin.position.epoch and room.offset == 0

        await client.publish(name, "after")
        signal, fresh = await take(room, 2)  # the "not recovered" signal comes first, in the room's stream
        assert signal == rejoin
        assert isinstance(fresh, Message) and (fresh.epoch, fresh.offset, fresh.data) == (room.epoch, 1, "after")


async def test_forced_reconnect_recovers_every_missed_publication_exactly_once_in_order(
    server: ServerProcess,
) -> None:
    user, name = unique("alice-"), unique("chat:")
    gate = asyncio.Event()
    calls = 0

    async def fresh_token() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()  # hold the reconnect until the publications below were made
        return token(user)

    async with client_for(server.ws_url, token=fresh_token) as client:
        events = Recorder(client)
        room = await client.join(name)
        server.api("POST", "/api/publish", json={"room": name, "data": 0})
        await take(room, 1)
        old_client = client.client_id

        assert server.api("POST", "/api/disconnect", json={"user": user, "code": 4011}).json() == {"disconnected": 1}
        await until(lambda: events.disconnects, what="the disconnect")
        for n in range(1, 8):  # published while the client is away
            assert server.api("POST", "/api/publish", json={"room": name, "data": n}).status_code == 200
        gate.set()

        rejoin, *recovered = await take(room, 8)
        assert isinstance(rejoin, Rejoin) and rejoin.recovered is True and room.recovered is True
        assert rejoin.previous == StreamPosition(str(room.epoch), 1) and rejoin.position == StreamPosition(
            str(room.epoch), 8
        )
        pubs = [e for e in recovered if isinstance(e, Message)]
        assert [p.offset for p in pubs] == list(range(2, 9)) and [p.data for p in pubs] == list(range(1, 8))
        assert [(d.code, d.reconnect, d.delay) for d in events.disconnects] == [(4011, True, 0.0)]
        assert events.rejoins == [rejoin]
        assert client.client_id != old_client

        server.api("POST", "/api/publish", json={"room": name, "data": 8})
        [live] = await take(room, 1)
        assert isinstance(live, Message) and live.offset == 9  # live ones follow
        # Nothing twice: anything delivered again would come before the next publication.
        server.api("POST", "/api/publish", json={"room": name, "data": 9})
        [last] = await take(room, 1)
        assert isinstance(last, Message) and last.offset == 10 and room.pending == 0


async def test_offline_publishes_are_flushed_in_order_exactly_once_after_restart(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        events = Recorder(client)
        await asyncio.to_thread(server.stop)
        await until(lambda: events.connect_errors, what="the client to notice the server is down")
        publishes = [asyncio.create_task(client.publish(name, {"n": n})) for n in range(5)]
        await until(lambda: client.queued == 5)
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in publishes)

        await asyncio.to_thread(server.start)
        results = await asyncio.wait_for(asyncio.gather(*publishes), 30)
        assert [r.offset for r in results] == [1, 2, 3, 4, 5] and len({r.epoch for r in results}) == 1
        history = server.api("GET", f"/api/history/{name}").json()
        assert [p["data"] for p in history["publications"]] == [{"n": n} for n in range(5)]
        assert client.queued == 0


async def test_publish_whose_reply_was_lost_is_retried_with_its_key_and_not_duplicated(
    server: ServerProcess,
) -> None:
    relay = await Relay(server.port).start()
    name = unique("chat:")
    try:
        async with client_for(relay.ws_url) as client:
            events = Recorder(client)
            relay.blackhole = True  # the server's replies no longer reach the client
            publish = asyncio.create_task(client.publish(name, "exactly once"))
            await until(lambda: server.api("GET", f"/api/history/{name}").json()["offset"] == 1, what="the publish")
            assert not publish.done()
            relay.blackhole = False
            relay.cut()  # the reply is lost with the connection
            result = await asyncio.wait_for(publish, 30)
            assert result.offset == 1
            assert events.disconnects and events.disconnects[0].code is None
            history = server.api("GET", f"/api/history/{name}").json()
            assert (history["offset"], [p["data"] for p in history["publications"]]) == (1, ["exactly once"])
    finally:
        await relay.close()


async def test_silent_connection_is_declared_dead_after_ping_interval_plus_grace(
    server_factory: ServerFactory,
) -> None:
    # The server's own verdict (no pong within pong_timeout: it closes the connection, which the relay
    # passes on) comes more than 2 s after the black hole opens, at least 0.5 s after the client's.
    server = server_factory(ping_interval=1, pong_timeout=2)
    relay = await Relay(server.port).start()
    try:
        async with client_for(relay.ws_url, heartbeat_grace=0.5) as client:
            events = Recorder(client)
            first = client.client_id
            client.on_disconnect(lambda _: setattr(relay, "blackhole", False))
            relay.blackhole = True
            started = time.monotonic()
            await until(lambda: events.disconnects, timeout=20, what="the client to give up on the connection")
            # Dead 1.5 s (1 s ping interval + 0.5 s grace) after the last frame, which came at most 1 s
            # before the black hole opened: 0.5 to 1.5 s from here. The upper bound leaves a loaded machine
            # room for late timers and still fails a client that ignores the grace (10 s by default).
            assert 0.4 <= time.monotonic() - started < 6
            [lost] = events.disconnects
            assert lost.code is None and "nothing received" in lost.reason and lost.reconnect
            await client.wait_connected(timeout=30)
            assert client.client_id != first
    finally:
        await relay.close()


async def test_command_without_reply_raises_command_timeout(server: ServerProcess) -> None:
    relay = await Relay(server.port).start()
    name = unique("chat:")
    try:
        async with client_for(relay.ws_url, command_timeout=0.5) as client:
            relay.blackhole = True
            started = time.monotonic()
            with pytest.raises(CommandTimeout) as timed_out:
                await client.presence_stats(name)
            assert timed_out.value.op == "presence_stats"
            # Not before the 0.5 s timeout; the upper bound leaves a loaded machine room and still fails the
            # 5 s default (or the tests' 30 s).
            assert 0.4 <= time.monotonic() - started < 3.0
            with pytest.raises(CommandTimeout) as publish_timeout:
                await client.publish(name, "unanswered", idempotency_key="retry-me")
            assert publish_timeout.value.idempotency_key == "retry-me"
            assert client.queued == 0  # a timed-out publish is not retried behind the caller's back
    finally:
        await relay.close()


async def test_join_while_disconnected_waits_for_the_reconnect(server_factory: ServerFactory) -> None:
    server = server_factory()
    name = unique("chat:")
    async with client_for(server.ws_url) as client:
        events = Recorder(client)
        await asyncio.to_thread(server.stop)
        await until(lambda: events.connect_errors)
        joining = asyncio.create_task(client.join(name))
        await asyncio.sleep(0.1)
        assert not joining.done()
        await asyncio.to_thread(server.start)
        room = await asyncio.wait_for(joining, 60)  # a restart on a loaded machine; bounded by command_timeout
        assert room.active and client.rooms == {name: room}
        assert not [e for e in events.rejoins if isinstance(e, Rejoin) and e.room == name]


async def test_room_that_cannot_be_rejoined_is_closed_with_the_error(server: ServerProcess) -> None:
    user, name = unique("grace-"), unique("chat:")
    grants = iter([("*",), ("quiet:*",)])  # the second token no longer allows the room

    async def narrowing_token() -> str:
        return token(user, rooms=next(grants, ("quiet:*",)))

    async with client_for(server.ws_url, token=narrowing_token) as client:
        events = Recorder(client)
        room = await client.join(name)
        server.api("POST", "/api/disconnect", json={"user": user, "code": 4011})
        await until(lambda: events.rejoins, what="the re-join result")
        [failed] = events.rejoins
        assert failed.error is not None and failed.error.code == 403 and not failed.recovered
        assert not room.active and name not in client.rooms
        with pytest.raises(CommandRejected) as raised:
            await take(room, 1)
        assert raised.value.code == 403
        assert client.state is ConnectionState.CONNECTED
