"""Room members and a publisher in a process of their own, driven by JSON lines on stdin/stdout.

The real-pod tests reach the hubbub Service only from inside the network namespace that holds the
cluster (ClusterIPs exist in that namespace's iptables), so the clients run there, in this process,
started through `nsenter` (RealNode.popen) and steered by `RoomLoad` from the test:

    load = RoomLoad(argv_prefix, url="ws://10.0.0.12/ws", api="http://10.0.0.12", ...)
    load.call("connect")                 # every member connected and joined
    load.call("publish", rate=20)        # a numbered publication per room, through the HTTP API
    ...                                  # roll the pods, scale, delete one
    newest = load.call("stop_publishing")["newest"]
    verdict = load.call("check", timeout=60)   # every member holds every publication once, in order

Each member is the Python client (hubbub_client.Client): it reconnects on 1012 and network loss and
recovers what it missed from its position, as an application would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from hubbub.auth import mint_token
from hubbub_client import Client, Disconnection, Message, Rejoin
from tests.support.polling import until

#: Fast reconnects: a test does not want a production client's 20 s backoff cap.
FAST = {"backoff_base": 0.05, "backoff_cap": 1.0, "drain_jitter": 1.0}


class Member:
    def __init__(self, index: int, url: str, room: str, secret: str) -> None:
        self.room = room
        self.offsets: list[int] = []
        self.rejoins: list[Rejoin] = []
        self.disconnects: list[Disconnection] = []
        user = f"load-{index}"

        async def fresh() -> str:
            return mint_token(secret, sub=user, rooms=("*",), publish=("*",))

        self.client = Client(url, token=fresh, connect_timeout=60.0, **FAST)  # type: ignore[arg-type]
        self.client.on_disconnect(self.disconnects.append)

    async def start(self) -> None:
        await self.client.connect()
        joined = await self.client.join(self.room)
        joined.on_publication(self._take)
        joined.on_rejoin(self.rejoins.append)

    def _take(self, pub: Message) -> None:
        self.offsets.append(pub.offset)


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rooms = [f"{args.room_prefix}-{i}" for i in range(args.rooms)]
        self.members = [Member(i, args.url, self.rooms[i % args.rooms], args.secret) for i in range(args.clients)]
        self.newest: dict[str, int] = {}
        self.publish_errors: Counter[str] = Counter()
        self.published = 0
        self.publisher: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    async def connect(self) -> dict[str, Any]:
        for start in range(0, len(self.members), 25):
            await asyncio.gather(*(m.start() for m in self.members[start : start + 25]))
        return {"connected": len(self.members)}

    async def _publish_forever(self, rate: float) -> None:
        headers = {"authorization": f"Bearer {self.args.api_key}"}
        async with httpx.AsyncClient(headers=headers, timeout=5) as http:
            n = 0
            while not self.stopping.is_set():
                room = self.rooms[n % len(self.rooms)]
                # Retried with one idempotency key until a node takes it: a publish that reached a
                # node being rolled away is stored once, whatever the client saw.
                for _attempt in range(600):
                    try:
                        response = await http.post(
                            self.args.api + "/api/publish",
                            json={"room": room, "data": n, "idempotency_key": f"{self.args.room_prefix}-p{n}"},
                        )
                        if response.status_code == 200:
                            self.newest[room] = max(self.newest.get(room, 0), int(response.json()["offset"]))
                            self.published += 1
                            break
                        self.publish_errors[f"HTTP {response.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        self.publish_errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                n += 1
                await asyncio.sleep(1 / rate)

    async def publish(self, rate: float) -> dict[str, Any]:
        self.stopping.clear()
        self.publisher = asyncio.create_task(self._publish_forever(rate))
        return {"publishing": rate}

    async def stop_publishing(self) -> dict[str, Any]:
        self.stopping.set()
        if self.publisher is not None:
            await self.publisher
        return {"newest": self.newest, "published": self.published, "errors": dict(self.publish_errors)}

    def _verdict(self) -> dict[str, Any]:
        behind = [m for m in self.members if m.offsets[-1:] != [self.newest.get(m.room, 0)] and self.newest.get(m.room)]
        wrong = [m for m in self.members if m.offsets != list(range(1, self.newest.get(m.room, 0) + 1))]
        codes = Counter(str(d.code) for m in self.members for d in m.disconnects)
        return {
            "complete": not behind,
            "lossless": not wrong,
            "behind": [(m.room, m.offsets[-3:], self.newest.get(m.room)) for m in behind[:5]],
            "wrong": [(m.room, len(m.offsets), m.offsets[:3], m.offsets[-3:]) for m in wrong[:5]],
            "disconnects": dict(codes),
            "rejoins": sum(len(m.rejoins) for m in self.members),
            "unrecovered": sum(1 for m in self.members for r in m.rejoins if not r.recovered),
            "received": sum(len(m.offsets) for m in self.members),
        }

    async def check(self, timeout: float) -> dict[str, Any]:
        """Wait (up to `timeout`) until every member holds its room's newest publication, then judge."""
        with contextlib.suppress(AssertionError):  # the verdict says what is missing
            await until(lambda: self._verdict()["complete"], timeout=timeout, interval=0.2, what="every member")
        return self._verdict()

    async def close(self) -> dict[str, Any]:
        await asyncio.gather(*(m.client.close() for m in self.members), return_exceptions=True)
        return {"closed": len(self.members)}


async def serve(args: argparse.Namespace) -> None:
    load = Load(args)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        command = request.pop("cmd")
        try:
            if command == "connect":
                reply = await load.connect()
            elif command == "publish":
                reply = await load.publish(float(request["rate"]))
            elif command == "stop_publishing":
                reply = await load.stop_publishing()
            elif command == "check":
                reply = await load.check(float(request.get("timeout", 60)))
            elif command == "close":
                reply = await load.close()
                print(json.dumps({"ok": reply}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {command!r}"}
        except Exception as exc:  # reported to the test, which fails with it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"ok": reply} if "error" not in reply else reply), flush=True)


class RoomLoad:
    """The test's end: starts the driver (under `argv_prefix`, e.g. nsenter into a netns) and calls it."""

    def __init__(
        self,
        argv_prefix: Sequence[str],
        *,
        url: str,
        api: str,
        api_key: str,
        secret: str,
        clients: int,
        rooms: int,
        room_prefix: str,
        log: Path,
    ) -> None:
        argv = [
            *argv_prefix,
            sys.executable,
            "-m",
            "tests.support.roomload",
            f"--url={url}",
            f"--api={api}",
            f"--api-key={api_key}",
            f"--secret={secret}",
            f"--clients={clients}",
            f"--rooms={rooms}",
            f"--room-prefix={room_prefix}",
        ]
        # The clients' reconnect chatter goes to `log`, not into the test's output.
        self.log_path = log
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink, text=True)
        self._expect_line()

    def _expect_line(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the room load exited with {self.proc.wait()}:\n{tail}")
        result: dict[str, Any] = json.loads(line)
        return result

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its reply; an error reply raises with the driver's message."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command, **params}) + "\n")
        self.proc.stdin.flush()
        reply = self._expect_line()
        if "error" in reply:
            raise RuntimeError(f"room load {command}: {reply['error']}")
        result: dict[str, Any] = reply["ok"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call("close")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--room-prefix", default="chat:load")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
