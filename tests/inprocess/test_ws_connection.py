"""The WebSocket connection (hubbub.ws.connection) in-process, through a fake transport: its states
and every transition between them, the close handshake on a clock of the test's own, the frame path
(order within a read, pings, flow control), and the uvicorn hook it is plugged in with.

tests/process/transport/test_connection.py speaks raw frames to a real `hubbub serve`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from hubbub import protocol
from hubbub.app import HubbubApp
from hubbub.auth import mint_token
from hubbub.codes import CloseCode
from hubbub.node import Node
from hubbub.session import Session
from hubbub.settings import DEV_JWT_SECRET
from hubbub.types import Room
from hubbub.ws import frames
from hubbub.ws.connection import (
    CLOSE_TIMEOUT,
    MAX_INBOX,
    TRANSITIONS,
    ConnectionState,
    InvalidTransition,
    WebSocketConnection,
)
from tests.support.polling import until
from tests.support.ws_fakes import (
    UPGRADE,
    FakeTransport,
    ManualClock,
    client_frame,
    close_code,
    close_frame,
    command,
    make_connection,
    make_node,
    open_connection,
    pong_payloads,
    upgrade_request,
)

CONNECTING, OPEN, CLOSING, CLOSED = (
    ConnectionState.CONNECTING,
    ConnectionState.OPEN,
    ConnectionState.CLOSING,
    ConnectionState.CLOSED,
)


def refusals(node: Node, reason: str) -> float:
    """hubbub_handshake_refusals_total{reason} of the node."""
    return node.metrics.registry.get_sample_value("hubbub_handshake_refusals_total", {"reason": reason}) or 0.0


def status_of(written: bytes | bytearray) -> int:
    return int(bytes(written).split(b" ", 2)[1])


async def closed(connection: WebSocketConnection) -> None:
    """Wait for asyncio's connection_lost, which comes on a loop iteration after the transport closes."""
    await until(lambda: connection.state is CLOSED, what="the connection to be lost")


# --- the states and what moves between them ------------------------------------------------------------


def test_the_transitions_are_the_documented_ones_and_closed_is_final() -> None:
    assert {
        CONNECTING: {OPEN, CLOSED},
        OPEN: {CLOSING, CLOSED},
        CLOSING: {CLOSED},
        CLOSED: set(),
    } == TRANSITIONS


ILLEGAL = [(a, b) for a, b in itertools.product(ConnectionState, repeat=2) if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a.value}-{b.value}" for a, b in ILLEGAL])
def test_an_illegal_transition_raises_and_leaves_the_state_alone(
    current: ConnectionState, target: ConnectionState
) -> None:
    connection, _, _ = make_connection(None)
    connection.state = current  # put there directly: no legal path leads every state to every other
    with pytest.raises(InvalidTransition, match=f"from {current.value} to {target.value}"):
        connection.transition(target)
    assert connection.state is current


async def test_an_accepted_upgrade_goes_from_connecting_to_open() -> None:
    node = make_node()
    connection, transport, connections = make_connection(node)
    assert connection.state is CONNECTING and connection in connections
    connection.data_received(UPGRADE)
    assert connection.state is OPEN
    assert transport.written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert connection.session in node.sessions


@pytest.mark.parametrize(
    ("request_head", "overrides", "status", "reason"),
    [
        (upgrade_request("/chat"), {}, 404, "not_websocket"),
        (upgrade_request("/ws", "Sec-WebSocket-Version: 8").replace(b"Version: 13\r\n", b""), {}, 426, "not_websocket"),
        (
            upgrade_request("/ws", "Origin: https://evil.example"),
            {"mode": "production", "allowed_origins": ["https://app.example"]},
            403,
            "origin",
        ),
        (upgrade_request("/ws?token=forged"), {}, 401, "auth"),
    ],
    ids=["path", "version", "origin", "token"],
)
async def test_a_refused_upgrade_goes_from_connecting_to_closed_with_an_http_error(
    request_head: bytes, overrides: dict[str, object], status: int, reason: str
) -> None:
    """A refused upgrade never was a WebSocket: no CLOSING, no close frame; the refusal is counted."""
    node = make_node(**overrides)
    connection, transport, connections = make_connection(node)
    connection.data_received(request_head)
    await until(lambda: transport.closing, what="the refusal")  # a token is checked off the read
    assert connection.state is CLOSED
    assert status_of(transport.written) == status
    assert refusals(node, reason) == 1
    await until(lambda: not connections, what="uvicorn's set to forget it")
    assert connection.state is CLOSED and not node.sessions


