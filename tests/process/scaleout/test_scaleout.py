"""Several real nodes sharing a real Redis: cross-node delivery, presence, cluster operations, faults.

Every fault test ends with the same check: each client holds every publication of its room,
in offset order, without duplicates — or was told (4011, recovered=false) that it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.polling import until
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.server import API_KEY, ServerProcess, server_config
from tests.support.wsclient import RawClient, publish_burst, token

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


class Nodes:
    def __init__(self, workdir: Path, redis_url: str, count: int, **overrides: Any) -> None:
        self.procs = [
            ServerProcess(
                workdir,
                server_config(
                    redis_url=redis_url,
                    node_name=f"node{i}",
                    **{"presence_ttl": 3, "position_check_interval": 0.5, **overrides},
                ),
            )
            for i in range(count)
        ]

    def start(self) -> Nodes:
        try:
            for proc in self.procs:
                proc.start()
        except BaseException:
            self.stop()  # the nodes started so far would outlive the test
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()

    def __getitem__(self, index: int) -> ServerProcess:
        return self.procs[index]


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[Nodes]:
    group = Nodes(tmp_path, redis_server.url, 3).start()
    yield group
    group.stop()


async def wait_ready(proc: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=5) as http:

        async def ready() -> bool:
            return (await http.get(proc.http_url + "/readyz")).status_code == 200

        await until(ready, what=f"{proc.http_url}/readyz to answer 200")


def subscribers(redis_server: RedisServer) -> list[str]:
    """The nodes' pub/sub connections (named hubbub-sub-<node>) Redis has now."""
    return [name for name in redis_server.client_names() if name.startswith("hubbub-sub-")]


def room() -> str:
    return f"chat:{uuid.uuid4().hex[:10]}"


async def publish_series(url: str, name: str, count: int, rate: float = 200.0) -> list[int]:
    """Publish `count` messages through the HTTP API of one node; returns the acknowledged offsets."""
    acked: list[int] = []
    series = uuid.uuid4().hex[:8]  # retries of one message share a key; separate series never do
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=5) as http:
        for i in range(count):
            for _attempt in range(50):
                try:
                    response = await http.post(
                        url + "/api/publish", json={"room": name, "data": i, "idempotency_key": f"{series}-{i}"}
                    )
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    acked.append(response.json()["offset"])
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1 / rate)
    return acked


@contextlib.asynccontextmanager
async def receivers(urls: list[str], name: str, count: int) -> AsyncIterator[list[Receiver]]:
    group = [Receiver([urls[i % len(urls)], *urls], name, f"user{i}") for i in range(count)]
    for r in group:
        r.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in group)), 30)
        yield group
    finally:
        for r in group:
            await r.stop()


# --- cross-node behaviour ---------------------------------------------------------------------------


async def test_publications_reach_members_on_every_node_in_order(nodes: Nodes) -> None:
    name = room()
    urls = [p.ws_url for p in nodes.procs]
    async with receivers(urls, name, 9) as group:
        acked = await publish_series(nodes[0].http_url, name, 60)
        await until(lambda: all(len(r.offsets) >= 60 for r in group))
    assert acked == list(range(1, 61))
    for r in group:
        assert r.offsets == list(range(1, 61))


async def test_pipelined_publishes_on_redis_keep_command_order_in_replies_offsets_and_history(nodes: Nodes) -> None:
    await publish_burst(nodes[0].ws_url, room())


async def test_presence_and_join_leave_span_nodes_and_idempotency_holds_across_nodes(nodes: Nodes) -> None:
    name = room()
    a = await RawClient.connected(nodes[0].ws_url, "alice")
    b = await RawClient.connected(nodes[1].ws_url, "bob")
    await a.call("join", room=name)
    await b.call("join", room=name)
    assert (await a.push("join"))["info"]["user"] == "bob"
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 2, "users": 2}
    first = await a.call("publish", room=name, data="x", idempotency_key="same")
    second = await b.call("publish", room=name, data="x", idempotency_key="same")
    assert first["ok"] == second["ok"]
    await b.close()
    assert (await a.push("pub"))["offset"] == 1
    assert (await a.push("leave"))["info"]["user"] == "bob"
    await a.close()


