"""Rebalancing end to end, without Kubernetes: the operator's Rebalancer against two real nodes on a real
Redis behind the project's nginx. Clients connected while only node A served are moved, with paced 1012
closes, until the nodes are balanced, and every client still holds every publication exactly once, in
order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from hubbub_client import Client, ConnectionState, Message, Rejoin
from hubbub_operator.rebalance import HttpPods, Pod, Rebalancer, plan_sheds
from tests.process.client.test_client_support import client_for
from tests.support.nginx import Nginx, SidRouting
from tests.support.polling import until
from tests.support.redis_server import RedisServer
from tests.support.server import API_KEY, ServerProcess, server_config

pytestmark = pytest.mark.redis

CLIENTS = 40
TOLERANCE = 20.0
PERIOD = 2.0
#: 40 → 20 → 10 → 5 excess connections: balanced within 20 % after about 3 rounds.
ROUNDS = 8


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def two_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    nodes = [
        ServerProcess(tmp_path, server_config(redis_url=redis_server.url, node_name=f"node-{name}"))
        for name in ("a", "b")
    ]
    try:
        for node in nodes:
            node.start().wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


class Listener:
    """One client's view of the room: every publication's number, and every re-join, in order."""

    def __init__(self, client: Client, room: str) -> None:
        self.client = client
        self.room = room
        self.received: list[int] = []
        self.rejoins: list[Rejoin] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        joined = await self.client.join(self.room)

        async def listen() -> None:
            async for event in joined.events():
                if isinstance(event, Message):
                    assert isinstance(event.data, int)
                    self.received.append(event.data)
                elif isinstance(event, Rejoin):
                    self.rejoins.append(event)

        self._task = asyncio.create_task(listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def listeners(url: str, room: str, count: int) -> AsyncIterator[list[Listener]]:
    # A 1012's reconnect waits a random delay of up to drain_jitter: 1 s, not the tests' usual 0.1 s, so
    # the reconnects of a shed come spread out as they do in production.
    clients = [client_for(url, f"user{i}", drain_jitter=1.0) for i in range(count)]
    group = [Listener(client, room) for client in clients]
    try:
        for client, listener in zip(clients, group, strict=True):
            await client.connect()
            await listener.start()
        yield group
    finally:
        for listener in group:
            await listener.stop()
        for client in clients:
            await client.close()


async def publish_forever(url: str, room: str, published: list[int], stop: asyncio.Event) -> None:
    """Publish 0, 1, 2, ... through node A's HTTP API (20 a second) until `stop`; `published` holds the acked."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
        n = 0
        while not stop.is_set():
            body = {"room": room, "data": n, "idempotency_key": f"{room}-{n}"}
            response = await http.post(url + "/api/publish", json=body)
            assert response.status_code == 200, response.text
            published.append(n)
            n += 1
            await asyncio.sleep(0.05)


async def shed_total(nodes: list[ServerProcess]) -> int:
    """Connections the nodes have closed for a shed so far (hubbub_shed_connections_total)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for node in nodes:
            for line in (await http.get(node.http_url + "/metrics")).text.splitlines():
                if line.startswith("hubbub_shed_connections_total "):
                    total += float(line.split()[1])
    return int(total)


async def counts(nodes: list[ServerProcess]) -> dict[str, int]:
    """Each node's open connections, from its own /api/info."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
        found = {}
        for node in nodes:
            info = (await http.get(node.http_url + "/api/info")).json()
            name = node.config["node_name"]
            found[name] = next(n["connections"] for n in info["nodes"] if n["name"] == name)
        return found


async def test_clients_of_a_loaded_node_move_to_a_new_one_without_loss_or_duplicates(
    tmp_path: Path, two_nodes: list[ServerProcess]
) -> None:
    a, b = two_nodes
    room = f"chat:{uuid.uuid4().hex[:10]}"
    # Round robin, as a Service spreads new connections without regard to the pods' load: a shed client
    # may come back to the node that shed it, and the excess shrinks by rounds. A long shutdown timeout
    # keeps the connections of the worker before the reload open, as a Service's existing connections
    # stay on their pods when a pod is added.
    nginx = Nginx(tmp_path / "nginx", [a.port], routing=SidRouting(balance="round_robin"), shutdown_timeout=600).start()
    try:
        async with listeners(nginx.ws_url, room, CLIENTS) as group:
            assert await counts(two_nodes) == {"node-a": CLIENTS, "node-b": 0}
            published: list[int] = []
            stop = asyncio.Event()
            publisher = asyncio.create_task(publish_forever(a.http_url, room, published, stop))
            await until(lambda: len(published) >= 10, what="the first publications")

            await asyncio.to_thread(nginx.reload, [a.port, b.port])  # scale-out: B joins, empty
            pods = [Pod(p.config["node_name"], f"127.0.0.1:{p.port}") for p in two_nodes]
            http = HttpPods(API_KEY)
            rebalancer = Rebalancer(http, tolerance=TOLERANCE, period=PERIOD)
            before = await counts(two_nodes)
            rounds: list[dict[str, int]] = []
            try:
                for _round in range(ROUNDS):  # bounds a failure: half the excess comes back each round
                    report = await rebalancer.rebalance(pods)
                    assert not report.failed, report.message()
                    if not report.asked:
                        break
                    rounds.append(report.asked)
                    asked = sum(sum(r.values()) for r in rounds)

                    async def closed(asked: int = asked) -> bool:
                        return await shed_total(two_nodes) == asked

                    async def reconnected() -> dict[str, int]:
                        now = await counts(two_nodes)
                        assert sum(now.values()) == CLIENTS, now
                        assert all(c.client.state is ConnectionState.CONNECTED for c in group), now
                        return now

                    # Every shed client closed (the shed is over), then back: the counts settle before the
                    # next round reads them.
                    await until(closed, what=f"{asked} connections shed in all")
                    await until(reconnected, what="every shed client reconnected")
                else:
                    pytest.fail(f"not balanced after {ROUNDS} rounds: {rounds}")
            finally:
                await http.aclose()
            after = await counts(two_nodes)
            assert before == {"node-a": CLIENTS, "node-b": 0}
            assert plan_sheds(after, TOLERANCE) == {}, after
            assert after["node-b"] >= CLIENTS * 0.4, after

            stop.set()
            await publisher
            total = len(published)
            assert total > 10
            await until(
                lambda: all(len(c.received) >= total for c in group),
                what=f"every client to hold all {total} publications",
            )
            for listener in group:
                assert listener.received == list(range(total)), listener.client.client_id
                assert all(r.recovered for r in listener.rejoins), listener.rejoins
            # Each shed client re-joined once, recovering; nobody else reconnected.
            assert sum(len(listener.rejoins) for listener in group) == sum(sum(r.values()) for r in rounds)
            print(f"\nbefore {before}, after {after}, shed per round {rounds}, {total} publications")
    finally:
        nginx.kill()
