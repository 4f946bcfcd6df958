"""A room member for the fault tests: it records everything it is told and reconnects with its position.

The scale-out and failover tests judge what each member got: every publication in offset order without
a gap or a duplicate, or a 4011 close and a join reply with recovered=false and a new epoch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tests.support.conversation import Closed
from tests.support.wsclient import RawClient, cancel_and_wait, token


@dataclass(frozen=True)
class JoinReply:
    epoch: str
    offset: int
    #: None on the first join (no position to recover from).
    recovered: bool | None
    publications: tuple[tuple[int, Any], ...]


@dataclass(frozen=True)
class PubPush:
    offset: int
    data: Any


@dataclass(frozen=True)
class CloseSeen:
    code: int | None


@dataclass(frozen=True)
class JoinFailed:
    reply: dict[str, Any]


Event = JoinReply | PubPush | CloseSeen | JoinFailed


class Receiver:
    """A client in one room recording everything it is told, reconnecting (through `urls` in turn) with its
    position. `start()` it inside a running loop; `stop()` it before the test ends."""

    def __init__(self, urls: list[str], room: str, user: str) -> None:
        self.urls = urls
        self.room = room
        self.user = user
        self.events: list[Event] = []
        self.position: dict[str, Any] | None = None
        self.joined = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            client: RawClient | None = None
            try:
                client = await RawClient.open(url)
                spec = {"since": self.position} if self.position is not None else {}
                reply = await client.call("connect", token=token(self.user), rooms={self.room: spec})
                result = reply.get("ok", {}).get("rooms", {}).get(self.room)
                if result is None or "error" in result:
                    self.events.append(JoinFailed(reply))
                    await asyncio.sleep(0.2)  # a node without its broker: try again a little later
                    continue
                pubs = tuple((int(p["offset"]), p["data"]) for p in result["publications"])
                recovered = None if self.position is None else bool(result["recovered"])
                self.events.append(JoinReply(result["epoch"], int(result["offset"]), recovered, pubs))
                self.position = {"epoch": result["epoch"], "offset": int(result["offset"])}
                self.joined.set()
                while True:
                    message = await client.recv(timeout=60)
                    if message.get("push") == "pub" and message.get("room") == self.room:
                        self.events.append(PubPush(int(message["offset"]), message["data"]))
                        self.position = {"epoch": self.position["epoch"], "offset": int(message["offset"])}
                    elif message.get("push") == "ping":
                        await client.send({"op": "pong"})
            except Closed as closed:
                self.events.append(CloseSeen(closed.code))
            except (TimeoutError, OSError):
                self.events.append(CloseSeen(None))
            finally:
                if client is not None:
                    # No closing handshake: a cancelled receiver must not wait on its peer.
                    client.ws.transport.abort()
            await asyncio.sleep(0.05)

    def at(self, epoch: str, offset: int) -> bool:
        return self.position == {"epoch": epoch, "offset": offset}

    @property
    def offsets(self) -> list[int]:
        """Every offset received, recovered ones included, in the order they came."""
        found: list[int] = []
        for event in self.events:
            if isinstance(event, JoinReply):
                found += [offset for offset, _ in event.publications]
            elif isinstance(event, PubPush):
                found.append(event.offset)
        return found

    @property
    def epochs(self) -> set[str]:
        return {event.epoch for event in self.events if isinstance(event, JoinReply)}

    @property
    def closes(self) -> list[int | None]:
        return [event.code for event in self.events if isinstance(event, CloseSeen)]

    @property
    def recovered(self) -> list[bool]:
        """For every re-join, whether it recovered what was missed."""
        joins = [event for event in self.events if isinstance(event, JoinReply)]
        return [join.recovered for join in joins if join.recovered is not None]

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            await cancel_and_wait(self.task)