async def test_info_lists_live_nodes_and_disconnect_reaches_every_node(nodes: Nodes) -> None:
    clients = [await RawClient.connected(p.ws_url, "target") for p in nodes.procs]

    def listed() -> list[dict[str, Any]]:
        nodes_info: list[dict[str, Any]] = nodes[1].api("GET", "/api/info").json()["nodes"]
        return nodes_info

    # The registry shows every node with its connection once a heartbeat has carried it.
    await until(lambda: len(listed()) == 3 and all(n["connections"] >= 1 for n in listed()))
    assert sorted(n["name"] for n in listed()) == ["node0", "node1", "node2"]
    assert nodes[2].api("POST", "/api/disconnect", json={"user": "target"}).json() == {"disconnected": 3}
    for client in clients:
        assert (await client.closed()).code == 4000


async def test_status_on_any_node_shows_every_node_with_its_own_deliveries(nodes: Nodes) -> None:
    name = f"quiet:{uuid.uuid4().hex[:10]}"
    watcher = await RawClient.connected(nodes[2].ws_url, "watcher")
    assert "ok" in await watcher.call("join", room=name)
    for i in range(10):
        assert nodes[0].api("POST", "/api/publish", json={"room": name, "data": i}).status_code == 200
    for _ in range(10):
        await watcher.push("pub")

    def by_name() -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in nodes[1].api("GET", "/api/status").json()["nodes"]}

    def every_nodes_figures() -> dict[str, dict[str, Any]]:
        # Node 1 knows another node's figures from that node's latest heartbeat; node 0's and node 2's
        # come with their own heartbeats, in no particular order, so await both before asserting either.
        status = by_name()
        assert sorted(status) == ["node0", "node1", "node2"], status
        assert status["node0"]["totals"]["publications"] == 10, status["node0"]
        assert status["node2"]["totals"]["deliveries"] == 10, status["node2"]
        return status

    status = await until(every_nodes_figures, what="node 0's publications and node 2's deliveries on node 1")
    assert status["node0"]["totals"]["deliveries"] == 0
    assert status["node2"]["connections"] == 1 and status["node2"]["backend"] == "redis"
    await watcher.close()


async def test_status_counts_a_room_with_members_on_two_nodes_once(nodes: Nodes) -> None:
    shared, alone = f"quiet:{uuid.uuid4().hex[:10]}", f"quiet:{uuid.uuid4().hex[:10]}"
    members = [await RawClient.connected(nodes[i].ws_url, f"m{i}") for i in (0, 1, 1)]
    for client, name in zip(members, (shared, shared, alone), strict=True):
        assert "ok" in await client.call("join", room=name)
    # Each node answers with the cluster-wide count at once: it comes from Redis, not from heartbeats.
    for node in nodes.procs:
        status = node.api("GET", "/api/status").json()
        assert status["rooms"] == 2, status

    def own_rooms(node: int) -> int:
        own = next(n for n in nodes[node].api("GET", "/api/info").json()["nodes"] if n["name"] == f"node{node}")
        return int(own["rooms"])

    # Node 0 loses its only member of the shared room: the room is still in use on node 1.
    await members[0].close()
    await until(lambda: own_rooms(0) == 0, timeout=10)
    assert nodes[2].api("GET", "/api/status").json()["rooms"] == 2
    await members[2].call("leave", room=alone)
    await until(lambda: nodes[2].api("GET", "/api/status").json()["rooms"] == 1, timeout=10)
    await members[1].close()
    await until(lambda: nodes[2].api("GET", "/api/status").json()["rooms"] == 0, timeout=10)
    await members[2].close()


# --- faults ---------------------------------------------------------------------------------------------


