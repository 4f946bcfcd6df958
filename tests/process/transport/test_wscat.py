"""A third-party client: `wscat` (npm, installed by scripts/install into node_modules/.bin) speaks protocol v1.

Two ways people use it: `-x` commands sent on connect (output piped: one received message per line),
and typing into it at a terminal (incoming messages printed with a `< ` prefix, and the close code
when the server disconnects). Every wait is bounded and the wscat process is always terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess
from tests.support.wsclient import token

WSCAT = Path(__file__).resolve().parents[3] / "node_modules" / ".bin" / "wscat"
#: Seconds any one wait may take (only a failing test waits this long: node and wscat start slowly on a
#: loaded machine).
TIMEOUT = 30.0
#: Terminal control sequences wscat and readline write around every line in a terminal.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def wscat() -> Path:
    if not WSCAT.exists():
        pytest.skip(f"wscat is not installed at {WSCAT}: run scripts/install (npm ci installs it from package.json)")
    return WSCAT


def commands(name: str, user: str) -> list[dict[str, Any]]:
    return [
        {"id": 1, "op": "connect", "token": token(user)},
        {"id": 2, "op": "join", "room": name},
        {"id": 3, "op": "publish", "room": name, "data": {"text": "hello from wscat", "n": 1}},
    ]


def check_exchange(received: list[dict[str, Any]], name: str, user: str) -> None:
    """Replies to connect, join and publish, and the pub push of that publication to the publisher itself."""
    replies = {m["id"]: m for m in received if "id" in m}
    assert set(replies) == {1, 2, 3}, received
    assert replies[1]["ok"]["user"] == user and isinstance(replies[1]["ok"]["client"], str), replies[1]
    joined, published = replies[2]["ok"], replies[3]["ok"]
    assert joined["recovered"] is False and joined["publications"] == [], joined
    assert published == {"epoch": joined["epoch"], "offset": joined["offset"] + 1}
    pubs = [m for m in received if m.get("push") == "pub"]
    assert len(pubs) == 1, received
    pub = pubs[0]
    assert pub["room"] == name and pub["offset"] == published["offset"]
    assert pub["data"] == {"text": "hello from wscat", "n": 1}
    assert pub["info"] == {"user": user, "client": replies[1]["ok"]["client"]}
    # Protocol rule 3: no pub push for a room before that room's join reply.
    assert received.index(pub) > received.index(replies[2])


def exchanged(received: list[dict[str, Any]]) -> bool:
    return {1, 2, 3} <= {m.get("id") for m in received} and any(m.get("push") == "pub" for m in received)


@contextlib.asynccontextmanager
async def running(*args: str, **kwargs: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a process for the block; terminate it (kill if it lingers) however the block ends."""
    proc = await asyncio.create_subprocess_exec(*args, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_wscat_execute_mode_connects_joins_publishes_and_receives_the_pub(
    server: ServerProcess, wscat: Path
) -> None:
    name, user = f"chat:wscat-{uuid.uuid4().hex[:8]}", "wscat-x"
    # -x sends each command as soon as the socket opens, join before the connect reply (protocol rule 1);
    # -w -1 holds the connection open until the test terminates wscat. Piped output: one message per line.
    execute = [arg for command in commands(name, user) for arg in ("-x", json.dumps(command))]
    args = [str(wscat), "-c", server.ws_url, "-s", "hubbub.v1.json", "-w", "-1", *execute]
    received: list[dict[str, Any]] = []
    # stdin stays open: wscat exits as soon as its input ends.
    async with running(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            while not exchanged(received):
                line = await proc.stdout.readline()
                assert line, f"wscat exited ({await proc.wait()}) after {received}"
                received.append(json.loads(line))
    check_exchange(received, name, user)


class Terminal:
    """wscat attached to a pseudo-terminal, as when a person types into it."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.output = ""
        self._data = asyncio.Event()
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.master)
        self.output += chunk.decode(errors="replace")
        self._data.set()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not done():
                self._data.clear()
                await self._data.wait()

    async def wait_for(self, pattern: str) -> None:
        await self.wait_until(lambda: re.search(pattern, self.plain()) is not None)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def plain(self) -> str:
        return ANSI.sub("", self.output).replace("\r\n", "\n")

    def incoming(self) -> list[dict[str, Any]]:
        """Messages wscat printed as received: lines after `< ` (one frame may hold several messages)."""
        found: list[dict[str, Any]] = []
        in_message = False
        for raw in self.plain().split("\n"):
            line = raw.rsplit("\r", 1)[-1] if raw.rstrip("\r") else ""
            if line.startswith("< "):
                in_message, line = True, line[2:]
            elif not in_message or not line.startswith("{"):
                in_message = False
                continue
            found.append(json.loads(line))
        return found

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def test_wscat_in_a_terminal_shows_replies_pushes_and_the_close_code(server: ServerProcess, wscat: Path) -> None:
    name, user = f"chat:wscat-{uuid.uuid4().hex[:8]}", "wscat-tty"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "dumb"}
    try:
        async with running(
            str(wscat), "-c", server.ws_url, "--no-color", stdin=slave, stdout=slave, stderr=slave, env=env
        ) as proc:
            os.close(slave)
            slave = -1
            terminal = Terminal(master)
            try:
                await terminal.wait_for(r"Connected \(press CTRL\+C to quit\)")
                for command in commands(name, user):
                    terminal.type(json.dumps(command))
                await terminal.wait_until(lambda: exchanged(terminal.incoming()))
                received = terminal.incoming()
                check_exchange(received, name, user)
                assert re.search(r'(^|\r)< \{"id":1,"ok"', terminal.plain(), re.MULTILINE), "no `< ` prefix"

                # A protocol violation: wscat shows the disconnect push, then the close code, and exits.
                terminal.type("this is not JSON")
                await terminal.wait_for(r"Disconnected \(code: 4004")
                disconnect = [m for m in terminal.incoming() if m.get("push") == "disconnect"]
                assert disconnect and disconnect[0]["code"] == 4004 and disconnect[0]["reconnect"] is False
                async with asyncio.timeout(TIMEOUT):
                    await proc.wait()
            finally:
                terminal.close()
                master = -1
    finally:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
