"""A raw protocol client for tests: frames in, JSON objects out, nothing hidden."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hubbub.auth import mint_token
from tests.support.server import SECRET


def token(sub: str = "alice", *, rooms: tuple[str, ...] = ("*",), publish: tuple[str, ...] = ("*",), **kw: Any) -> str:
    return mint_token(SECRET, sub=sub, rooms=rooms, publish=publish, **kw)


class Closed(Exception):
    def __init__(self, code: int | None, disconnect: dict[str, Any] | None) -> None:
        super().__init__(f"closed {code}")
        self.code = code
        self.disconnect = disconnect


class RawClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: deque[dict[str, Any]] = deque()
        self.frames = 0
        self._next_id = 0
        self.disconnect: dict[str, Any] | None = None

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("open_timeout", 5)
        return cls(await connect(url, **kwargs))

    @classmethod
    async def connected(
        cls, url: str, user: str = "alice", *, open_kwargs: dict[str, Any] | None = None, **connect_params: Any
    ) -> RawClient:
        client = await cls.open(url, **(open_kwargs or {}))
        connect_params.setdefault("token", token(user))
        reply = await client.call("connect", **connect_params)
        assert "ok" in reply, reply
        return client

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send(self, *objects: dict[str, Any]) -> None:
        await self.ws.send("\n".join(json.dumps(o) for o in objects))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
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

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its reply; pushes that arrive meanwhile stay queued in `pushes`."""
        command_id = self.next_id()
        await self.send({"id": command_id, "op": op, **params})
        return await self.reply(command_id)

    async def reply(self, command_id: int, timeout: float = 5.0) -> dict[str, Any]:
        held: list[dict[str, Any]] = []
        try:
            while True:
                obj = await self.recv(timeout)
                if obj.get("id") == command_id:
                    return obj
                held.append(obj)
        finally:
            self.inbox.extendleft(reversed(held))

    async def push(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next push of `kind`, skipping pings (answered) and dropping nothing else silently."""
        while True:
            obj = await self.recv(timeout)
            if obj.get("push") == "ping" and kind != "ping":
                await self.send({"op": "pong"})
                continue
            if obj.get("push") == kind:
                return obj
            raise AssertionError(f"expected a {kind} push, got {obj}")

    async def closed(self, timeout: float = 5.0) -> Closed:
        """Wait for the server to close; returns the close code and the disconnect push seen."""
        try:
            while True:
                await self.recv(timeout)
        except Closed as exc:
            return exc

    async def close(self) -> None:
        await self.ws.close()
