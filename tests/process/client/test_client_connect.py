"""hubbub_client's first connect: it gives up with a `ConnectFailed` that says what is wrong (at once when
retrying cannot help, after `connect_timeout` otherwise), logs every failed attempt, and cancelling it leaves
nothing running. Once connected it keeps retrying, whatever a front answers meanwhile."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest
from websockets.exceptions import InvalidStatus

from hubbub_client import Client, ClientClosed, ConnectFailed, ConnectionState
from hubbub_client.policy import refusal_is_terminal
from tests.conftest import ServerFactory
from tests.process.client.test_client_support import FAST, Relay, client_for, http_answer
from tests.support.polling import until
from tests.support.procs import free_port
from tests.support.server import ServerProcess

#: How long a test watches for attempts that must not happen: several times the fast backoff cap (0.3 s),
#: so that the leaked reconnect loop this guards against would have made a few.
QUIET_WINDOW = 1.2
#: A short `connect_timeout` for clients that must connect once and then outlast it. Short, as a test waits
#: for attempts past it; still ample for a first connect on a loaded machine (tens of milliseconds idle).
SHORT_CONNECT_TIMEOUT = 3.0

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Mode = Literal["hangup", "silent", "upgrade"]


class Listener:
    """A real TCP listener on 127.0.0.1 that counts the connections reaching it, so that attempts are seen
    from outside the client. `hangup` closes each connection at once (the client retries with backoff),
    `silent` reads the upgrade request and never answers (the handshake hangs), `upgrade` completes the
    WebSocket handshake and then never answers (the client waits for its `connect` reply)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.accepted = 0  # connections accepted
        self.requests = 0  # upgrade requests read
        self.messages = 0  # reads after an upgrade (the client's `connect` frame)
        self.open = 0  # connections the client has not closed yet
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def ws_url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def start(self) -> Listener:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        try:
            if self.mode == "hangup":
                return
            request = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.mode == "upgrade":
                match = re.search(rb"sec-websocket-key:\s*(\S+)", request, re.IGNORECASE)
                assert match is not None
                accept = base64.b64encode(hashlib.sha1(match.group(1) + _WS_GUID).digest())
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                    b"sec-websocket-accept: " + accept + b"\r\nsec-websocket-protocol: hubbub.v1.json\r\n\r\n"
                )
            while await reader.read(65536):  # until the client goes away
                self.messages += 1
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # The aborted connections' handlers end on their next turn: await that, not a guess.
        await until(lambda: self.open == 0, what="the listener's connection handlers to end")


def client_tasks() -> set[asyncio.Task[Any]]:
    """Tasks running hubbub_client code: the runner, connection readers and watchdogs, token refreshes."""
    package = f"{os.sep}hubbub{os.sep}client{os.sep}"
    found: set[asyncio.Task[Any]] = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and package in code.co_filename:
            found.add(task)
    return found


def client_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "hubbub_client"]


def attempt_line(url: str, attempt: int, cause: str) -> re.Pattern[str]:
    return re.compile(
        rf"connect attempt {attempt} to {re.escape(url)} failed: {re.escape(cause)}; retrying in \d+\.\d\d s"
    )


async def expect_connect_failed(client: Client, within: float) -> ConnectFailed:
    """`connect()` raises `ConnectFailed` within `within` seconds, and the client is closed for good."""
    with pytest.raises(ConnectFailed) as failed:
        await asyncio.wait_for(client.connect(), within)
    error = failed.value
    assert isinstance(error, ClientClosed)  # existing `except ClientClosed` keeps working
    assert client.state is ConnectionState.CLOSED and client.failure is error
    assert client.final is not None and not client.final.reconnect and error.disconnect == client.final
    assert client_tasks() == set()
    with pytest.raises(ConnectFailed):  # and says so again to anyone who asks
        await client.connect()
    return error


# --- pure parts ----------------------------------------------------------------------------------


def test_4xx_refusals_end_the_first_connect_except_the_ones_that_say_later() -> None:
    assert [s for s in (400, 401, 403, 404, 405, 410, 426, 451) if not refusal_is_terminal(s)] == []
    assert [s for s in (408, 425, 429, 500, 502, 503, 504, 200, 302) if refusal_is_terminal(s)] == []


