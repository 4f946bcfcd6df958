"""Draining on SIGTERM (protocol §9): unready at once, serve `drain_delay`, close with 1012, exit; and
stopping at once on SIGINT.

What the node does once told to drain (the delay, closes spread evenly over `drain_period`, the
1012 with reconnect advice, newcomers closed at once) is tested in-process on a fake clock, to the
instant: tests/inprocess/test_session_inprocess.py. Here, the signals and the process around them.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.conftest import ServerFactory
from tests.support.polling import until
from tests.support.wsclient import RawClient


async def test_sigterm_drains_connections_with_1012_then_exits(server_factory: ServerFactory) -> None:
    delay, period, count = 1.0, 1.0, 10
    srv = server_factory(drain_delay=delay, drain_period=period)
    clients = [await RawClient.connected(srv.ws_url, f"user{i}") for i in range(count)]
    for client in clients:
        await client.call("join", room="chat:drain")

    closed_at: list[float] = []
    codes: list[int | None] = []

    async def watch(client: RawClient) -> None:
        result = await client.closed(timeout=delay + period + 20)
        closed_at.append(time.monotonic())
        codes.append(result.code)
        assert result.disconnect is not None and result.disconnect["code"] == 1012
        assert result.disconnect["reconnect"] is True

    watchers = [asyncio.create_task(watch(c)) for c in clients]
    sent = time.monotonic()
    srv.signal(signal.SIGTERM)

    async with httpx.AsyncClient(timeout=10) as http:
        # Unready at once, while still alive and serving: before drain_delay is over, no connection has
        # been closed yet (an order, so a slow machine does not turn it into a race with a clock).

        async def unready() -> httpx.Response:
            response = await http.get(srv.http_url + "/readyz")
            assert response.status_code == 503, response.text
            return response

        ready = await until(unready, interval=0.02, what="/readyz to answer 503 after SIGTERM")
        assert not closed_at, "a connection was closed before the node reported unready"
        assert ready.json()["reason"] == "draining"
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
    # The bound under test: every connection closed within drain_period. The slack covers a loaded machine
    # scheduling the server's drain loop and this test's readers late (a drain that ignored the period and
    # waited, e.g., one ping interval more would still fail).
    assert offsets[-1] <= delay + period + 2.5, "closing took longer than drain_period"

    exit_code = await asyncio.to_thread(srv.wait, 10)
    assert exit_code == 0


async def test_idle_node_exits_promptly_on_sigterm(server_factory: ServerFactory) -> None:
    srv = server_factory(drain_delay=0.5, drain_period=20.0)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert await asyncio.to_thread(srv.wait, 30) == 0
    # No connections: no need to wait the whole period. A node that did would take over 20 s; the
    # bound leaves a loaded machine room to exit after the drain delay.
    assert time.monotonic() - started < 0.5 + 9.5


async def test_sigint_stops_at_once_but_still_sends_the_disconnect_push(server_factory: ServerFactory) -> None:
    # A paced drain would serve drain_delay (20 s) first; stopping "at once" takes well under half of it
    # even on a loaded machine.
    srv = server_factory(drain_delay=20.0, drain_period=20.0)
    client = await RawClient.connected(srv.ws_url)
    started = time.monotonic()
    srv.signal(signal.SIGINT)
    closed = await client.closed()
    assert closed.code == 1012
    assert closed.disconnect is not None and closed.disconnect["code"] == 1012
    await asyncio.to_thread(srv.wait, 30)
    assert time.monotonic() - started < 10.0
