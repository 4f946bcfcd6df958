"""Draining on SIGTERM (protocol §9): unready at once, serve `drain_delay`, close evenly with 1012, exit."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.conftest import ServerFactory
from tests.support.wsclient import RawClient


async def test_sigterm_drains_connections_evenly_with_1012_then_exits(server_factory: ServerFactory) -> None:
    delay, period, count = 1.0, 3.0, 30
    srv = server_factory(drain_delay=delay, drain_period=period)
    clients = [await RawClient.connected(srv.ws_url, f"user{i}") for i in range(count)]
    for client in clients:
        await client.call("join", room="chat:drain")

    closed_at: list[float] = []
    codes: list[int | None] = []

    async def watch(client: RawClient) -> None:
        result = await client.closed(timeout=delay + period + 5)
        closed_at.append(time.monotonic())
        codes.append(result.code)
        assert result.disconnect is not None and result.disconnect["code"] == 1012
        assert result.disconnect["reconnect"] is True

    watchers = [asyncio.create_task(watch(c)) for c in clients]
    sent = time.monotonic()
    srv.signal(signal.SIGTERM)

    async with httpx.AsyncClient() as http:
        # Unready at once, while still alive and serving.
        for _ in range(50):
            ready = await http.get(srv.http_url + "/readyz")
            if ready.status_code == 503:
                break
            await asyncio.sleep(0.02)
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        assert time.monotonic() - sent < 1.0
        assert (await http.get(srv.http_url + "/healthz")).status_code == 200
        metrics = (await http.get(srv.http_url + "/metrics")).text
        assert any(line.startswith("hubbub_draining") and line.endswith(" 1.0") for line in metrics.splitlines())
    # During drain_delay the node still serves: a late connection is accepted and its commands work.
    late = await RawClient.connected(srv.ws_url, "late")
    assert "ok" in await late.call("presence_stats", room="chat:drain")
    watchers.append(asyncio.create_task(watch(late)))

    await asyncio.gather(*watchers)
    assert codes == [1012] * (count + 1)
    offsets = sorted(t - sent for t in closed_at)
    assert offsets[0] >= delay * 0.8, "connections were closed before drain_delay"
    assert offsets[-1] <= delay + period + 1.5, "closing took longer than drain_period"
    # Spread evenly: each third of the drain period closed a fair share, not everyone at once.
    thirds = [sum(1 for t in offsets if delay + k * period / 3 <= t < delay + (k + 1) * period / 3) for k in range(3)]
    assert all(n >= count // 6 for n in thirds), thirds

    exit_code = await asyncio.to_thread(srv.wait, 10)
    assert exit_code == 0


async def test_connection_opened_after_the_drain_delay_is_closed_1012_at_once(server_factory: ServerFactory) -> None:
    srv = server_factory(drain_delay=0.2, drain_period=3.0)
    # Holders keep the drain busy for its whole period (one is closed every 0.3 s).
    holders = [await RawClient.connected(srv.ws_url, f"holder{i}") for i in range(10)]
    srv.signal(signal.SIGTERM)
    await asyncio.sleep(0.6)
    newcomer = await RawClient.open(srv.ws_url)
    closed = await newcomer.closed(timeout=1)
    assert closed.code == 1012
    for holder in holders:
        await holder.closed(timeout=5)
    assert await asyncio.to_thread(srv.wait, 10) == 0


async def test_idle_node_exits_promptly_on_sigterm(server_factory: ServerFactory) -> None:
    srv = server_factory(drain_delay=0.5, drain_period=5.0)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert await asyncio.to_thread(srv.wait, 10) == 0
    assert time.monotonic() - started < 0.5 + 4.0  # no connections: no need to wait the whole period


async def test_sigint_stops_at_once_but_still_sends_the_disconnect_push(server_factory: ServerFactory) -> None:
    srv = server_factory(drain_delay=5.0, drain_period=20.0)
    client = await RawClient.connected(srv.ws_url)
    started = time.monotonic()
    srv.signal(signal.SIGINT)
    closed = await client.closed(timeout=5)
    assert closed.code == 1012
    assert closed.disconnect is not None and closed.disconnect["code"] == 1012
    await asyncio.to_thread(srv.wait, 10)
    assert time.monotonic() - started < 5.0
