"""Two real hubbub nodes on a real Redis under a small steady load, scraped by a real Prometheus.

The scenario of tests/process/observability/test_prometheus.py and of scripts/render-dashboard-preview:

- a `redis-server` and two nodes (`node0`, `node1`) on it, each scraped every second by a private
  Prometheus as pod `node0`/`node1` in namespace `hubbub-test`, with hubbub's alert rules loaded;
- a steady load in a thread of its own (its own event loop, so it goes on while a test blocks on
  HTTP): members of a few rooms on both nodes, each publishing a few messages a second and reading
  everything, reconnecting when a node closes them (a Redis outage does);
- the faults the alerts are about, each bounded in time and count: a Redis outage, a burst of
  connections, a flood of bad tokens, a storm of slow consumers.

    fleet = MonitoredFleet(tmp_path, rules=rule_groups(FAST)).start()
    try:
        await fleet.prometheus.wait_for(...)
    finally:
        fleet.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.support.polling import wait_until
from tests.support.prometheus import Prometheus
from tests.support.redis_server import RedisServer
from tests.support.server import API_KEY, ServerProcess, server_config
from tests.support.wsclient import RawClient, token

#: The nodes' names, which are also their `pod` labels in Prometheus.
PODS = ("node0", "node1")
#: The namespace the slow-consumer storm's busy room lives in (deep history: a fast client never falls off it).
BUSY = "busy"
#: Bytes of an outbound queue that make a connection a slow consumer (the storm fills it on purpose).
MAX_QUEUE_BYTES = 65536


def node_config(redis_url: str, name: str) -> dict[str, Any]:
    config = server_config(
        redis_url=redis_url,
        node_name=name,
        presence_ttl=3,
        position_check_interval=0.5,
        max_queue_bytes=MAX_QUEUE_BYTES,
        # The storm's flooder pipelines thousands of publishes; the per-connection limit is not its subject.
        command_rate=10000,
        command_burst=10000,
        # A rolling restart's drain, short: serve 2 s more, then close over 1 s.
        drain_delay=2,
        drain_period=1,
    )
    config["namespaces"] = {**config["namespaces"], BUSY: {"history_size": 100, "client_publish": True}}
    return config


class Load:
    """Members of `rooms` rooms, one on each node per room, each publishing `rate` messages a second.

    Runs in a thread with its own event loop. `live[pod]` counts the members whose `connect` a node
    has answered and which are still open: the connections this load holds on that node.
    """

    def __init__(self, urls: Mapping[str, str], *, rooms: int = 3, rate: float = 2.0) -> None:
        self.urls = dict(urls)
        self.rooms = [f"chat:steady-{i}" for i in range(rooms)]
        self.rate = rate
        self.live = dict.fromkeys(self.urls, 0)
        self.connects = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    @property
    def members(self) -> int:
        return len(self.rooms) * len(self.urls)

    def start(self, timeout: float = 30.0) -> Load:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="hubbub-load", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the load's event loop did not start")
        try:
            wait_until(lambda: sum(self.live.values()) >= self.members, timeout=timeout, what="the load's members")
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {self.live}") from None
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the load did not stop within {timeout:g} s")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        members = [
            asyncio.create_task(self._member(pod, url, room, f"{pod}-{room}"))
            for room in self.rooms
            for pod, url in self.urls.items()
        ]
        await self._stopping.wait()
        await asyncio.wait(members, timeout=10)
        for task in members:
            task.cancel()
        await asyncio.gather(*members, return_exceptions=True)

    async def _member(self, pod: str, url: str, room: str, user: str) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                async with connect(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
                    await self._session(pod, ws, room, user)
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                pass  # a node closed it, refused it or is unreachable: come back
            # Bounded: the loop ends with the load; the pause keeps a refused member from spinning.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)

    async def _session(self, pod: str, ws: ClientConnection, room: str, user: str) -> None:
        assert self._stopping is not None
        connected = asyncio.Event()

        async def read() -> None:
            async for frame in ws:
                for line in str(frame).split("\n"):
                    message = json.loads(line)
                    if message.get("id") == 1 and "ok" in message:
                        connected.set()
                    elif message.get("push") == "ping":
                        await ws.send('{"op":"pong"}')

        reader = asyncio.create_task(read())
        counted = False
        try:
            await ws.send(json.dumps({"id": 1, "op": "connect", "token": token(user)}))
            await ws.send(json.dumps({"id": 2, "op": "join", "room": room}))
            await asyncio.wait_for(connected.wait(), 10)
            with self._lock:
                self.live[pod] += 1
                self.connects += 1
            counted = True
            sequence = 3
            while not self._stopping.is_set() and not reader.done():
                await ws.send(json.dumps({"id": sequence, "op": "publish", "room": room, "data": {"n": sequence}}))
                sequence += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1 / self.rate)
        finally:
            if counted:
                with self._lock:
                    self.live[pod] -= 1
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader


def _small_receive_buffer_socket(port: int) -> socket.socket:
    """A connected socket whose receive buffer is tiny, so a client that never reads backs the server's
    queue up after kilobytes instead of the megabytes a loopback socket would otherwise buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


