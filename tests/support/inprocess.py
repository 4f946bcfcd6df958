"""The in-process test tier: a real Node and real Sessions, with no uvicorn, no socket and no wall clock.

    node = await InProcessNode.started(ping_interval=5)
    alice = await node.connected("alice")
    assert (await alice.call("join", room="chat:x"))["ok"]["offset"] == 0
    await node.clock.advance(5)                        # the ping is due: the node's ticker sends it
    assert (await alice.recv())["push"] == "ping"
    await node.stop()

- `FakeClock` is the node's `Clock` (hubbub.timers): time moves only when a test calls `advance`,
  which wakes every sleeper due on the way (the node's ticker, the drain's pacing) in due order,
  each at its own instant, and lets what it woke run before time moves on. So heartbeats, timeouts,
  token expiry and paced closes happen at exact instants, and a 25 s ping interval takes no time.
- `FakeSink` is the sink a session's Outbox writes to in place of the socket: it keeps the frames.
- `InProcessClient` plays the transport's part (hubbub.ws.connection): text frames go to
  `Session.handle_text` one at a time in order (saying when more wait, so publishes pipeline as on
  a socket), replies and pushes come back parsed, and a close ends the connection as a peer's
  answer would (the node detaches the session).
- `InProcessNode` is a real `Node` with the memory backends and the namespaces of the process tests
  (tests/support/server.py), and its HTTP API through httpx's ASGI transport.

What this tier leaves to real processes: the WebSocket framing and upgrade, socket backpressure,
uvicorn, signals, Redis, several nodes.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import time
from typing import Any

import httpx
from starlette.applications import Starlette

from hubbub import api
from hubbub.auth import Principal
from hubbub.backends import Backends
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.codes import CloseCode
from hubbub.node import Node
from hubbub.session import Session
from hubbub.settings import Settings
from hubbub.tracing import Tracing
from hubbub.types import JSON
from tests.support.conversation import Closed, Conversation
from tests.support.server import API_KEY, server_config
from tests.support.wsclient import token

#: Seconds (real ones) to wait for an expected reply, push or close: only a failing test waits this long.
WAIT = 10.0
#: The fake monotonic clock's reading at the start (any value: the node only takes differences).
START = 1000.0
#: Most turns of the event loop `settle` gives the woken tasks, should something never stop being busy.
MAX_SETTLE_ROUNDS = 10_000


async def settle() -> None:
    """Let every task that is ready run until it waits again (for the clock, or for a test's next step).

    asyncio's loop keeps the callbacks due now in `_ready`; once only this task was there, nothing is left
    to run until something new happens. (On a loop without it, a generous fixed number of turns.)
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    for _ in range(MAX_SETTLE_ROUNDS if ready is not None else 100):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return


class FakeClock:
    """A `hubbub.timers.Clock` that moves only when told to.

    The wall clock moves with the monotonic one, from the real time (its whole second) when the clock
    was made: tokens are verified against the real time, and a token minted with `now=clock.wall()`
    expires on this clock exactly `ttl` fake seconds later.
    """

    def __init__(self, start: float = START) -> None:
        self.now = start
        self._wall_offset = float(int(time.time())) - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future  # a cancelled sleeper's future is cancelled too: `advance` skips it

    async def advance(self, seconds: float) -> None:
        """Move the time `seconds` on, waking each sleeper at its due instant, oldest first."""
        target = self.now + seconds
        await settle()  # what the test started runs at the current instant, before time moves
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self.now = max(self.now, due)
            future.set_result(None)
            await settle()
        self.now = target
        await settle()

    @property
    def sleepers(self) -> int:
        """Sleepers waiting for the clock (cancelled ones aside)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())


class FakeSink:
    """Where a session's Outbox writes in place of a socket: every text frame, in order, and the close."""

    def __init__(self, client: InProcessClient) -> None:
        self._client = client
        #: Set it to hold the frames back, as a socket whose buffer is full does (`resume` lets them go).
        self.paused = False
        self.frames: list[str] = []
        self.close: tuple[int, str] | None = None
        self.aborted = False

    def write_texts(self, texts: list[str]) -> None:
        self.frames.extend(texts)
        self._client._received(texts)

    def write_framed(self, wire: bytes, text: str) -> None:
        self.write_texts([text])

    def write_close(self, code: int, reason: str) -> None:
        self.close = (code, reason)
        self._client._server_closed(code, reason)

    def abort(self) -> None:
        self.aborted = True
        self._client._lost(1006)


class InProcessClient(Conversation):
    """One connection to an InProcessNode, speaking protocol v1 as JSON text, as `RawClient` does on a socket."""

    wait = WAIT

    def __init__(self, node: Node, *, principal: Principal | None = None) -> None:
        super().__init__()
        self.node = node
        self.sink = FakeSink(self)
        self.session = Session(node, self.sink, principal=principal)
        #: Once the connection has ended: the close code the server sent (None: it sent none) and its reason.
        self.ended: tuple[int | None, str | None] | None = None
        self._pending: collections.deque[str] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._binary = False
        self._changed = asyncio.Event()
        self._detached: asyncio.Task[None] | None = None
        #: What escaped `Session.handle_text` (a bug: the transport would close 1011); `recv` raises it.
        self.failure: BaseException | None = None
        node.attach(self.session)

    # --- sending ----------------------------------------------------------------------------

    async def send(self, *objects: dict[str, Any]) -> None:
        """One text frame of these commands, newline-delimited."""
        self.send_text("\n".join(json.dumps(o) for o in objects))

    def send_text(self, text: str) -> None:
        """A text frame, as the transport hands it over: in order, behind the frames still being handled."""
        if self.ended is not None or self._binary:
            return
        self._pending.append(text)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def send_binary(self) -> None:
        """A binary message: the session ends the connection once the frames before it are handled."""
        if self.ended is not None:
            return
        self._binary = True
        if self._worker is None:
            self.session.handle_binary()

    async def _work(self) -> None:
        # What hubbub.ws.connection's inbox worker does: one frame at a time, saying whether more wait.
        pending = self._pending
        try:
            while pending:
                text = pending.popleft()
                await self.session.handle_text(text, more=bool(pending))
        except Exception as exc:
            self.failure = exc
            self.session.close(CloseCode.INTERNAL_ERROR)
        finally:
            self._worker = None
            if self._binary:
                self.session.handle_binary()

    # --- receiving --------------------------------------------------------------------------

    def _received(self, texts: list[str]) -> None:
        for text in texts:
            for line in text.split("\n"):
                message = json.loads(line)
                if message.get("push") == "disconnect":
                    self.disconnect = message
                self.inbox.append(message)
        self._changed.set()

    def _server_closed(self, code: int, reason: str) -> None:
        # The peer answers the close at once; the socket is then gone, as `connection_lost` reports it.
        self._end(code, reason)

    def _lost(self, code: int) -> None:
        self._end(None, None, detach_code=code)

    def _end(self, code: int | None, reason: str | None, *, detach_code: int | None = None) -> None:
        if self.ended is not None:
            return
        self.ended = (code, reason)
        if self._worker is not None:
            self._worker.cancel()
        self.session.outbox.detach()
        final = detach_code if detach_code is not None else (code if code is not None else 1006)
        self._detached = asyncio.get_running_loop().create_task(self.node.detach(self.session, final))
        self._changed.set()

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next reply or push; raises Closed once the connection has ended and everything was taken."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                if self.failure is not None:
                    raise AssertionError("the session failed") from self.failure
                if self.ended is not None:
                    raise Closed(self.ended[0], self.disconnect, self.ended[1])
                self._changed.clear()
                await self._changed.wait()
        return self.inbox.popleft()

    async def closed(self, timeout: float = WAIT) -> Closed:
        """Wait for the connection to end (taking whatever comes before) and for the node to release it;
        the close code and disconnect push."""
        try:
            while True:
                await self.recv(timeout)
        except Closed as exc:
            if self._detached is not None:
                await self._detached
            return exc

    def pushes(self, kind: str) -> list[dict[str, Any]]:
        """Every push of `kind` waiting in the inbox (left there)."""
        return [m for m in self.inbox if m.get("push") == kind]

    def received(self) -> list[dict[str, Any]]:
        """Every message the connection was ever sent, in order, taken or not."""
        return [json.loads(line) for frame in self.sink.frames for line in frame.split("\n")]

    # --- the socket -------------------------------------------------------------------------

    def resume(self) -> None:
        """The socket takes writes again (after `sink.paused`): what waited goes out."""
        self.sink.paused = False
        self.session.outbox.flush()

    async def close(self, code: int = 1000) -> None:
        """The client closes (or, 1006, the connection drops): the node releases the session."""
        if self.ended is None:
            self.session.outbox.discard()
            self._end(None, None, detach_code=code)
        if self._detached is not None:
            await self._detached


class InProcessNode:
    """A real Node on a FakeClock: memory backends, the process tests' configuration, no sockets."""

    def __init__(self, *, tracing: Tracing | None = None, **overrides: Any) -> None:
        # The default timer resolution (0.25 s) is a binary fraction: sums of it on the fake clock are exact.
        config = server_config(**({"timer_resolution": 0.25} | overrides))
        self.settings = Settings.model_validate(config)
        self.clock = FakeClock()
        self.engine = MemoryEngine(clock=self.clock.wall)
        backends = Backends(broker=self.engine, history=self.engine, presence=MemoryPresence())
        self.node = Node(self.settings, backends, tracing=tracing, clock=self.clock)
        self.clients: list[InProcessClient] = []
        http = Starlette(routes=api.routes())
        http.state.node = self.node
        self._http = http

    @classmethod
    async def started(cls, *, tracing: Tracing | None = None, **overrides: Any) -> InProcessNode:
        node = cls(tracing=tracing, **overrides)
        await node.node.start()
        return node

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.node.stop()

    def open(self, *, principal: Principal | None = None) -> InProcessClient:
        """A new connection, not yet `connect`ed (a `principal` as from a token on the upgrade request)."""
        client = InProcessClient(self.node, principal=principal)
        self.clients.append(client)
        return client

    async def connected(self, user: str = "alice", **connect_params: Any) -> InProcessClient:
        """A new connection after a successful `connect` (with a token for `user` unless one is given)."""
        client = self.open()
        connect_params.setdefault("token", token(user))
        reply = await client.call("connect", **connect_params)
        assert "ok" in reply, reply
        return client

    async def api(self, method: str, path: str, *, json: JSON = None, key: str | None = API_KEY) -> httpx.Response:
        """A request to the node's HTTP API."""
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        transport = httpx.ASGITransport(app=self._http)
        async with httpx.AsyncClient(transport=transport, base_url="http://hubbub", headers=headers) as http:
            return await http.request(method, path, json=json)