async def test_an_upgrade_while_the_node_is_starting_is_refused_503() -> None:
    connection, transport, _ = make_connection(None)
    connection.data_received(UPGRADE)
    assert connection.state is CLOSED and status_of(transport.written) == 503


async def test_reading_pauses_while_the_token_of_the_upgrade_is_checked() -> None:
    node = make_node()
    connection, transport, _ = make_connection(node)
    token = mint_token(DEV_JWT_SECRET, sub="carol", rooms=("*",))
    connection.data_received(upgrade_request("/ws", f"Authorization: Bearer {token}"))
    assert connection.state is CONNECTING and not transport.reading
    await until(lambda: connection.state is OPEN, what="the token to be accepted")
    assert transport.reading
    assert connection.session.user == "carol"


async def test_a_connection_lost_while_its_token_is_checked_goes_to_closed_and_writes_nothing() -> None:
    node = make_node()
    connection, transport, _ = make_connection(node)
    token = mint_token(DEV_JWT_SECRET, sub="carol", rooms=("*",))
    before = asyncio.all_tasks()
    connection.data_received(upgrade_request("/ws", f"Authorization: Bearer {token}"))
    (check,) = asyncio.all_tasks() - before
    transport.lose()
    assert connection.state is CLOSED
    await check  # it finds the connection gone: nothing is written (FakeTransport fails a write after close)
    assert connection.state is CLOSED and transport.written == b"" and not node.sessions


async def test_our_close_goes_open_closing_then_closed_when_the_peer_answers() -> None:
    node = make_node()
    connection, transport = await open_connection(node)
    connection.session.close(CloseCode.DRAINING)
    await until(lambda: connection.state is CLOSING, what="our close frame to be written")
    written = transport.take_frames()
    assert [opcode for opcode, _ in written] == [frames.TEXT, frames.CLOSE]
    assert json.loads(written[0][1])["push"] == "disconnect" and close_code(written[1][1]) == 1012
    assert not transport.closing  # waiting for the peer's answer
    connection.data_received(close_frame(1012))
    assert transport.closing and transport.take_frames() == []  # answered: nothing more is sent
    await closed(connection)
    assert connection.closed_code == 1012
    await until(lambda: not node.sessions, what="the node to detach the session")


async def test_the_peers_close_goes_open_closing_then_closed_and_is_answered_with_its_code() -> None:
    connection, transport = await open_connection()
    connection.data_received(close_frame(4321, b"bye"))
    assert connection.state is CLOSING and transport.closing
    assert [(opcode, close_code(payload)) for opcode, payload in transport.take_frames()] == [(frames.CLOSE, 4321)]
    await closed(connection)
    assert connection.closed_code == 4321


async def test_a_lost_transport_goes_from_open_to_closed_with_1006() -> None:
    node = make_node()
    connection, transport = await open_connection(node)
    transport.lose()
    assert connection.state is CLOSED and connection.closed_code == 1006
    await until(lambda: not node.sessions, what="the node to detach the session")


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Only reference counting frees objects: what is left for the cyclic collector stays visible."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def a_session_that_ended(node: Node, ending: str) -> weakref.ref[Session]:
    """A connection that connected, joined and published, then ended as `ending` says and was released
    by the node; a weak reference to its session (nothing else of it is left in the test)."""
    connection, transport = await open_connection(node)
    connection.data_received(
        command({"id": 1, "op": "connect"})
        + command({"id": 2, "op": "join", "room": "chat:a"})
        + command({"id": 3, "op": "publish", "room": "chat:a", "data": {"n": 1}})
    )
    received: list[dict[str, Any]] = []

    def replied() -> bool:
        received.extend(json.loads(line) for _, text in transport.take_frames() for line in text.splitlines())
        return [message.get("id") for message in received if "id" in message] == [1, 2, 3]

    await until(replied, what="the replies to connect, join and publish")
    if ending == "lost":
        transport.lose()
    elif ending == "our close":
        connection.session.close(CloseCode.DRAINING)
        await until(lambda: connection.state is CLOSING, what="our close frame")
        connection.data_received(close_frame(1012))
    else:
        connection.data_received(close_frame(1000))
    await closed(connection)
    await until(lambda: not node.sessions and not node.hub.members(Room("chat:a")), what="the node to release it")
    return weakref.ref(connection.session)