async def test_killed_subscriber_connection_is_backfilled_without_loss(nodes: Nodes, redis_server: RedisServer) -> None:
    name = room()
    urls = [p.ws_url for p in nodes.procs]
    async with receivers(urls, name, 6) as group:
        # Each node's subscriber connections (pub/sub for rooms and for cluster control), all connected now.
        connected = sorted(subscribers(redis_server))
        assert {c.removeprefix("hubbub-sub-") for c in connected} == {"node0", "node1", "node2"}
        publisher = asyncio.create_task(publish_series(nodes[0].http_url, name, 150, rate=150))
        for progress in (30, 60, 90):
            # Each kill lands mid-stream and finds every subscriber connection back from the one before.
            await until(lambda: min(len(r.offsets) for r in group) >= progress, what=f"offset {progress}")  # noqa: B023
            await until(lambda: sorted(subscribers(redis_server)) == connected, what="the subscribers to reconnect")
            assert redis_server.client_kill("hubbub-sub-") == len(connected)
        acked = await publisher
        await until(lambda: all(r.offsets[-1:] == [150] for r in group))
    assert acked == list(range(1, 151))
    for r in group:
        assert r.offsets == list(range(1, 151)), r.closes


async def test_sigkill_of_a_node_loses_nothing_and_presence_forgets_its_clients(nodes: Nodes) -> None:
    name = room()
    urls = [p.ws_url for p in nodes.procs]
    async with receivers(urls, name, 9) as group:
        await until(lambda: nodes[0].api("GET", f"/api/presence_stats/{name}").json()["clients"] == 9)
        publisher = asyncio.create_task(publish_series(nodes[1].http_url, name, 100, rate=100))
        await until(lambda: all(len(r.offsets) >= 10 for r in group), what="the stream to be under way")
        nodes[0].signal(signal.SIGKILL)
        acked = await publisher
        await until(lambda: all(r.offsets[-1:] == [100] for r in group))
        # The dead node's 3 clients reconnected elsewhere; its stale entries expire within presence_ttl (3 s).
        # The bound is that TTL with slack for a loaded machine: an entry that never expires fails.
        await until(
            lambda: nodes[1].api("GET", f"/api/presence_stats/{name}").json()["clients"] == 9,
            timeout=15,
            what="the killed node's presence entries to expire",
        )
    assert acked == list(range(1, 101))
    for r in group:
        assert r.offsets == list(range(1, 101))
        assert all(r.recovered), "a reconnect inside the history window must recover"


def presence_users(node: ServerProcess, name: str) -> set[str]:
    clients = node.api("GET", f"/api/presence/{name}").json()["clients"]
    return {entry["user"] for entry in clients.values()}


async def members_on_both(group: Nodes, name: str) -> RawClient:
    """`doomed-user` joins `name` on node 0 and `staying-user` on node 1; returns the staying one."""
    doomed = await RawClient.connected(group[0].ws_url, "doomed-user")
    staying = await RawClient.connected(group[1].ws_url, "staying-user")
    for client in (doomed, staying):
        assert "ok" in await client.call("join", room=name)
    await until(lambda: presence_users(group[1], name) == {"doomed-user", "staying-user"}, what="both in presence")
    return staying