class MonitoredFleet:
    """Redis, two nodes, the load and a Prometheus scraping the nodes with `rules` loaded."""

    def __init__(self, workdir: Path, *, rules: Mapping[str, Any] | None, load_rooms: int = 3) -> None:
        self.workdir = Path(workdir)
        self.redis = RedisServer(self.workdir / "redis")
        self.nodes: dict[str, ServerProcess] = {}
        self.rules = rules
        self.load_rooms = load_rooms
        self.load: Load | None = None
        self.prometheus: Prometheus | None = None
        #: The faults made to happen so far (the tests' bookkeeping: which events the data has seen).
        self.provoked: set[str] = set()

    def start(self) -> MonitoredFleet:
        try:
            self.redis.start()
            for pod in PODS:
                self.nodes[pod] = ServerProcess(self.workdir, node_config(self.redis.url, pod)).start()
            targets = {pod: f"127.0.0.1:{node.port}" for pod, node in self.nodes.items()}
            self.prometheus = Prometheus(self.workdir / "prometheus", targets, rules=self.rules).start()
            self.load = Load({pod: node.ws_url for pod, node in self.nodes.items()}, rooms=self.load_rooms).start()
        except BaseException:
            self.stop()  # whatever started so far would outlive the caller
            raise
        return self

    def stop(self) -> None:
        """Stop everything this fleet started, each by its own PID; the first error is raised after all stopped."""
        errors: list[BaseException] = []
        steps = [
            lambda: self.load.stop() if self.load else None,
            lambda: self.prometheus.stop() if self.prometheus else None,
            *(node.kill for node in self.nodes.values()),
            self.redis.stop,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    @property
    def prom(self) -> Prometheus:
        assert self.prometheus is not None, "the fleet is not started"
        return self.prometheus

    def node_metric(self, pod: str, name: str) -> float:
        """The unlabelled sample `name` on one node's own /metrics page, read now."""
        text = httpx.get(self.nodes[pod].http_url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{}")):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} is not on {pod}'s /metrics")

    # -- one-off events: a series for every panel, without a fault -------------------------------------

    async def exercise(self) -> None:
        """Events normal operation has now and then, each once: a rejected token, commands refused
        with 4xx codes, an API request without its key, an unknown API route, a refused handshake.
        The counters they increment are what the error panels show; without them those panels would
        have no series at all."""
        node = self.nodes[PODS[0]]
        client = await RawClient.connected(node.ws_url, "exerciser", token=token("exerciser", publish=("chat:mine",)))
        forbidden = await client.call("publish", room="chat:not-mine", data=1)
        assert forbidden["error"]["code"] == 403, forbidden
        malformed = await client.call("publish", room="chat:mine")
        assert malformed["error"]["code"] == 400, malformed
        await client.close()
        await self.bad_tokens(1)
        # 17 pings before `connect`: past what an unauthenticated connection may send, closed 4029.
        async with connect(node.ws_url, open_timeout=10) as ws:
            with contextlib.suppress(ConnectionClosed):
                for _ in range(17):
                    await ws.ping()
                await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 4029, ws.close_code
        # A client that vanishes without a close frame (a dropped network): 1006.
        dropped = await RawClient.connected(node.ws_url, "dropped")
        dropped.ws.transport.abort()
        RawClient.opened.discard(dropped)
        # An upgrade from a page on an origin that is not allowed: refused 403 before the upgrade.
        with contextlib.suppress(InvalidStatus):
            async with connect(node.ws_url, origin=Origin("https://elsewhere.example"), open_timeout=10):
                raise AssertionError("a WebSocket from an origin that is not allowed was accepted")
        async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
            assert (await http.post("/api/publish", json={"room": "chat:x", "data": 1})).status_code == 401
            assert (
                await http.get("/api/no-such-route", headers={"authorization": f"Bearer {API_KEY}"})
            ).status_code == 404
            # A plain GET on the WebSocket path: not a WebSocket handshake, refused.
            assert (await http.get("/ws")).status_code >= 400

    # -- faults --------------------------------------------------------------------------------------------

    async def bad_tokens(self, count: int, pod: str = PODS[0]) -> None:
        """`count` connections that present a token signed with the wrong key, one after another."""
        forged = token("intruder").rsplit(".", 1)[0] + ".c2lnbmF0dXJlLW5vdC1ieS10aGUtc2VjcmV0"
        for _ in range(count):
            client = await RawClient.open(self.nodes[pod].ws_url)
            await client.send({"id": 1, "op": "connect", "token": forged})
            closed = await client.closed()
            assert closed.code == 4001, closed.code
            RawClient.opened.discard(client)

    async def connection_burst(self, count: int, pod: str = PODS[0]) -> list[RawClient]:
        """`count` connected clients opened at once on one node; the caller closes them."""
        return list(
            await asyncio.gather(*(RawClient.connected(self.nodes[pod].ws_url, f"burst{i}") for i in range(count)))
        )

    async def slow_consumer_storm(self, count: int, pod: str = PODS[0], *, publish_limit: int = 20000) -> int:
        """`count` members of a busy room that never read, on `pod`, while a publisher on the other node
        floods the room until `pod` has closed every one of them as a slow consumer (its own counter says
        so: a client that never reads never sees its close) or `publish_limit` publications went out.
        Returns how many `pod` closed."""
        node = self.nodes[pod]
        other = self.nodes[next(p for p in PODS if p != pod)]
        room = f"{BUSY}:{uuid.uuid4().hex[:8]}"
        before = self.node_metric(pod, "hubbub_slow_consumer_disconnects_total")
        slow: list[ClientConnection] = []
        try:
            for i in range(count):
                sock = _small_receive_buffer_socket(node.port)
                ws = await connect(node.ws_url, sock=sock, max_queue=1, max_size=None, open_timeout=10)
                slow.append(ws)
                await ws.send(json.dumps({"id": 1, "op": "connect", "token": token(f"slow{i}")}))
                await ws.send(json.dumps({"id": 2, "op": "join", "room": room}))
                for _ in range(2):  # the replies to connect and join; then it never reads again
                    await asyncio.wait_for(ws.recv(), 10)
            publisher = await RawClient.connected(other.ws_url, "flooder", token=token("flooder", publish=(room,)))
            payload = "z" * 2000
            sent = 0
            closed = 0.0
            while sent < publish_limit and closed < count:
                ids = range(10 + sent, 10 + sent + 25)
                await publisher.send(*({"id": i, "op": "publish", "room": room, "data": payload} for i in ids))
                sent += len(ids)
                await publisher.reply(ids[-1])  # paced by the node's replies, not by a timer
                if sent % 250 == 0:
                    closed = self.node_metric(pod, "hubbub_slow_consumer_disconnects_total") - before
            await publisher.close()
            return int(self.node_metric(pod, "hubbub_slow_consumer_disconnects_total") - before)
        finally:
            for ws in slow:
                ws.transport.abort()
            await asyncio.gather(*(ws.wait_closed() for ws in slow), return_exceptions=True)

    async def rolling_restart(self, pod: str) -> None:
        """SIGTERM one node (it drains: readyz 503, then closes its connections 1012 and exits), start it again
        on its port, and wait until it is ready; the load's members on it come back by themselves."""
        node = self.nodes[pod]
        node.signal(signal.SIGTERM)
        await asyncio.to_thread(node.wait, 60)
        node.start()

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()