def test_connect_timeout_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        Client("ws://127.0.0.1:9/ws", token=None, connect_timeout=0)
    assert Client("ws://127.0.0.1:9/ws", token=None, connect_timeout=None).connect_timeout is None
    assert Client("ws://127.0.0.1:9/ws", token=None).connect_timeout == 30.0


# --- giving up -----------------------------------------------------------------------------------


async def test_server_down_fails_after_connect_timeout_with_the_cause_and_a_warning_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    client = Client(url, token=None, connect_timeout=1.5, **FAST)
    publishing = asyncio.create_task(client.publish("chat:x", "queued before the first connect"))
    joining = asyncio.create_task(client.join("chat:x"))  # waits for a connection within command_timeout
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hubbub_client"):
        error = await expect_connect_failed(client, within=20)
    # Not before the deadline; the upper bound leaves a loaded machine room for late timers and still
    # fails a client that waits for anything longer (the command timeout, the 30 s default).
    assert 1.45 <= time.monotonic() - started < 4
    for waiting in (publishing, joining):  # what waited for the connection learns why it never came
        with pytest.raises(ConnectFailed) as also:
            await waiting
        assert also.value is error
    assert isinstance(error.cause, ConnectionRefusedError) and (error.status, error.body) == (None, None)
    assert error.attempts >= 2 and error.attempts == client.attempts and error.url == url
    assert (
        str(error)
        == f"could not connect to {url} within 1.5 s ({error.attempts} attempts); last error: connection refused"
    )

    *attempts, last = client_lines(caplog)
    assert attempt_line(url, 1, "connection refused").fullmatch(attempts[0]), attempts[0]
    then = r"(retrying in \d+\.\d\d s|giving up in \d+\.\d\d s \(connect_timeout 1\.5 s\))"
    for number, line in enumerate(attempts, 1):
        assert re.fullmatch(rf"connect attempt {number} to {re.escape(url)} failed: connection refused; {then}", line)
    # An attempt that fails at the deadline itself is told only by the last line.
    assert len(attempts) in (error.attempts, error.attempts - 1) and last == f"giving up: {error}"
    records = [r for r in caplog.records if r.name == "hubbub_client"]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)  # no tracebacks


async def test_silent_server_fails_after_connect_timeout_not_open_timeout() -> None:
    listener = await Listener("silent").start()
    try:
        client = Client(listener.ws_url, token=None, connect_timeout=1.0, open_timeout=10, **FAST)
        started = time.monotonic()
        error = await expect_connect_failed(client, within=20)
        assert 0.95 <= time.monotonic() - started < 5  # half the open_timeout, room for a loaded machine
        assert isinstance(error.cause, TimeoutError) and error.attempts == 1 == listener.accepted
        assert str(error) == f"could not connect to {listener.ws_url} within 1 s (1 attempt); last error: timed out"
        await until(lambda: listener.open == 0, what="the client to drop the unanswered connection")
    finally:
        await listener.close()


@pytest.mark.parametrize(
    ("url_tail", "options", "status", "said"),
    [
        ("/", {}, 404, "WebSocket endpoint is /ws"),  # the wrong path
        (
            "/ws",
            {"connect_options": {"origin": "https://elsewhere.example"}},
            403,
            "origin not allowed: add it to the allowed_origins setting",
        ),
        ("/ws?token=not-a-jwt", {}, 401, None),  # a bad token on the upgrade itself
    ],
    ids=["wrong-path-404", "origin-403", "upgrade-token-401"],
)
async def test_refused_upgrade_fails_at_once_with_the_status_and_the_servers_words(
    server: ServerProcess,
    caplog: pytest.LogCaptureFixture,
    url_tail: str,
    options: dict[str, Any],
    status: int,
    said: str | None,
) -> None:
    url = f"ws://127.0.0.1:{server.port}{url_tail}"
    client = client_for(url, **options)  # the default connect_timeout (30 s): none of it is used
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hubbub_client"):
        error = await expect_connect_failed(client, within=20)
    assert time.monotonic() - started < 15  # not the 30 s of connect_timeout
    assert error.status == status and error.attempts == 1 == client.attempts
    assert isinstance(error.cause, InvalidStatus) and error.body is not None
    if said is not None:
        assert str(error) == f"HTTP {status} from {url}: {said}" and said in error.body
    else:
        assert re.fullmatch(rf"HTTP 401 from {re.escape(url)}: \S.*", str(error)), str(error)
    assert client_lines(caplog) == [f"giving up: {error}"]


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (400, "bad request\n", "bad request"),
        (
            426,
            '{"error": {"code": 426, "reason": "WebSocket version 13 is required"}}',
            "WebSocket version 13 is required",
        ),
        (404, "<html><head><title>404 Not Found</title></head><body><hr>nginx</body></html>", "404 Not Found"),
        (410, "", None),
    ],
    ids=["400-text", "426-json", "404-html-page", "410-empty"],
)
async def test_refusal_from_a_front_is_summed_up_in_one_line(
    server: ServerProcess, status: int, body: str, said: str | None
) -> None:
    relay = await Relay(server.port).start()
    relay.answer = http_answer(status, body)
    try:
        error = await expect_connect_failed(client_for(relay.ws_url), within=20)
        assert str(error) == f"HTTP {status} from {relay.ws_url}" + (f": {said}" if said else "")
        assert (error.status, error.body, relay.accepted) == (status, body, 1)
    finally:
        await relay.close()