async def test_a_killed_nodes_presence_is_purged_within_seconds_not_after_presence_ttl(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # presence_ttl of five minutes: only the purge of a node whose heartbeats stopped can explain a prompt removal.
    group = Nodes(tmp_path, redis_server.url, 2, presence_ttl=300).start()
    try:
        name = room()
        users = functools.partial(presence_users, group[1], name)
        staying = await members_on_both(group, name)
        group[0].signal(signal.SIGKILL)
        # A node is declared gone NODE_TTL (6 s) after its last heartbeat and buried at a live node's next
        # heartbeat (2 s); the bound leaves slack for a loaded machine and is far below presence_ttl.
        await until(lambda: users() == {"staying-user"}, timeout=40, what="the killed node's member purged")
        await until(
            lambda: [n["name"] for n in group[1].api("GET", "/api/info").json()["nodes"]] == ["node1"],
            what="the killed node gone from /api/info",
        )
        assert group[1].wait_for_log("stopped sending heartbeats: removed its 1 presence entries")
        await staying.close()
    finally:
        group.stop()


async def test_a_node_restarted_under_its_name_at_once_clears_its_previous_processes_presence(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # A crashed container restarts in its pod within seconds, under the same node name (the pod's): its
    # heartbeats hardly pause, so the cluster never buries it. presence_ttl of five minutes: only the
    # restarted node's own purge can explain a prompt removal.
    group = Nodes(tmp_path, redis_server.url, 2, presence_ttl=300).start()
    try:
        name = room()
        users = functools.partial(presence_users, group[1], name)
        staying = await members_on_both(group, name)
        group[0].signal(signal.SIGKILL)
        group[0].wait(10)
        group[0].restart()
        await until(lambda: users() == {"staying-user"}, what="the previous process's member removed")
        assert group[0].wait_for_log("removed 1 presence entries left by this node's previous process")
        # The restarted node's own members are not touched by it.
        back = await RawClient.connected(group[0].ws_url, "back-user")
        assert "ok" in await back.call("join", room=name)
        await until(lambda: users() == {"back-user", "staying-user"}, what="a new member of the restarted node")
        for client in (back, staying):
            await client.close()
    finally:
        group.stop()


async def test_redis_restart_with_aof_keeps_every_acknowledged_publication(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    name = room()
    urls = [p.ws_url for p in nodes.procs]
    async with receivers(urls, name, 6) as group:
        first = await publish_series(nodes[0].http_url, name, 30)
        redis_server.restart()
        for proc in nodes.procs:
            await wait_ready(proc)
        second = await publish_series(nodes[1].http_url, name, 30)
        await until(lambda: all(r.offsets[-1:] == [60] for r in group))
    assert first + second == list(range(1, 61))
    for r in group:
        assert r.offsets == list(range(1, 61))
        assert len(r.epochs) == 1


async def test_redis_restart_without_persistence_signals_a_new_epoch_never_a_silent_gap(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis-volatile", appendonly=False)
    redis.start()
    group_nodes = Nodes(tmp_path, redis.url, 2).start()
    try:
        name = room()
        urls = [p.ws_url for p in group_nodes.procs]
        async with receivers(urls, name, 4) as group:
            await publish_series(group_nodes[0].http_url, name, 20)
            await until(lambda: all(len(r.offsets) >= 20 for r in group))
            redis.restart()
            for proc in group_nodes.procs:
                await wait_ready(proc)
            await publish_series(group_nodes[0].http_url, name, 5)
            await until(lambda: all(len(r.epochs) == 2 for r in group))
            for r in group:
                assert 4011 in r.closes, r.closes
                assert r.recovered and r.recovered[-1] is False
    finally:
        group_nodes.stop()
        redis.stop()


async def test_redis_down_makes_nodes_unready_and_publishes_fail_503_then_recover(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    redis_server.stop()
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=5) as http:

        async def unready() -> httpx.Response:
            response = await http.get(nodes[0].http_url + "/readyz")
            assert response.status_code == 503, response.text
            return response

        ready = await until(unready, what="/readyz to answer 503")
        assert "broker" in ready.json()["reason"]
        failed = await http.post(nodes[0].http_url + "/api/publish", json={"room": "chat:x", "data": 1})
        assert failed.status_code == 503
        assert (await http.get(nodes[0].http_url + "/healthz")).status_code == 200
    redis_server.start()
    await wait_ready(nodes[0])
    assert nodes[0].api("POST", "/api/publish", json={"room": "chat:x", "data": 1}).status_code == 200


async def test_position_check_backfills_a_publication_whose_message_was_lost(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    name = room()
    urls = [p.ws_url for p in nodes.procs]
    async with receivers(urls, name, 3) as group:
        await publish_series(nodes[0].http_url, name, 5)
        await until(lambda: all(len(r.offsets) == 5 for r in group))
        # What a lost pub/sub message looks like: the stream moved on, no node was told.
        meta, stream = f"hubbub:{{{name}}}:meta", f"hubbub:{{{name}}}:stream"
        redis_server.command("HINCRBY", meta, "offset", 1)
        redis_server.command(
            "XADD", stream, "MAXLEN", 100, "6-1", "d", '"lost"', "t", int(time.time() * 1000), "i", "null"
        )
        await until(lambda: all(len(r.offsets) == 6 for r in group), what="the position check's backfill")
        await publish_series(nodes[1].http_url, name, 2)
        await until(lambda: all(r.offsets == list(range(1, 9)) for r in group))


async def test_slow_consumer_is_closed_4008_others_unaffected_and_it_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    group_nodes = Nodes(
        tmp_path,
        redis_server.url,
        2,
        namespaces={"big": {"history_size": 5000, "client_publish": True}},
        command_rate=10000,
        command_burst=10000,
    ).start()
    try:
        name = f"big:{uuid.uuid4().hex[:8]}"
        slow = await RawClient.open(group_nodes[0].ws_url, max_queue=1)
        joined = await slow.call("connect", token=token("slow"), rooms={name: {}})
        epoch = joined["ok"]["rooms"][name]["epoch"]
        async with receivers([group_nodes[1].ws_url], name, 2) as fast:
            publisher = await RawClient.connected(group_nodes[1].ws_url, "publisher")
            for batch in range(120):  # 120 frames x 25 publications x 2 KB: far beyond socket buffers
                first = batch * 25
                await publisher.send(
                    *({"id": 1 + first + i, "op": "publish", "room": name, "data": "y" * 2000} for i in range(25))
                )
            await publisher.reply(120 * 25, timeout=30)
            closed = await slow.closed(timeout=20)
            assert closed.code in (4008, 1006)
            await until(lambda: all(r.offsets[-1:] == [3000] for r in fast))
            for r in fast:
                assert r.offsets == list(range(1, 3001))
            await publisher.close()
        seen = max([0, *(m["offset"] for m in slow.inbox if m.get("push") == "pub")])
        again = await RawClient.connected(group_nodes[0].ws_url, "slow")
        reply = (await again.call("join", room=name, since={"epoch": epoch, "offset": seen}))["ok"]
        missed = 3000 - seen
        # Megabytes behind: more than one reply may carry, so it is told (never a silent gap) and resyncs.
        assert missed * 2000 > 512 * 1024
        assert reply["recovered"] is False and reply["publications"] == [] and reply["offset"] == 3000
        # From its new position it is a normal member again.
        group_nodes[1].api("POST", "/api/publish", json={"room": name, "data": "after"})
        assert (await again.push("pub"))["offset"] == 3001
        # A small gap inside the budget recovers in full.
        await again.close()
        for i in range(5):
            group_nodes[0].api("POST", "/api/publish", json={"room": name, "data": i})
        back = await RawClient.connected(group_nodes[0].ws_url, "slow")
        small = (await back.call("join", room=name, since={"epoch": epoch, "offset": 3001}))["ok"]
        assert small["recovered"] is True
        assert [p["offset"] for p in small["publications"]] == [3002, 3003, 3004, 3005, 3006]
        await back.close()
    finally:
        group_nodes.stop()


async def test_concurrent_joins_during_publishing_never_miss_the_next_offset(nodes: Nodes) -> None:
    name = room()
    publishing = asyncio.create_task(publish_series(nodes[1].http_url, name, 200, rate=400))
    await asyncio.sleep(0.05)

    async def join_and_follow(i: int) -> tuple[int, list[int]]:
        client = await RawClient.connected(nodes[0].ws_url, f"joiner{i}")
        reply = (await client.call("join", room=name))["ok"]
        got: list[int] = []
        while (not got or got[-1] < 200) and reply["offset"] < 200:
            message = await client.recv(timeout=10)
            if message.get("push") == "pub":
                got.append(message["offset"])
        await client.close()
        return reply["offset"], got

    results = await asyncio.gather(*(join_and_follow(i) for i in range(20)))
    await publishing
    for offset, got in results:
        assert got == list(range(offset + 1, 201)), (offset, got[:5])
