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


async def pipelined_publishes(client: Conversation, name: str) -> None:
    """Publishes pipelined around other commands keep command order: replies, offsets and side effects.

    The client (connected, with a token that may publish to `name` only) sends 25 publishes as
    separate frames, a `history` (which must see exactly the publishes before it), then a frame of
    25 more in which one publish is refused (no data) and one is forbidden (a room the token may
    not publish to). Every reply comes back in command order; the 48 accepted publishes got offsets
    1..48 in the order they were sent. The same check runs in-process and against real servers.
    """
    await client.call("join", room=name)
    first = [{"id": 100 + i, "op": "publish", "room": name, "data": i} for i in range(25)]
    for command in first:
        await client.send(command)
    await client.send({"id": 200, "op": "history", "room": name, "limit": 100})
    second = [{"id": 300 + i, "op": "publish", "room": name, "data": 25 + i} for i in range(25)]
    del second[10]["data"]
    second[20]["room"] = name + "-other"  # not in the token's publish claim
    await client.send(*second)
    expected = [c["id"] for c in first] + [200] + [c["id"] for c in second]
    replies: list[dict[str, Any]] = []
    while len(replies) < len(expected):
        message = await client.recv(client.wait)
        if "id" in message:
            replies.append(message)
    assert [r["id"] for r in replies] == expected
    history = replies[25]["ok"]
    assert [p["offset"] for p in history["publications"]] == list(range(1, 26))
    assert [p["data"] for p in history["publications"]] == list(range(25))
    assert replies[26 + 10]["error"]["code"] == 400
    assert replies[26 + 20]["error"]["code"] == 403
    offsets = [r["ok"]["offset"] for r in replies if "ok" in r and "offset" in r["ok"] and r["id"] != 200]
    assert offsets == list(range(1, 49))
    stored = await client.call("history", room=name, limit=100)
    data = [p["data"] for p in stored["ok"]["publications"]]
    assert data == [*range(25), *(25 + i for i in range(25) if i not in (10, 20))]
