"""Shedding connections to rebalance (`POST /api/shed`): k of n closed with 1012 "rebalancing", evenly
over the period, against a real server process; bad bodies, keys and a draining node refused."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from hubbub import pacing
from tests.conftest import ServerFactory
from tests.support.conversation import Closed
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(server.http_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_closes_are_due_in_proportion_to_the_time_elapsed() -> None:
    assert [pacing.target(10, t, 5.0) for t in (0.0, 0.001, 1.0, 2.5, 4.99, 5.0, 60.0)] == [0, 1, 2, 5, 10, 10, 10]
    assert pacing.target(7, 0.0, 0.0) == 7  # no period: all at once
    assert pacing.target(3, -1.0, 2.0) == 0


async def test_shedding_k_of_n_closes_exactly_k_with_1012_rebalancing_spread_over_the_period(
    server_factory: ServerFactory,
) -> None:
    count, shed, period = 30, 12, 3.0
    srv = server_factory()
    clients = [await RawClient.connected(srv.ws_url, f"user{i}") for i in range(count)]
    closed: dict[int, tuple[float, Closed]] = {}

    async def watch(index: int, client: RawClient) -> None:
        result = await client.closed(timeout=120)
        closed[index] = (time.monotonic(), result)

    watchers = [asyncio.create_task(watch(i, c)) for i, c in enumerate(clients)]
    sent = time.monotonic()
    reply = srv.api("POST", "/api/shed", json={"connections": shed, "period": period})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"shedding": shed, "connections": count, "period": 3, "replaced": False}

    await until(lambda: len(closed) == shed, what=f"{shed} connections closed")
    await asyncio.to_thread(srv.wait_for_log, f"shed {shed} connections to rebalance")
    # Exactly k: the shed is over (its last line is logged) and the others are still open and served.
    assert metric(srv, "hubbub_shed_connections_total") == shed
    for task in watchers:  # the survivors' readers, so that the test can talk to them
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    survivors = [c for i, c in enumerate(clients) if i not in closed]
    assert len(survivors) == count - shed
    for client in survivors:
        assert "ok" in await client.call("presence_stats", room="chat:shed")
    assert srv.api("GET", "/api/info").json()["nodes"][0]["connections"] == count - shed
    assert srv.api("GET", "/readyz").status_code == 200  # shedding is not draining: the node stays ready

    for _at, result in closed.values():
        assert result.code == 1012
        assert result.disconnect is not None
        assert result.disconnect["code"] == 1012 and result.disconnect["reconnect"] is True
        assert result.disconnect["reason"] == "rebalancing"
    offsets = sorted(at - sent for at, _ in closed.values())
    # Within the period (slack for a loaded machine), and spread: each half closed a fair share.
    assert offsets[-1] <= period + 2.5, offsets
    halves = [sum(1 for t in offsets if t < period / 2), sum(1 for t in offsets if t >= period / 2)]
    assert all(n >= shed // 4 for n in halves), (halves, offsets)


async def test_asking_more_than_the_open_connections_sheds_what_there_is(server_factory: ServerFactory) -> None:
    srv = server_factory()
    clients = [await RawClient.connected(srv.ws_url, f"user{i}") for i in range(3)]
    reply = srv.api("POST", "/api/shed", json={"connections": 50, "period": 0})
    assert reply.json() == {"shedding": 3, "connections": 3, "period": 0, "replaced": False}
    results = await asyncio.gather(*(c.closed() for c in clients))
    assert [r.code for r in results] == [1012] * 3
    # Nothing left to shed: nothing is started.
    assert srv.api("POST", "/api/shed", json={"connections": 1}).json()["shedding"] == 0


async def test_a_second_shed_replaces_the_running_one(server_factory: ServerFactory) -> None:
    srv = server_factory()
    clients = [await RawClient.connected(srv.ws_url, f"user{i}") for i in range(10)]
    first = srv.api("POST", "/api/shed", json={"connections": 8, "period": 600}).json()
    assert first["shedding"] == 8 and first["replaced"] is False
    await until(lambda: metric(srv, "hubbub_shed_connections_total") >= 1, what="the first close")
    second = srv.api("POST", "/api/shed", json={"connections": 2, "period": 0}).json()
    assert second["replaced"] is True and second["shedding"] == 2
    await asyncio.to_thread(srv.wait_for_log, "shed 2 connections to rebalance")
    # The first one stopped: 1 of its own plus the 2 of the second, not 8.
    assert metric(srv, "hubbub_shed_connections_total") == 3
    assert srv.api("GET", "/api/info").json()["nodes"][0]["connections"] == 7
    for client in clients:
        await client.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "`connections` must be an integer of at least 1"),
        ({"connections": 0}, "`connections` must be an integer of at least 1"),
        ({"connections": -3}, "`connections` must be an integer of at least 1"),
        ({"connections": 2.5}, "`connections` must be an integer of at least 1"),
        ({"connections": "12"}, "`connections` must be an integer of at least 1"),
        ({"connections": True}, "`connections` must be an integer of at least 1"),
        ({"connections": 1, "period": -1}, "`period` must be a number of seconds from 0 to 600"),
        ({"connections": 1, "period": 601}, "`period` must be a number of seconds from 0 to 600"),
        ({"connections": 1, "period": "10"}, "`period` must be a number of seconds from 0 to 600"),
        ({"connections": 1, "period": None}, "`period` must be a number of seconds from 0 to 600"),
        ({"connections": 1, "periods": 10}, "unknown field `periods`; did you mean `period`?"),
    ],
)
def test_a_bad_shed_body_is_a_clear_400(server: ServerProcess, body: dict[str, Any], reason: str) -> None:
    response = server.api("POST", "/api/shed", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["reason"].startswith(reason)


def test_a_shed_body_that_is_not_json_is_400(server: ServerProcess) -> None:
    response = server.api("POST", "/api/shed", content=b"connections=3")
    assert response.status_code == 400 and response.json()["error"]["reason"] == "the body must be JSON"


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_shedding_needs_the_api_key(server: ServerProcess, key: str | None) -> None:
    response = server.api("POST", "/api/shed", key=key, json={"connections": 1, "period": 0})
    assert response.status_code == 401


async def test_a_draining_node_answers_409(server_factory: ServerFactory) -> None:
    srv = server_factory(drain_delay=30, drain_period=1)
    client = await RawClient.connected(srv.ws_url, "holder")
    srv.signal(signal.SIGTERM)
    await until(lambda: srv.api("GET", "/readyz").status_code == 503, what="the node to drain")
    response = srv.api("POST", "/api/shed", json={"connections": 1, "period": 0})
    assert response.status_code == 409
    assert response.json()["error"]["reason"] == "the node is draining: it closes all its connections anyway"
    assert "ok" in await client.call("presence_stats", room="chat:shed")  # nothing was shed
    await client.close()
