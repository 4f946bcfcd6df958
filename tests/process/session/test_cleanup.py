"""Nothing of a gone connection stays behind, and the server's memory returns to its baseline.

Each cycle opens a WebSocket and leaves in one of several ways: a clean close, a dropped TCP
connection (the client's transport aborted), a connection that never sends `connect`, or one
dropped in the middle of its commands. Afterwards `/api/info` internals must be back to zero
(sessions, users, hub rooms, timer entries, presence rooms), the task count back to its
idle baseline, and every presence room empty. Timer entries are cancelled lazily, so the
server runs with short timeouts and the checks poll until those deadlines have passed.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest

from hubbub.timers import DeadlineHeap
from tests.conftest import ServerFactory
from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient, token

#: Short timeouts so lazily cancelled timer entries of gone connections fall due within a few seconds. The
#: cycles' clients never answer pings: pong_timeout leaves a cycle that a loaded machine slows down to
#: several seconds room to finish before the server closes it 4010.
TIMING: dict[str, Any] = {"ping_interval": 1, "pong_timeout": 3.5, "connect_timeout": 1}
#: A fixed set of rooms: their streams (epoch, offset, history) legitimately outlive the connections.
PRESENCE_ROOMS = ("chat:cleanup-a", "chat:cleanup-b", "public:cleanup", "small:cleanup")
ROOMS = (*PRESENCE_ROOMS, "quiet:cleanup")
#: Internals that must be zero once every connection is gone.
GONE = ("sessions", "users", "hub_rooms", "timer_entries", "presence_rooms")
CONCURRENCY = 20
#: Seconds one cycle may take (only a failing one takes long).
CYCLE_TIMEOUT = 30.0
WARM_UP = 1000


class Clients:
    """Opens the cycles' clients and remembers them, so a failed run leaves no socket open in the test process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[RawClient] = []

    async def open(self) -> RawClient:
        # Unbounded client-side queue: these clients never read their join/leave pushes, and a paused reader
        # would not see the server's close frame, so a clean close would wait for the client's close timeout.
        client = await RawClient.open(self.url, max_queue=None)
        self.opened.append(client)
        return client

    async def connected(self, i: int) -> RawClient:
        client = await self.open()
        reply = await client.call("connect", token=token(user_for(i)))
        assert "ok" in reply, reply
        return client

    async def joined(self, i: int) -> RawClient:
        client = await self.connected(i)
        for name in rooms_for(i):
            reply = await client.call("join", room=name)
            assert "ok" in reply, reply
        return client

    def abort_all(self) -> None:
        for client in self.opened:
            client.ws.transport.abort()


Cycle = Callable[[Clients, int], Awaitable[None]]


def internals(srv: ServerProcess) -> dict[str, int]:
    response = srv.api("GET", "/api/info")
    assert response.status_code == 200, response.text
    result: dict[str, int] = response.json()["nodes"][0]["internals"]
    return result


def rooms_for(i: int) -> list[str]:
    """One to three rooms, varying with the cycle number."""
    count = 1 + i % 3
    return [ROOMS[(i + k) % len(ROOMS)] for k in range(count)]


def user_for(i: int) -> str:
    # Several connections per user, so the per-user index is exercised with overlapping sessions.
    return f"cleanup-user-{i % 37}"


async def abort(client: RawClient) -> None:
    """Drop the TCP connection without a closing handshake."""
    client.ws.transport.abort()
    await client.ws.wait_closed()


async def clean_close(clients: Clients, i: int) -> None:
    client = await clients.joined(i)
    reply = await client.call("presence_stats", room="chat:cleanup-a")
    assert "ok" in reply, reply
    if i % 2:
        assert "ok" in await client.call("publish", room="chat:cleanup-a", data={"cycle": i})
    await client.close()


async def dropped(clients: Clients, i: int) -> None:
    client = await clients.joined(i)
    await abort(client)


async def rejoined_in_connect(clients: Clients, i: int) -> None:
    """The reconnect form: rooms (some with `since`) joined by `connect` itself."""
    client = await clients.open()
    rooms: dict[str, Any] = {name: {"since": {"epoch": "stale", "offset": 1}} for name in rooms_for(i)}
    rooms["chat:cleanup-b"] = None
    reply = await client.call("connect", token=token(user_for(i)), rooms=rooms)
    assert "ok" in reply, reply
    if i % 2:
        await client.close()
    else:
        await abort(client)


async def never_connects_and_leaves(clients: Clients, i: int) -> None:
    client = await clients.open()
    if i % 2:
        await client.close()
    else:
        await abort(client)


async def garbage_before_connect(clients: Clients, i: int) -> None:
    client = await clients.open()
    await client.send_raw("not a command")
    closed = await client.closed()
    assert closed.code == 4001


async def dropped_mid_commands(clients: Clients, i: int) -> None:
    """Commands still in flight (join, publish, leave) when the TCP connection goes away."""
    client = await clients.connected(i)
    first, *_ = rooms_for(i)
    await client.send(
        {"id": 100, "op": "join", "room": first},
        {"id": 101, "op": "join", "room": "chat:cleanup-b" if first != "chat:cleanup-b" else "chat:cleanup-a"},
        {"id": 102, "op": "publish", "room": first, "data": i},
        {"id": 103, "op": "leave", "room": first},
        {"id": 104, "op": "join", "room": first},
    )
    await abort(client)


async def waits_for_connect_timeout(clients: Clients, i: int) -> None:
    client = await clients.open()
    # connect_timeout plus slack for a loaded machine, still below the 10 s default.
    closed = await client.closed(timeout=TIMING["connect_timeout"] + 7)
    assert closed.code == 4001