async def test_a_huge_refusal_body_is_bounded(server: ServerProcess) -> None:
    relay = await Relay(server.port).start()
    relay.answer = http_answer(403, "x" * 50_000)
    try:
        error = await expect_connect_failed(client_for(relay.ws_url), within=20)
        assert error.body == "x" * ConnectFailed.MAX_BODY
        assert len(str(error)) < 300 and str(error).endswith("…")
    finally:
        await relay.close()


async def test_invalid_token_fails_the_first_connect_at_once_with_4001(server: ServerProcess) -> None:
    client = Client(server.ws_url, token="not-a-jwt", **FAST)
    error = await expect_connect_failed(client, within=20)
    assert error.disconnect is not None and error.disconnect.code == 4001
    assert error.attempts == 1 and error.cause is None and error.status is None
    assert str(error).startswith(f"close code 4001 from {server.ws_url}: ")


async def test_invalid_url_fails_at_once() -> None:
    error = await expect_connect_failed(Client("http://127.0.0.1:9/ws", token=None), within=20)
    assert str(error) == "invalid URL: http://127.0.0.1:9/ws isn't a valid URI: scheme isn't ws or wss"
    assert error.attempts == 1


# --- retrying within the window ------------------------------------------------------------------


async def test_server_that_comes_up_within_connect_timeout_is_connected_to(server_factory: ServerFactory) -> None:
    server = server_factory()
    await asyncio.to_thread(server.stop)
    client = client_for(server.ws_url, connect_timeout=60)  # a restart takes a while on a loaded machine
    connecting = asyncio.create_task(client.connect())
    try:
        await until(lambda: client.attempts >= 2, what="failed attempts while the server is down")
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(connecting, 30)
        assert client.state is ConnectionState.CONNECTED and client.failure is None
    finally:
        await client.close()


