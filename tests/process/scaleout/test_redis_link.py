"""The pipelined Redis connection (hubbub.backends.redis_link) against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from hubbub.backends import create_backends
from hubbub.backends.base import StreamOptions
from hubbub.backends.redis_link import Link
from hubbub.backends.redis_pool import RedisClients, connect
from hubbub.loader import load_settings
from hubbub.types import Room
from tests.support.polling import until
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[RedisClients]:
    made = connect(load_settings(env={}, overrides={"redis_url": redis_server.url, "redis_timeout": 1.0}))
    yield made
    await made.aclose()


async def test_concurrent_commands_are_applied_in_call_order_and_each_caller_gets_its_own_reply(
    clients: RedisClients,
) -> None:
    link = Link(clients.connection_factory(), timeout=1.0)
    try:
        # Issued before the connection exists, then in the same iteration as others: all in order.
        replies = await asyncio.gather(*(link.call("INCR", "counter") for _ in range(2000)))
        assert replies == list(range(1, 2001))
        pushed = await asyncio.gather(*(link.call("RPUSH", "list", i) for i in range(100)))
        assert pushed == list(range(1, 101))
        assert await link.call("LRANGE", "list", 0, -1) == [str(i).encode() for i in range(100)]
    finally:
        await link.aclose()


async def test_an_error_reply_fails_only_its_own_caller(clients: RedisClients) -> None:
    link = Link(clients.connection_factory(), timeout=1.0)
    try:
        await link.call("SET", "text", "not a number")
        results = await asyncio.gather(
            link.call("INCR", "n"), link.call("INCR", "text"), link.call("INCR", "n"), return_exceptions=True
        )
        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])
        assert link.connected
    finally:
        await link.aclose()


async def test_a_redis_that_stops_answering_fails_callers_within_the_timeout_and_the_link_recovers(
    clients: RedisClients, redis_server: RedisServer
) -> None:
    link = Link(clients.connection_factory(), timeout=0.5)
    try:
        await link.call("PING")
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(link.call("INCR", "n") for _ in range(10)), return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert all(isinstance(r, TimeoutError) for r in results), results
        # The bound under test: callers fail after the 0.5 s timeout, not before and not when Redis comes back
        # (only SIGCONT would end the wait otherwise). The slack covers a loaded machine's late timers.
        assert 0.4 < waited < 0.5 + 2.5
        assert not link.connected
        assert await link.call("PING") == b"PONG"  # a new connection
    finally:
        await link.aclose()


async def test_callers_waiting_when_redis_restarts_fail_and_the_next_call_reconnects_with_scripts_loaded(
    clients: RedisClients, redis_server: RedisServer
) -> None:
    script = "return redis.call('INCR', KEYS[1])"
    link = Link(clients.connection_factory(), timeout=2.0, greeting=[("SCRIPT", "LOAD", script)])
    try:
        sha = await link.call("SCRIPT", "LOAD", script)
        assert await link.call("EVALSHA", sha, 1, "k") == 1
        lost = link.lost()
        redis_server.kill()
        waiting = link.call("BLPOP", "never", 0)
        with pytest.raises(ConnectionError):
            await waiting
        assert lost.done()
        redis_server.start()
        # The script cache died with the server: the greeting loaded it again before this call.
        assert await link.call("EVALSHA", sha, 1, "k") == 1
    finally:
        await link.aclose()


async def test_subscriber_link_delivers_messages_to_the_push_handler_and_a_ping_confirms_subscribes(
    clients: RedisClients, redis_server: RedisServer
) -> None:
    pushes: list[list[Any]] = []
    link = Link(clients.connection_factory(subscriber=True), timeout=1.0, on_push=pushes.append)
    try:
        await link.connect()
        link.send("SUBSCRIBE", "a", "b")
        await link.call("PING")  # answered after both confirmations
        assert [p[:2] for p in pushes] == [[b"subscribe", b"a"], [b"subscribe", b"b"]]
        with redis_server.client() as c:
            for i in range(5):
                c.publish("a" if i % 2 else "b", str(i))
        await until(lambda: len(pushes) >= 7, what="the 5 messages")
        assert [(p[1], p[2]) for p in pushes[2:]] == [
            (b"b", b"0"),
            (b"a", b"1"),
            (b"b", b"2"),
            (b"a", b"3"),
            (b"b", b"4"),
        ]
    finally:
        await link.aclose()


async def test_commands_beyond_the_pending_bound_fail_at_once_instead_of_piling_up(clients: RedisClients) -> None:
    link = Link(clients.connection_factory(), timeout=1.0, max_pending=10)
    try:
        calls = [link.call("INCR", "n") for _ in range(12)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[:10] == list(range(1, 11))
        assert all(isinstance(r, ConnectionError) and "waiting" in str(r) for r in results[10:])
    finally:
        await link.aclose()


async def test_an_unreachable_redis_fails_calls_promptly_and_a_closed_link_refuses_calls(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "never-started")
    made = connect(load_settings(env={}, overrides={"redis_url": server.url, "redis_timeout": 5.0}))
    link = Link(made.connection_factory(), timeout=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await link.call("PING")
        # Promptly: a refused connection fails at once (milliseconds), not after the 5 s timeout; the bound
        # between the two leaves a loaded machine room.
        assert time.monotonic() - started < 2.0
    finally:
        await link.aclose()
        await made.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await link.call("PING")


async def test_engine_publishes_after_script_flush_by_sending_the_script_again(redis_server: RedisServer) -> None:
    backends = create_backends(load_settings(env={}, overrides={"redis_url": redis_server.url}))
    options = StreamOptions(history_size=10, history_ttl=60, idempotency_window=60, meta_ttl=60)
    room = Room("chat:flush")
    try:
        first = await backends.broker.publish(room, "a", info=None, idempotency_key=None, options=options)
        with redis_server.client() as c:
            c.script_flush()
        second = await backends.broker.publish(room, "b", info=None, idempotency_key=None, options=options)
        assert (first.offset, second.offset) == (1, 2) and first.epoch == second.epoch
        found = await backends.history.read(room, since=None, limit=10, options=options)
        assert [p.value for p in found.publications] == ["a", "b"]
    finally:
        await backends.aclose()
