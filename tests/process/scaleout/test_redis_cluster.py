"""hubbub on a real Redis Cluster (tests/support/redis_cluster.py: 3 masters, 1 replica each, a password).

The same guarantees as on one Redis and through Sentinel (test_redis_connections.py), and their
fault tests: nodes on the cluster deliver to each other whatever master a room lives on; a master
killed mid-stream, its replica promoted, loses nothing silently; a room's slot moved to another
master while it is published to loses nothing. The backend conformance suite runs on the cluster
too (test_backends.py, the `redis-cluster` parameter).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from hubbub.backends.redis_shards import key_slot
from tests.process.scaleout.test_redis_connections import (
    Ack,
    assert_end_to_end,
    assert_unavailable_not_crashed,
    judge,
    node,
    publish_stream,
    ready,
    start_all,
    tls_unsupported,
    write_tls_files,
    ws_client,
)
from tests.support.polling import until
from tests.support.receiver import Receiver
from tests.support.redis_cluster import ClusterTls, RedisClusterGroup
from tests.support.server import API_KEY, ServerProcess

pytestmark = [pytest.mark.redis]

PASSWORD = "cluster-p@ss"
API = {"authorization": f"Bearer {API_KEY}"}


@contextlib.contextmanager
def redis_cluster(workdir: Path, tls: ClusterTls | None = None) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(workdir, password=PASSWORD, tls=tls)
    try:
        yield group.start()
    finally:
        group.stop()


def cluster_settings(group: RedisClusterGroup) -> dict[str, Any]:
    return {
        # With cluster nodes the URL supplies only the credentials (and TLS); its host is never used.
        "redis_url": f"redis://:{quote(PASSWORD, safe='')}@ignored.invalid",
        "redis_cluster_nodes": group.seeds(),
        "redis_timeout": 1.0,
        "namespaces": {"fo": {"history_size": 1000, "history_ttl": 300}, "chat": {}},
    }


def room_on(group: RedisClusterGroup, port: int, namespace: str = "fo") -> str:
    """A fresh room name whose slot the master at `port` serves."""
    while True:
        name = f"{namespace}:{uuid.uuid4().hex[:10]}"
        if group.master_of_slot(key_slot(name)) == port:
            return name


def rooms_on_every_master(group: RedisClusterGroup, namespace: str = "fo") -> list[str]:
    return [room_on(group, master.port, namespace) for master in group.masters()]


async def nodes_on(stack: contextlib.ExitStack, tmp_path: Path, group: RedisClusterGroup) -> list[ServerProcess]:
    procs = [node(stack, tmp_path, f"rc{i}", **cluster_settings(group)) for i in range(2)]
    await start_all(*procs)
    await asyncio.gather(*(ready(proc) for proc in procs))
    return procs


async def stream_through_a_change(
    procs: list[ServerProcess], name: str, change: Any, *, count: int = 150
) -> tuple[list[Receiver], list[Ack]]:
    """Six clients joined to `name` over both nodes, `count` publications through both nodes' HTTP APIs,
    and `change` (a blocking call: a failover, a migration) made once 30 are acknowledged."""
    urls = [proc.ws_url for proc in procs]
    receivers = [Receiver([urls[i % 2], urls[(i + 1) % 2]], name, f"user{i}") for i in range(6)]
    acked: list[Ack] = []
    for receiver in receivers:
        receiver.start()
    await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in receivers)), 30)
    publisher = asyncio.create_task(publish_stream([p.http_url for p in procs], name, count, acked, deadline=60))
    try:
        await until_acked(acked, 30, publisher)
        await asyncio.to_thread(change)
        changed_at = len(acked)
        await asyncio.wait_for(asyncio.shield(publisher), 90)
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
    assert [a.index for a in acked] == list(range(count))
    assert count - changed_at >= 50, "publishing did not go on after the change"
    await asyncio.gather(*(ready(proc) for proc in procs))
    last = acked[-1]
    with contextlib.suppress(AssertionError):  # a timeout is judged by the caller, where the record says what
        await until(lambda: all(r.at(last.epoch, last.offset) for r in receivers), timeout=30)
    return receivers, acked


def judge_after_a_move(procs: list[ServerProcess], receivers: list[Receiver], acked: list[Ack]) -> list[str]:
    """The nodes survived, moved the room's subscription to its new master (rather than merely backfilling
    it at every position check), and every client got everything or was told (`judge`)."""
    for proc in procs:
        assert proc.running(), proc.log()[-3000:]
        assert "rooms moved to another master, backfilling them" in proc.log(), proc.log()[-3000:]
    return judge(receivers, acked)


async def until_acked(acked: list[Ack], count: int, publisher: asyncio.Task[None]) -> None:
    await until(lambda: len(acked) >= count or publisher.done(), timeout=30, what=f"{count} acknowledged publications")
    if publisher.done():
        publisher.result()


# --- delivery across nodes --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_nodes_on_a_redis_cluster_deliver_to_each_other_in_rooms_on_every_master(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        first, second = await nodes_on(stack, tmp_path, group)
        for name in rooms_on_every_master(group):
            await assert_end_to_end(first, second, name)
            await assert_end_to_end(second, first, name)
        for proc in (first, second):
            assert "backend=redis-cluster(" in proc.log(), proc.log()[-2000:]


@pytest.mark.timeout(120)
async def test_the_node_registry_and_the_control_channel_work_on_a_redis_cluster(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        first, second = await nodes_on(stack, tmp_path, group)
        names = rooms_on_every_master(group)
        async with contextlib.AsyncExitStack() as clients, httpx.AsyncClient(timeout=5, headers=API) as http:
            members = [await clients.enter_async_context(ws_client(second.ws_url, "mallory")) for _ in names]
            for member, name in zip(members, names, strict=True):
                assert "ok" in await member.call("join", room=name)

            async def status() -> dict[str, Any]:
                return dict((await http.get(first.http_url + "/api/status")).json())

            # Both nodes listed by either, and the rooms in use counted over every master's shard channels.
            async def listed() -> bool:
                found = await status()
                return sorted(n["name"] for n in found["nodes"]) == ["rc0", "rc1"] and found["rooms"] == len(names)

            await until(listed, timeout=20, what="both nodes listed and every room counted")
            # A disconnect through the first node reaches the user's connections on the second.
            response = await http.post(first.http_url + "/api/disconnect", json={"user": "mallory"})
            assert response.json() == {"disconnected": len(names)}, response.text
            for member in members:
                assert (await member.closed()).code == 4000


@pytest.mark.timeout(120)
async def test_nodes_reach_a_tls_redis_cluster_with_a_private_ca_and_a_password(tmp_path: Path) -> None:
    """TLS and auth as today: only the seeds come from `redis_cluster_nodes`; the scheme, the password and
    the private CA from `redis_url`. Every node listens for TLS only, so every connection is TLS."""
    reason = tls_unsupported(tmp_path / "probe")
    if reason is not None:
        pytest.skip(reason)
    pki = write_tls_files(tmp_path / "pki")  # a certificate for 127.0.0.1, where the nodes announce themselves
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster", ClusterTls(pki.ca, pki.cert, pki.key)))
        assert group.url().startswith("rediss://")
        ca = quote(str(pki.ca), safe="")
        # As with Sentinels, the URL's host is never used; its scheme, password and ssl_* options are.
        settings = {
            **cluster_settings(group),
            "redis_url": f"rediss://:{quote(PASSWORD, safe='')}@ignored.invalid?ssl_ca_certs={ca}",
        }
        procs = [node(stack, tmp_path, f"rctls{i}", **settings) for i in range(2)]
        await start_all(*procs)
        await asyncio.gather(*(ready(proc) for proc in procs))
        logged_when_ready = [len(proc.log()) for proc in procs]
        first, second = procs
        for name in rooms_on_every_master(group):
            await assert_end_to_end(first, second, name)
            await assert_end_to_end(second, first, name)
        for proc, start in zip(procs, logged_when_ready, strict=True):
            log = proc.log()
            assert "backend=redis-cluster(" in log, log[-2000:]
            assert "redis unreachable" not in log[start:], log[-3000:]
            assert PASSWORD not in log and quote(PASSWORD, safe="") not in log, "a Redis password was logged"


# --- faults ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_master_killed_mid_stream_and_its_replica_promoted_loses_nothing_silently(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        procs = await nodes_on(stack, tmp_path, group)
        victim = group.masters()[0].port
        name = room_on(group, victim)
        promoted: list[int] = []

        def fail_the_rooms_master() -> None:
            old, new = group.kill_master(key_slot(name))
            assert old == victim
            promoted.append(new)

        receivers, acked = await stream_through_a_change(procs, name, fail_the_rooms_master)
        try:
            assert group.master_of_slot(key_slot(name)) == promoted[0] != victim
            judge_after_a_move(procs, receivers, acked)
        finally:
            for receiver in receivers:
                await receiver.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_killed_subscriber_connections_to_one_master_are_made_again_and_lose_nothing(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        procs = await nodes_on(stack, tmp_path, group)
        victim = group.masters()[0].port
        name = room_on(group, victim)

        def kill_the_subscribers() -> None:
            # Both nodes' shard subscriptions on the room's master (and any classic subscriber there).
            assert int(group.command(victim, "CLIENT", "KILL", "TYPE", "pubsub")) >= 2

        receivers, acked = await stream_through_a_change(procs, name, kill_the_subscribers)
        try:
            for proc in procs:
                assert proc.running(), proc.log()[-3000:]
                assert "redis subscriber reconnected: backfilling" in proc.log(), proc.log()[-3000:]
            assert set(judge(receivers, acked)) == {"complete"}
        finally:
            for receiver in receivers:
                await receiver.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_rooms_slot_resharded_to_another_master_while_publishing_loses_nothing(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        procs = await nodes_on(stack, tmp_path, group)
        source, target = (m.port for m in group.masters()[:2])
        name = room_on(group, source)
        slot = key_slot(name)

        def move_the_rooms_slot() -> None:
            # A key at a time, with publications in between: the slot stays half-migrated for a while (ASK,
            # TRYAGAIN), then its ownership changes (MOVED, and the subscribers' sunsubscribe).
            group.migrate_slot(slot, target, batch=1, between_batches=lambda: time.sleep(0.05))

        receivers, acked = await stream_through_a_change(procs, name, move_the_rooms_slot)
        try:
            assert group.master_of_slot(slot) == target
            outcomes = judge_after_a_move(procs, receivers, acked)
            assert set(outcomes) == {"complete"}, "a migration loses no writes: nobody should have been told"
        finally:
            for receiver in receivers:
                await receiver.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_failover_that_loses_acknowledged_writes_tells_the_clients(tmp_path: Path) -> None:
    """Force the loss, as for Sentinel: the room's replica is frozen and cut off while its master acknowledges
    three more publications, then the master is killed and the replica (without them) promoted."""
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        procs = await nodes_on(stack, tmp_path, group)
        victim = group.masters()[0].port
        name = room_on(group, victim)
        (replica,) = group.replicas_of(victim)
        urls = [proc.ws_url for proc in procs]
        http_urls = [proc.http_url for proc in procs]
        receivers = [Receiver([urls[i % 2], urls[(i + 1) % 2]], name, f"user{i}") for i in range(4)]
        acked: list[Ack] = []
        try:
            for receiver in receivers:
                receiver.start()
            await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in receivers)), 30)
            await publish_stream(http_urls, name, 5, acked)
            await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in receivers), what="5 delivered")

            unreplicated: list[Ack] = []
            with group.frozen(replica):
                assert int(group.command(victim, "CLIENT", "KILL", "TYPE", "replica")) >= 1
                await publish_stream(http_urls, name, 3, unreplicated, first=5)
                # Killed while its replica is frozen: the promotion (which needs the replica) waits for the thaw.
                failing = asyncio.create_task(asyncio.to_thread(group.kill_master, key_slot(name)))
                await until(lambda: not group.running(victim) or failing.done(), what="the master to be killed")
            await failing
            offset = group.command(group.master_of_slot(key_slot(name)), "HGET", f"hubbub:{{{name}}}:meta", "offset")
            if offset is not None and int(offset) >= unreplicated[-1].offset:
                pytest.skip(f"the failover lost nothing this time (new master at offset {offset})")
            acked += unreplicated
            await publish_stream(http_urls, name, 4, acked, first=8, deadline=60)
            await asyncio.gather(*(ready(proc) for proc in procs))
            # A timeout here is judged below, where the record says what went wrong.
            with contextlib.suppress(AssertionError):
                await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in receivers), timeout=30)
        finally:
            for receiver in receivers:
                await receiver.stop()
        outcomes = judge(receivers, acked)
        assert set(outcomes) == {"told"}, outcomes


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_crashed_cluster_leaves_the_nodes_unready_and_its_empty_return_tells_the_clients(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(redis_cluster(tmp_path / "cluster"))
        procs = await nodes_on(stack, tmp_path, group)
        name = room_on(group, group.masters()[0].port)
        urls = [proc.ws_url for proc in procs]
        http_urls = [proc.http_url for proc in procs]
        receivers = [Receiver([urls[i % 2], urls[(i + 1) % 2]], name, f"user{i}") for i in range(4)]
        acked: list[Ack] = []
        try:
            for receiver in receivers:
                receiver.start()
            await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in receivers)), 30)
            await publish_stream(http_urls, name, 5, acked)
            await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in receivers), what="5 delivered")

            group.kill_all()
            # Unready, publishes and joins refused with 503, alive, and the log says why.
            for proc in procs:
                await assert_unavailable_not_crashed(proc)
            await asyncio.to_thread(group.restart_all)
            await asyncio.gather(*(ready(proc) for proc in procs))
            # The rooms' history is gone: the next publications start a new epoch, which every client is told of.
            await publish_stream(http_urls, name, 4, acked, first=5, deadline=60)
            assert acked[-1].epoch != acked[0].epoch
            with contextlib.suppress(AssertionError):
                await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in receivers), timeout=30)
        finally:
            for receiver in receivers:
                await receiver.stop()
        for proc in procs:
            assert proc.running(), proc.log()[-3000:]
        assert set(judge(receivers, acked)) == {"told"}
