"""hubbub_client against real servers: terminal close codes, tokens (invalid, refreshed, expired) and the
protocol heartbeat."""

from __future__ import annotations

import asyncio
import time

import pytest

from hubbub_client import Client, ClientClosed, ConnectionState
from tests.conftest import ServerFactory
from tests.process.client.test_client_support import FAST, Recorder, client_for, take, unique
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import token


async def test_disconnect_by_the_api_4000_is_terminal(server: ServerProcess) -> None:
    user = unique("mallory-")
    client = client_for(server.ws_url, user)
    events = Recorder(client)
    await client.connect()
    room = await client.join(unique("chat:"))
    server.api("POST", "/api/disconnect", json={"user": user, "code": 4000, "reason": "banned"})
    final = await asyncio.wait_for(client.wait_closed(), 30)
    assert (final.code, final.reason, final.reconnect) == (4000, "banned", False)
    assert client.state is ConnectionState.CLOSED and events.disconnects == [final]
    with pytest.raises(ClientClosed) as closed:
        await take(room, 1)  # a room iterator does not end silently after a terminal close
    assert closed.value.disconnect == final
    await asyncio.sleep(0.3)
    assert client.attempts == 1  # never reconnected


async def test_invalid_token_is_4001_without_a_retry_loop(server: ServerProcess) -> None:
    client = Client(server.ws_url, token="not-a-jwt", **FAST)
    with pytest.raises(ClientClosed) as closed:
        await asyncio.wait_for(client.connect(), 30)
    assert closed.value.disconnect is not None and closed.value.disconnect.code == 4001
    await asyncio.sleep(0.3)
    assert client.attempts == 1 and client.connects == 0


async def test_token_callback_repeating_the_rejected_token_stops_after_asking_once_more(
    server: ServerProcess,
) -> None:
    calls = 0

    async def same_bad_token() -> str:
        nonlocal calls
        calls += 1
        return "still-not-a-jwt"

    client = Client(server.ws_url, token=same_bad_token, **FAST)
    with pytest.raises(ClientClosed) as closed:
        await asyncio.wait_for(client.connect(), 30)
    assert closed.value.disconnect is not None and closed.value.disconnect.code == 4001
    await asyncio.sleep(0.3)
    assert (calls, client.attempts) == (2, 1)


async def test_4001_is_retried_once_when_the_callback_gives_a_new_token(server: ServerProcess) -> None:
    tokens = iter(["expired-or-garbage", token(unique("carol-"))])

    async def next_token() -> str:
        return next(tokens)

    async with Client(server.ws_url, token=next_token, **FAST) as client:
        assert client.state is ConnectionState.CONNECTED
        assert (client.attempts, client.connects) == (2, 1)


async def test_token_is_refreshed_before_expiry_and_the_connection_outlives_it(server: ServerProcess) -> None:
    user = unique("dave-")
    expiries: list[float] = []

    async def short_lived() -> str:
        expiries.append(int(time.time() + 3))
        return token(user, ttl=3)

    async with client_for(server.ws_url, token=short_lived) as client:
        events = Recorder(client)
        first = client.client_id
        await until(lambda: events.refreshes, timeout=20, what="a refresh")
        assert events.refreshes[0].ok and events.refreshes[0].expires_in is not None
        assert time.time() < expiries[0]  # refreshed before the original expiry
        while time.time() < expiries[0] + 0.7:  # the server would close 4009 here without the refresh
            await asyncio.sleep(0.05)
        assert events.disconnects == [] and client.client_id == first
        assert client.state is ConnectionState.CONNECTED
        assert (await client.presence_stats(unique("chat:"))).clients == 0  # still usable


async def test_expired_token_4009_reconnects_with_a_fresh_token(server: ServerProcess) -> None:
    user, name = unique("erin-"), unique("chat:")
    calls = 0

    async def slow_on_refresh() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return token(user, ttl=2)
        if calls == 2:  # the refresh: too slow, the token expires first
            await asyncio.sleep(30)
        return token(user, ttl=600)

    async with client_for(server.ws_url, token=slow_on_refresh) as client:
        events = Recorder(client)
        room = await client.join(name)
        first = client.client_id
        await until(lambda: events.disconnects, timeout=20, what="the 4009 close")
        [expired] = events.disconnects
        assert (expired.code, expired.reconnect, expired.delay) == (4009, True, 0.0)
        await client.wait_connected(timeout=20)
        assert client.client_id != first and calls == 3
        await until(lambda: events.rejoins, timeout=20, what="the room's re-join")
        assert [r.recovered for r in events.rejoins] == [True] and room.recovered is True


async def test_expired_static_token_stops_the_client_with_4009(server: ServerProcess) -> None:
    client = Client(server.ws_url, token=token(unique("frank-"), ttl=1.5), **FAST)
    await client.connect()
    final = await asyncio.wait_for(client.wait_closed(), 30)
    assert (final.code, final.reconnect) == (4009, False)  # reconnecting with the same token cannot work


async def test_pings_are_answered_and_the_connection_stays_up(server_factory: ServerFactory) -> None:
    server = server_factory(ping_interval=1, pong_timeout=2)
    async with client_for(server.ws_url) as client:
        events = Recorder(client)
        first = client.client_id
        await until(lambda: client.pings >= 3, what="three pings answered")
        assert events.disconnects == [] and client.client_id == first
        assert client.state is ConnectionState.CONNECTED