@pytest.mark.parametrize("status", [503, 429, 408])
async def test_first_connect_retries_a_refusal_that_may_pass(
    server: ServerProcess, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    relay = await Relay(server.port).start()
    relay.answer = http_answer(status, "try again later")
    client = client_for(relay.ws_url)
    try:
        with caplog.at_level(logging.WARNING, logger="hubbub_client"):
            connecting = asyncio.create_task(client.connect())
            await until(lambda: relay.accepted >= 2, what="a retry after the refusal")
            relay.answer = None
            await asyncio.wait_for(connecting, 30)
        assert client.state is ConnectionState.CONNECTED
        cause = f"HTTP {status}: try again later"
        assert attempt_line(relay.ws_url, 1, cause).fullmatch(client_lines(caplog)[0])
    finally:
        await client.close()
        await relay.close()


# --- cancelling ----------------------------------------------------------------------------------


def reached(listener: Listener) -> Callable[[], bool]:
    """The stage of the first connect at which the test cancels, for each listener mode."""
    if listener.mode == "hangup":
        return lambda: listener.accepted >= 2  # between attempts, in the backoff
    if listener.mode == "silent":
        return lambda: listener.requests >= 1  # in the HTTP handshake
    return lambda: listener.messages >= 1  # WebSocket open, `connect` sent, no reply


@pytest.mark.parametrize("mode", ["hangup", "silent", "upgrade"])
@pytest.mark.parametrize("how", ["wait_for", "task-in-async-with"])
async def test_cancelled_first_connect_closes_everything_and_attempts_nothing_more(
    mode: Mode, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await Listener(mode).start()
    # Each stage lasts: "hangup" until connect_timeout (30 s), "silent" until open_timeout (10 s),
    # "upgrade" until command_timeout (30 s in FAST).
    client = Client(listener.ws_url, token=None, **FAST)
    try:
        if how == "wait_for":
            # The timeout is the cancellation under test. The stage is reached within tens of milliseconds
            # on an idle machine: 3 s leaves a loaded one room, and ends well inside every stage.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.connect(), 3.0)
            assert reached(listener)(), "cancelled before the stage this case is about"
        else:

            async def application() -> None:
                async with client:
                    pytest.fail("connected to a listener that cannot serve hubbub")

            task = asyncio.create_task(application())
            await until(reached(listener), what=f"the {mode} stage of the first connect")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert client.state is ConnectionState.CLOSED
        assert client_tasks() == set()
        await until(lambda: listener.open == 0, what="the client to drop its half-open connection")
        seen = listener.accepted
        await asyncio.sleep(QUIET_WINDOW)  # an absence: nothing to await but time
        assert listener.accepted == seen, "connection attempts continued after the cancellation"
        assert client_tasks() == set()
        with pytest.raises(ClientClosed):
            await client.connect()
    finally:
        await client.close()
        await listener.close()


# --- after having connected ----------------------------------------------------------------------


async def test_after_connecting_http_refusals_are_retried_with_a_warning_until_the_server_is_back(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await Relay(server.port).start()
    try:
        async with client_for(relay.ws_url, connect_timeout=SHORT_CONNECT_TIMEOUT) as client:
            first = client.client_id
            with caplog.at_level(logging.INFO, logger="hubbub_client"):
                relay.answer = http_answer(404, "no route to the service yet")  # an ingress mid-rollout
                cut = time.time()
                relay.cut()
                await until_logged(caplog, "HTTP 404: no route to the service yet", 2)
                relay.answer = http_answer(503, "upstream unavailable")
                await until_logged(caplog, "HTTP 503: upstream unavailable", 2)
                await until_retried_past(caplog, cut + SHORT_CONNECT_TIMEOUT)  # it is for the first connect only
                relay.answer = None
                await client.wait_connected(timeout=30)
            assert client.client_id != first and client.failure is None
            lines = client_lines(caplog)
            assert lines[0].startswith(f"connection to {relay.ws_url} ended: connection lost; reconnecting in ")
            failed = [line for line in lines[1:] if line.startswith("connect attempt")]
            assert len(failed) == len(lines) - 1 >= 4  # every failed attempt, and nothing else
            assert all(r.levelno == logging.WARNING for r in caplog.records if r.getMessage() in failed)
    finally:
        await relay.close()


async def test_after_connecting_refused_connections_are_retried_with_a_warning(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    async with client_for(server.ws_url, connect_timeout=SHORT_CONNECT_TIMEOUT) as client:
        with caplog.at_level(logging.WARNING, logger="hubbub_client"):
            stopped = time.time()
            await asyncio.to_thread(server.stop)
            await until_logged(caplog, "connection refused", 3)
            await until_retried_past(caplog, stopped + SHORT_CONNECT_TIMEOUT)
            await asyncio.to_thread(server.start)
            await client.wait_connected(timeout=30)
        assert attempt_line(server.ws_url, 1, "connection refused").fullmatch(client_lines(caplog)[0])


async def until_logged(caplog: pytest.LogCaptureFixture, cause: str, count: int) -> None:
    def logged() -> bool:
        return sum(f"failed: {cause}; retrying in" in line for line in client_lines(caplog)) >= count

    await until(logged, what=f"{count} failed attempts logged with {cause!r}")


async def until_retried_past(caplog: pytest.LogCaptureFixture, moment: float) -> None:
    """Until an attempt failed after `moment` (wall-clock time), with the client still retrying."""

    def retried() -> bool:
        return any(
            r.name == "hubbub_client"
            and r.created > moment
            and " failed: " in r.getMessage()
            and "retrying" in r.getMessage()
            for r in caplog.records
        )

    await until(retried, what="a failed attempt past connect_timeout, and a retry")