@pytest.mark.parametrize("ending", ["lost", "our close", "peer close"])
async def test_a_gone_connection_is_freed_at_once_not_left_for_the_cyclic_garbage_collector(
    ending: str, collector_off: None
) -> None:
    # The node runs full collections rarely (hubbub.server.tune_collector): a session kept alive by a
    # reference cycle would stay in memory long after its connection, and under reconnection churn
    # thousands of them would (the soak's growing nodes).
    session = await a_session_that_ended(make_node(), ending)
    await until(lambda: session() is None, what="the session (its outbox, its socket) to be freed")


async def test_our_close_unanswered_is_dropped_after_close_timeout() -> None:
    node = make_node()
    clock = ManualClock.install(node)
    connection, transport = await open_connection(node)
    connection.session.close(CloseCode.DRAINING)
    await until(lambda: connection.state is CLOSING, what="our close frame to be written")
    clock.advance(CLOSE_TIMEOUT - 0.01)
    assert not transport.closing
    clock.advance(0.02)
    assert transport.aborted
    await closed(connection)


async def test_after_a_violation_our_close_goes_out_then_a_fin_and_the_rest_is_read_and_dropped() -> None:
    node = make_node()
    clock = ManualClock.install(node)
    connection, transport = await open_connection(node)
    connection.data_received(client_frame(b"x", 0x3))  # an unknown opcode
    await until(lambda: connection.state is CLOSING, what="our close frame to be written")
    assert [(opcode, close_code(payload)) for opcode, payload in transport.take_frames()] == [(frames.CLOSE, 1002)]
    assert transport.eof and transport.reading and not transport.closing
    connection.data_received(client_frame(b"more", frames.PING) + b"\xff" * 100)
    assert transport.take_frames() == []  # read, dropped: no pong after our close
    clock.advance(CLOSE_TIMEOUT)
    assert transport.aborted
    await closed(connection)


async def test_uvicorns_shutdown_refuses_a_connecting_connection_and_closes_an_open_one_1012() -> None:
    node = make_node()
    connecting, connecting_transport, _ = make_connection(node)
    connecting.shutdown()
    assert connecting.state is CLOSED and connecting_transport.closing and connecting_transport.written == b""

    connection, transport = await open_connection(node)
    connection.shutdown()
    await until(lambda: connection.state is CLOSING, what="the close frame")
    assert close_code(transport.take_frames()[-1][1]) == 1012


# --- the frame path --------------------------------------------------------------------------------------


async def test_pings_that_cannot_be_answered_yet_get_one_pong_with_the_latest_payload() -> None:
    connection, transport = await open_connection()
    connection.pause_writing()  # the peer does not read: the socket's buffer is full
    assert not transport.reading  # nor is the peer read any further ...
    # ... but a read already under way is handled whole: its pings may not pile up answers.
    connection.data_received(b"".join(client_frame(b"ping %d" % i, frames.PING) for i in range(5)))
    connection.data_received(client_frame(b"ping 5", frames.PING) + client_frame(b"ping 6", frames.PING))
    assert pong_payloads(transport.take_frames()) == []
    connection.resume_writing()
    assert pong_payloads(transport.take_frames()) == [b"ping 6"]  # RFC 6455 5.5.3: the latest one is enough
    assert transport.reading
    connection.data_received(client_frame(b"ping 7", frames.PING) + client_frame(b"ping 8", frames.PING))
    assert pong_payloads(transport.take_frames()) == [b"ping 7", b"ping 8"]  # writable: every ping answered


