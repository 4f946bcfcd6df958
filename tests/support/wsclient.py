"""A raw protocol client for tests: frames in, JSON objects out, nothing hidden."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hubbub.auth import mint_token
from tests.support.conversation import Closed, Conversation, pipelined_publishes
from tests.support.server import SECRET

#: Seconds to wait for an expected frame or close by default. Only a failing test waits this long, so it
#: leaves room for a loaded machine; a test whose subject is a time bound passes its own timeout.
WAIT = 20.0


def token(sub: str = "alice", *, rooms: tuple[str, ...] = ("*",), publish: tuple[str, ...] = ("*",), **kw: Any) -> str:
    return mint_token(SECRET, sub=sub, rooms=rooms, publish=publish, **kw)


class RawClient(Conversation):
    """The conversation over a real WebSocket (the `websockets` client): frames as the peer sent them."""

    #: Every client opened and not yet closed by the test: `close_leftovers()` closes them when a test ends,
    #: so one that fails half-way leaves no socket to warn about in a later test.
    opened: set[RawClient] = set()
    wait = WAIT

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws
        self.frames = 0

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("open_timeout", WAIT)
        client = cls(await connect(url, **kwargs))
        cls.opened.add(client)
        return client

    @classmethod
    async def connected(
        cls, url: str, user: str = "alice", *, open_kwargs: dict[str, Any] | None = None, **connect_params: Any
    ) -> RawClient:
        client = await cls.open(url, **(open_kwargs or {}))
        connect_params.setdefault("token", token(user))
        reply = await client.call("connect", **connect_params)
        assert "ok" in reply, reply
        return client

    async def send(self, *objects: dict[str, Any]) -> None:
        await self.ws.send("\n".join(json.dumps(o) for o in objects))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        while not self.inbox:
            try:
                frame = await asyncio.wait_for(self.ws.recv(), timeout)
            except ConnectionClosed as exc:
                raise Closed(exc.rcvd.code if exc.rcvd else None, self.disconnect) from None
            self.frames += 1
            assert isinstance(frame, str), "the server sent a binary frame"
            for line in frame.split("\n"):
                obj = json.loads(line)
                if obj.get("push") == "disconnect":
                    self.disconnect = obj
                self.inbox.append(obj)
        return self.inbox.popleft()

    async def closed(self, timeout: float = WAIT) -> Closed:
        """Wait for the server to close; returns the close code and the disconnect push seen."""
        try:
            while True:
                await self.recv(timeout)
        except Closed as exc:
            return exc

    async def close(self) -> None:
        await self.ws.close()
        RawClient.opened.discard(self)

    @classmethod
    async def close_leftovers(cls) -> None:
        """Drop every client a test left open (its peer may be gone: no closing handshake) and wait until
        their sockets are closed."""
        leftovers, cls.opened = list(cls.opened), set()
        for client in leftovers:
            client.ws.transport.abort()
        await asyncio.gather(*(client.ws.wait_closed() for client in leftovers))


async def publish_burst(url: str, name: str) -> None:
    """`pipelined_publishes` over a real WebSocket to the server at `url`."""
    client = await RawClient.connected(url, token=token("burst", publish=(name,)))
    await pipelined_publishes(client, name)
    await client.close()


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = 10.0) -> None:
    """Cancel `task` and wait until it has ended.

    One `cancel()` is not always enough on Python 3.11: `asyncio.wait_for` swallows a cancellation
    that arrives just as its inner future completes (fixed in 3.12), and a receive loop that calls it
    then goes on forever. So cancel again until the task is done.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{task!r} ignored cancellation for {timeout:g} s")
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error