#: The mix of ways to leave: clean closes, dropped connections, connections that never connect.
CYCLES: tuple[Cycle, ...] = (
    clean_close,
    clean_close,
    dropped,
    dropped,
    rejoined_in_connect,
    never_connects_and_leaves,
    dropped_mid_commands,
    clean_close,
    dropped,
    garbage_before_connect,
)


def cycle_for(i: int) -> Cycle:
    if i % 100 == 25:
        return waits_for_connect_timeout  # the connect_timeout path, a few times per thousand
    return CYCLES[i % len(CYCLES)]


async def run_cycles(srv: ServerProcess, start: int, count: int) -> collections.Counter[str]:
    """Run cycles `start`..`start + count - 1`, CONCURRENCY at a time; returns how many of each kind ran."""
    gate = asyncio.Semaphore(CONCURRENCY)
    clients = Clients(srv.ws_url)

    async def one(i: int) -> str:
        cycle = cycle_for(i)
        async with gate, asyncio.timeout(CYCLE_TIMEOUT):
            await cycle(clients, i)
        return cycle.__name__

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i)) for i in range(start, start + count)]
    finally:
        clients.abort_all()  # no-op for the ones already closed; a failed run leaves nothing open
    return collections.Counter(task.result() for task in tasks)


async def wait_until_gone(srv: ServerProcess, idle_tasks: int) -> dict[str, int]:
    """Poll internals until nothing of the gone connections remains; fail with the leftovers."""

    def gone() -> dict[str, int]:
        state = internals(srv)
        leftovers = {key: state[key] for key in (*GONE, "tasks") if state[key]}
        assert all(state[key] == 0 for key in GONE) and state["tasks"] <= idle_tasks, (
            f"left behind after the last disconnect: {leftovers} (idle tasks: {idle_tasks})"
        )
        return state

    return await until(gone, interval=0.1, what="the gone connections' state to be freed")


def assert_presence_empty(srv: ServerProcess) -> None:
    for name in PRESENCE_ROOMS:
        stats = srv.api("GET", f"/api/presence_stats/{name}")
        assert stats.status_code == 200, stats.text
        assert stats.json() == {"clients": 0, "users": 0}, name
        assert srv.api("GET", f"/api/presence/{name}").json() == {"clients": {}}, name


def start_server(server_factory: ServerFactory) -> tuple[ServerProcess, int]:
    srv = server_factory(**TIMING)
    idle = internals(srv)
    assert all(idle[key] == 0 for key in GONE), idle
    return srv, idle["tasks"]


async def test_fifty_cycles_leave_no_membership_presence_task_or_timer(server_factory: ServerFactory) -> None:
    srv, idle_tasks = start_server(server_factory)
    ran = await run_cycles(srv, 0, 50)
    assert sum(ran.values()) == 50 and len(ran) == len(set(CYCLES)) + 1, ran
    state = await wait_until_gone(srv, idle_tasks)
    assert state["streams"] <= len(ROOMS)
    assert_presence_empty(srv)


@pytest.mark.slow
async def test_thousand_cycles_leave_nothing_behind_and_memory_returns_to_baseline(
    server_factory: ServerFactory,
) -> None:
    srv, idle_tasks = start_server(server_factory)
    process = psutil.Process(srv.pid)

    # Warm-up: imports, caches, room histories, and the allocator. A gone connection's uvicorn protocol and
    # transport are reference cycles freed by the cyclic GC's rare full collections, so RSS climbs for the
    # first ~1,000 cycles whatever the server does (measured: +3.5 MB over cycles 200-1,200 with no Python
    # heap growth after a collection) and then flattens (+0.4-1.7 MB per further 1,000).
    await run_cycles(srv, 0, WARM_UP)
    await wait_until_gone(srv, idle_tasks)
    baseline = process.memory_info().rss

    ran = await run_cycles(srv, WARM_UP, 1000)
    assert sum(ran.values()) == 1000 and len(ran) == len(set(CYCLES)) + 1, ran
    state = await wait_until_gone(srv, idle_tasks)
    assert state["streams"] <= len(ROOMS)
    assert_presence_empty(srv)

    growth = process.memory_info().rss - baseline
    # A leak of 3 KB per connection would show; so did the sessions kept alive by token-expiry timer entries.
    assert growth < 3 * 1024 * 1024, f"RSS grew {growth / 1024:.0f} KiB over 1000 connections"
    assert srv.running()


def test_cancelled_deadlines_are_purged_and_do_not_keep_sessions_alive() -> None:
    """The token-expiry heap forgets closed connections long before their tokens would have expired."""

    class Item:
        def __init__(self, due: float) -> None:
            self.due: float | None = due

    heap: DeadlineHeap[weakref.ref[Item]] = DeadlineHeap()
    items = [Item(3600.0 + i) for i in range(100)]
    for item in items:
        assert item.due is not None
        heap.add(weakref.ref(item), item.due)

    def stands(due: float, ref: weakref.ref[Item]) -> bool:
        item = ref()
        return item is not None and item.due == due

    for item in items[:60]:
        item.due = None
        heap.cancel(stands)
    assert len(heap) <= 2 * 40  # purged at least once: stale entries never outnumber live ones for long
    for item in items[60:]:
        item.due = None
        heap.cancel(stands)
    assert len(heap) == 0
    ref = weakref.ref(items[0])
    heap.add(ref, 1.0)
    del items
    assert ref() is None, "a timer entry kept its item alive"
    assert [due for due, _ in heap.pop_due(2.0)] == [1.0]