async def test_reading_resumes_only_when_the_socket_takes_writes_and_the_inbox_has_room() -> None:
    connection, transport = await open_connection()
    outbox = connection.session.outbox
    connection.data_received(command({"id": 1, "op": "connect"}))
    await until(lambda: b'"id":1' in transport.written, what="the connect reply")
    transport.take_frames()

    # The inbox fills (reading pauses), then the socket stops taking writes and takes them again:
    # reading stays paused while the inbox is full ...
    commands = b"".join(command({"id": 100 + i, "op": "pong"}) for i in range(MAX_INBOX + 8))
    connection.data_received(commands)
    assert not transport.reading
    connection.pause_writing()
    connection.resume_writing()
    assert not transport.reading
    # ... and the inbox, drained while the socket is paused again, does not resume reading either:
    # the replies are waiting for the socket.
    connection.pause_writing()
    await until(lambda: outbox.pending >= len('{"id":100,"ok":{}}') * (MAX_INBOX + 8), what="every reply queued")
    assert not transport.reading
    connection.resume_writing()
    assert transport.reading
    replies = [json.loads(line) for _, text in transport.take_frames() for line in text.decode().split("\n")]
    assert [reply["id"] for reply in replies] == [100 + i for i in range(MAX_INBOX + 8)]


async def test_a_violation_waits_for_the_replies_to_the_commands_read_before_it() -> None:
    connection, transport = await open_connection()
    connection.data_received(
        command({"id": 1, "op": "connect"}) + client_frame(b"hello", frames.PING) + client_frame(b"x", 0x3)
    )
    written = transport.take_frames()
    assert written == [(frames.PONG, b"hello")]  # the pong at once; the reply is on its way
    assert connection.state is OPEN  # nothing more is read, but the reply goes out before the close
    await until(lambda: connection.state is CLOSING, what="the close frame")
    written = transport.take_frames()
    assert [opcode for opcode, _ in written] == [frames.TEXT, frames.CLOSE]
    assert json.loads(written[0][1])["id"] == 1
    assert close_code(written[1][1]) == 1002


# --- the uvicorn hook --------------------------------------------------------------------------------------


async def test_uvicorn_hands_an_upgrade_over_and_shuts_the_connection_down() -> None:
    """The hook as uvicorn (the version pyproject.toml pins) drives it: its httptools protocol parses the
    request and hands the connection over (constructor, connection_made, the head written out again,
    set_protocol); its Server.shutdown calls `shutdown()` on every member of server_state.connections and
    waits until the set is empty."""
    node = make_node()
    app = HubbubApp(node.settings)
    app.node = node
    config = uvicorn.Config(app, ws=WebSocketConnection, lifespan="off", log_config=None)
    config.load()
    server = uvicorn.Server(config)
    # What Server.startup sets: no lifespan, no listening socket.
    server.lifespan = config.lifespan_class(config)
    server.servers = []
    http = config.http_protocol_class(config=config, server_state=server.server_state, app_state={})  # type: ignore[call-arg]
    transport = FakeTransport()
    http.connection_made(transport)
    http.data_received(upgrade_request("/ws?x=1", f"Sec-WebSocket-Protocol: {protocol.SUBPROTOCOL}"))

    connection = transport.get_protocol()
    assert isinstance(connection, WebSocketConnection) and connection.state is OPEN
    registered: set[object] = set(server.server_state.connections)  # uvicorn types it with its own protocols
    assert registered == {connection}
    assert f"\r\nsec-websocket-protocol: {protocol.SUBPROTOCOL}\r\n".encode() in transport.written
    transport.take_frames()

    shutdown = asyncio.create_task(server.shutdown())
    await until(
        lambda: connection.state is CLOSING or shutdown.done(), what="uvicorn's shutdown to close the connection"
    )
    assert not shutdown.done(), shutdown.exception()
    assert close_code(transport.take_frames()[-1][1]) == 1012
    connection.data_received(close_frame(1012))
    await asyncio.wait_for(shutdown, 30)
    assert connection.state is CLOSED and not server.server_state.connections
