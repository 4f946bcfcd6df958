"""The process managers behind the scale-out fault tests really work: Redis (AOF, client kill),
Redis Sentinel failover and the nginx load balancer (HTTP, WebSocket, sid affinity, failover).

Every test checks that no process it started outlives it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.nginx import Nginx, NginxError
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer, SentinelGroup

# --- leak check -------------------------------------------------------------------------------------


def _live_children() -> set[int]:
    live: set[int] = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                live.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return live


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Set up first, torn down last: every process started by the test (and its fixtures) is gone."""
    before = _live_children()
    yield
    deadline = time.monotonic() + 15
    while (leaked := _live_children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"processes left running: {[psutil.Process(pid).cmdline() for pid in leaked]}"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --- Redis ------------------------------------------------------------------------------------------

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Build (not start) Redis servers in their own dirs; all are stopped after the test."""
    made: list[RedisServer] = []

    def make(
        name: str = "redis",
        *,
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        replica_of: tuple[str, int] | None = None,
    ) -> RedisServer:
        server = RedisServer(
            tmp_path / name, port=port, appendonly=appendonly, password=password, replica_of=replica_of
        )
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def test_redis_starts_answers_on_its_url_and_stops(redis_factory: RedisFactory) -> None:
    server = redis_factory().start()
    assert server.port not in (6379, 26379)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.command("PING") is True
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        client.set("greeting", "hello")
    assert server.command("GET", "greeting") == "hello"
    assert server.info("server")["tcp_port"] == server.port
    pid = server.pid
    assert psutil.pid_exists(pid)

    server.stop()
    assert _gone(pid)
    assert _refuses(server.port)


def test_redis_with_password_rejects_clients_without_it(redis_factory: RedisFactory) -> None:
    server = redis_factory(password="s3cret:/@").start()
    assert server.url == f"redis://:s3cret%3A%2F%40@127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        assert client.ping() is True
    with (
        redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.get("anything")


def test_redis_start_on_a_busy_port_fails_with_the_log(redis_factory: RedisFactory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = redis_factory(port=busy.getsockname()[1])
        with pytest.raises(RuntimeError, match="(?s)exited with .*Address already in use"):
            server.start()
    assert not server.running


def test_aof_data_survives_restart_and_kill(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=True).start()
    server.command("SET", "kept", "1")
    old_pid = server.pid

    server.restart()
    assert server.pid != old_pid
    assert server.command("GET", "kept") == "1"

    server.command("SET", "fsynced", "2")
    server.kill()
    server.start()
    assert server.command("MGET", "kept", "fsynced") == ["1", "2"]


def test_without_aof_data_is_lost_on_restart(redis_factory: RedisFactory) -> None:
    server = redis_factory().start()
    server.command("SET", "volatile", "1")
    port = server.port
    server.restart()
    assert server.port == port
    assert server.command("GET", "volatile") is None


def test_flushall_empties_the_server(redis_factory: RedisFactory) -> None:
    server = redis_factory().start()
    server.command("SET", "a", "1")
    server.flushall()
    assert server.command("DBSIZE") == 0


async def test_client_kill_disconnects_named_clients_and_they_notice(redis_factory: RedisFactory) -> None:
    server = redis_factory().start()
    no_retry = Retry(NoBackoff(), 0)
    subscriber = server.async_client(client_name="hubbub-node-a", retry=no_retry)
    commander = server.async_client(client_name="hubbub-node-b", retry=no_retry, single_connection_client=True)
    bystander = server.async_client(client_name="other-client", retry=no_retry, single_connection_client=True)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe("room")
        assert (await pubsub.get_message(timeout=10))["type"] == "subscribe"
        assert await commander.ping() is True
        assert await bystander.ping() is True
        assert sorted(server.client_names()) == ["hubbub-node-a", "hubbub-node-b", "other-client"]

        assert server.client_kill("hubbub-") == 2

        with pytest.raises(redis.ConnectionError):  # a subscriber notices without sending anything
            await asyncio.wait_for(pubsub.get_message(timeout=10), 15)
        with pytest.raises(redis.ConnectionError):
            await commander.ping()
        assert await bystander.ping() is True
        assert server.client_names() == ["other-client"]
        assert server.client_kill("hubbub-") == 0
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        for client in (subscriber, commander, bystander):
            await client.aclose()


def test_client_kill_refuses_an_empty_prefix(redis_factory: RedisFactory) -> None:
    server = redis_factory().start()
    with pytest.raises(ValueError):
        server.client_kill("")


def test_replica_follows_its_master(redis_factory: RedisFactory) -> None:
    master = redis_factory("master").start()
    replica = redis_factory("replica", replica_of=("127.0.0.1", master.port)).start()
    master.command("SET", "k", "v")
    replica.wait_for_replication()
    assert replica.role() == "slave"
    assert replica.command("GET", "k") == "v"


# --- Sentinel ---------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        yield group.start()
    finally:
        pids = group.pids
        group.stop()
        assert all(_gone(pid) for pid in pids)


@pytest.mark.slow
async def test_sentinel_failover_promotes_the_replica_and_clients_follow(sentinel_group: SentinelGroup) -> None:
    group = sentinel_group
    old_master = group.master_address()
    assert old_master == group.master.address
    assert len(group.sentinels) == 3 and all(port != 26379 for _, port in group.sentinels)

    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        group.sentinels, socket_timeout=1, sentinel_kwargs={"socket_timeout": 1}, decode_responses=True
    )
    client = sentinel.master_for(group.service, socket_timeout=1, decode_responses=True)
    try:
        await client.set("before", "1")
        group.replica.wait_for_replication()

        new_master = await asyncio.to_thread(group.fail_master)

        assert new_master != old_master
        assert new_master == group.master.address
        assert group.master.role() == "master"
        assert await sentinel.discover_master(group.service) == new_master
        # The same client object reconnects through the sentinels to the promoted replica.
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.set("after", "2")
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert await client.get("before") == "1"
        assert group.master.command("GET", "after") == "2"
    finally:
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()


# --- nginx ------------------------------------------------------------------------------------------


@dataclass
class Upstream:
    """A tiny node: answers plain HTTP with its port; on /ws sends its port, then echoes."""

    port: int
    server: Server

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_upstream() -> Upstream:
    port = free_port()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(str(port))
        async for message in ws:
            await ws.send(message)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/ws":
            return None
        return connection.respond(HTTPStatus.OK, f"{port}\n")

    server = await serve(handler, "127.0.0.1", port, process_request=process_request)
    return Upstream(port, server)


@dataclass
class Balanced:
    nginx: Nginx
    upstreams: list[Upstream]


@pytest.fixture
async def balanced(tmp_path: Path) -> AsyncIterator[Balanced]:
    upstreams = [await start_upstream(), await start_upstream()]
    nginx = Nginx(tmp_path / "nginx", [u.port for u in upstreams])
    try:
        nginx.start()
        yield Balanced(nginx, upstreams)
    finally:
        pids = [nginx.pid, *nginx.worker_pids()] if nginx.running else []
        nginx.stop()
        assert all(_gone(pid) for pid in pids)
        for upstream in upstreams:
            await upstream.stop()


async def http_port(nginx: Nginx, query: str = "") -> int:
    """Which upstream served a plain HTTP request (a fresh connection each time)."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(f"{nginx.http_url}/port{query}")
        response.raise_for_status()
        return int(response.text)


async def ws_port(nginx: Nginx, query: str = "") -> int:
    """Which upstream accepted a WebSocket through nginx; also checks the echo."""
    async with connect(nginx.ws_url + query, proxy=None, open_timeout=5) as ws:
        port = int(await asyncio.wait_for(ws.recv(), 5))
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        return port


async def test_nginx_proxies_http_and_websocket(balanced: Balanced) -> None:
    ports = {u.port for u in balanced.upstreams}
    assert balanced.nginx.port not in ports | {80}
    assert balanced.nginx.ws_url == f"ws://127.0.0.1:{balanced.nginx.port}/ws"
    assert await http_port(balanced.nginx) in ports
    assert await ws_port(balanced.nginx) in ports
    # Without a sid, connections are spread over the nodes.
    seen = {await http_port(balanced.nginx) for _ in range(20)}
    assert seen == ports


async def test_nginx_routes_a_sid_to_the_same_upstream(balanced: Balanced) -> None:
    nginx = balanced.nginx
    home = await http_port(nginx, "?sid=x")
    assert {await ws_port(nginx, "?sid=x") for _ in range(8)} == {home}
    assert {await http_port(nginx, "?sid=x") for _ in range(8)} == {home}
    # Different sids hash to different nodes.
    assert {await http_port(nginx, f"?sid=user-{i}") for i in range(20)} == {u.port for u in balanced.upstreams}


async def test_nginx_moves_a_sid_to_another_upstream_when_its_node_stops(balanced: Balanced) -> None:
    nginx = balanced.nginx
    home = await ws_port(nginx, "?sid=x")
    (dead,) = [u for u in balanced.upstreams if u.port == home]
    (alive,) = [u for u in balanced.upstreams if u.port != home]

    async with connect(nginx.ws_url + "?sid=x", proxy=None, open_timeout=5) as ws:
        assert int(await ws.recv()) == home
        await dead.stop()
        with pytest.raises(ConnectionClosed):  # the open connection through nginx is dropped
            await asyncio.wait_for(ws.recv(), 5)

    assert {await ws_port(nginx, "?sid=x") for _ in range(5)} == {alive.port}
    assert await http_port(nginx, "?sid=x") == alive.port
    assert await http_port(nginx) == alive.port


async def test_nginx_reload_switches_upstreams(balanced: Balanced) -> None:
    nginx = balanced.nginx
    only = balanced.upstreams[1].port
    old_workers = set(nginx.worker_pids())
    await asyncio.to_thread(nginx.reload, [only])
    assert nginx.upstreams == [only]
    assert set(nginx.worker_pids()) - old_workers
    assert {await http_port(nginx, f"?sid=user-{i}") for i in range(6)} == {only}


def test_nginx_start_on_a_busy_port_fails_with_the_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        nginx = Nginx(tmp_path / "nginx", [free_port()], port=busy.getsockname()[1])
        try:
            with pytest.raises(NginxError, match="Address already in use"):
                nginx.start()
            assert not nginx.running
        finally:
            nginx.stop()
