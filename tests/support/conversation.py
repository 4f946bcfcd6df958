"""A protocol v1 conversation as the tests hold it, whatever carries the frames.

`RawClient` (tests/support/wsclient.py) holds it over a real WebSocket, `InProcessClient`
(tests/support/inprocess.py) with a session in the test's own process; both only say how a frame
goes out (`send`) and how the next message comes in (`recv`). What a test does with them is the
same: a command and its reply, the next push of a kind, the end of the connection.
"""

from __future__ import annotations

import collections
from typing import Any


class Closed(Exception):
    """The connection ended: the close code the server sent (None: none was sent), its reason where
    the transport shows it, and the `disconnect` push that came before."""

    def __init__(self, code: int | None, disconnect: dict[str, Any] | None, reason: str | None = None) -> None:
        super().__init__(f"closed {code}" + (f" {reason}" if reason else ""))
        self.code = code
        self.reason = reason
        self.disconnect = disconnect


class Conversation:
    """Commands out, replies and pushes in, in order; what a wait passes over stays in `inbox`."""

    #: Seconds a wait takes at most unless the test says otherwise; only a failing test waits that long.
    wait: float = 20.0

    def __init__(self) -> None:
        #: Replies and pushes received and not yet taken by `recv`, oldest first.
        self.inbox: collections.deque[dict[str, Any]] = collections.deque()
        #: The `disconnect` push, once one came.
        self.disconnect: dict[str, Any] | None = None
        self._next_id = 0

    async def send(self, *objects: dict[str, Any]) -> None:
        """One text frame of these commands, newline-delimited."""
        raise NotImplementedError

    async def recv(self, timeout: float) -> dict[str, Any]:
        """The next reply or push; raises Closed once the connection has ended."""
        raise NotImplementedError

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its reply; the pushes that came before it stay in `inbox`."""
        command_id = self.next_id()
        await self.send({"id": command_id, "op": op, **params})
        return await self.reply(command_id)

    async def reply(self, command_id: int, timeout: float | None = None) -> dict[str, Any]:
        held: list[dict[str, Any]] = []
        try:
            while True:
                message = await self._recv(timeout)
                if message.get("id") == command_id:
                    return message
                held.append(message)
        finally:
            self.inbox.extendleft(reversed(held))

    async def push(self, kind: str, timeout: float | None = None) -> dict[str, Any]:
        """The next message, which must be a push of `kind` (pings in between are answered)."""
        while True:
            message = await self._recv(timeout)
            if message.get("push") == "ping" and kind != "ping":
                await self.send({"op": "pong"})
                continue
            if message.get("push") == kind:
                return message
            raise AssertionError(f"expected a {kind} push, got {message}")

    async def _recv(self, timeout: float | None) -> dict[str, Any]:
        return await self.recv(self.wait if timeout is None else timeout)
