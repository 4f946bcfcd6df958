"""Every close code a client or the server can trigger, each limit, and what happens just past it."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import ServerFactory
from tests.support.polling import until
from tests.support.server import API_KEY, ServerProcess
from tests.support.wsclient import WAIT, Closed, RawClient, token

#: Seconds within which a close driven by a short test timeout (connect_timeout, pong_timeout, a 1 s token)
#: must come. Generous for a loaded machine, yet below the defaults (10 s connect and pong timeouts), so a
#: server that ignored the test's setting would still fail.
TIMED_CLOSE = 8.0


async def assert_closed(client: RawClient, code: int, *, push: bool = True, timeout: float = WAIT) -> None:
    closed = await client.closed(timeout)
    assert closed.code == code, f"closed with {closed.code}, expected {code}"
    if push:
        assert closed.disconnect is not None, "no disconnect push before the close"
        assert closed.disconnect["code"] == code
        assert isinstance(closed.disconnect["reason"], str) and closed.disconnect["reason"]
        assert isinstance(closed.disconnect["reconnect"], bool)


# --- 4001 unauthorized ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        {"id": 1, "op": "join", "room": "chat:x"},
        {"op": "pong"},
        "not json at all",
        "",
    ],
)
async def test_anything_but_connect_first_closes_4001(server: ServerProcess, first: object) -> None:
    client = await RawClient.open(server.ws_url)
    await client.send_raw(first if isinstance(first, str) else json.dumps(first))
    await assert_closed(client, 4001)


async def test_binary_frame_before_connect_closes_4001(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url)
    await client.send_raw(b"\x00\x01")
    await assert_closed(client, 4001)


@pytest.mark.parametrize("bad", ["garbage", token("x", ttl=-60), token("x")[:-4] + "AAAA"])
async def test_invalid_token_in_connect_closes_4001_with_reason(server: ServerProcess, bad: str) -> None:
    client = await RawClient.open(server.ws_url)
    await client.send({"id": 1, "op": "connect", "token": bad})
    await assert_closed(client, 4001)
    assert client.disconnect is not None and client.disconnect["reconnect"] is False


async def test_connect_without_any_token_closes_4001(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url)
    await client.send({"id": 1, "op": "connect"})
    await assert_closed(client, 4001)


async def test_no_connect_within_connect_timeout_closes_4001(server_factory: ServerFactory) -> None:
    srv = server_factory(connect_timeout=0.5)
    client = await RawClient.open(srv.ws_url)
    await assert_closed(client, 4001, timeout=TIMED_CLOSE)


@pytest.mark.parametrize("where", ["header", "query"])
async def test_invalid_token_on_upgrade_is_rejected_before_the_upgrade(server: ServerProcess, where: str) -> None:
    url = server.ws_url + ("?token=garbage" if where == "query" else "")
    headers = {"Authorization": "Bearer garbage"} if where == "header" else None
    with pytest.raises(InvalidStatus) as info:
        await RawClient.open(url, additional_headers=headers)
    response = info.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == 401


async def test_valid_upgrade_token_lets_connect_omit_the_token(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url, additional_headers={"Authorization": f"Bearer {token('hdr')}"})
    assert (await client.call("connect"))["ok"]["user"] == "hdr"
    await client.close()
    # A token in `connect` replaces the one from the upgrade (rule 10).
    client = await RawClient.open(server.ws_url + f"?token={token('query')}")
    assert (await client.call("connect", token=token("body")))["ok"]["user"] == "body"
    await client.close()


async def test_foreign_origin_is_rejected_and_own_origin_allowed(server_factory: ServerFactory) -> None:
    srv = server_factory(allowed_origins=["https://*.example.com"])
    with pytest.raises(InvalidStatus) as info:
        await RawClient.open(srv.ws_url, origin="https://evil.test")
    assert info.value.response.status_code == 403
    for origin in ("https://app.example.com", f"http://127.0.0.1:{srv.port}"):
        ok = await RawClient.open(srv.ws_url, origin=origin)
        assert "ok" in await ok.call("connect", token=token())
        await ok.close()


# --- 1003, 1009, 4004 ------------------------------------------------------------------------------


async def test_binary_frame_after_connect_closes_1003(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    await client.send_raw(b"binary")
    await assert_closed(client, 1003)


async def test_frame_over_the_size_limit_closes_1009_and_just_under_is_fine(server_factory: ServerFactory) -> None:
    srv = server_factory(max_frame_bytes=4096, max_publication_bytes=8192)
    client = await RawClient.connected(srv.ws_url)
    envelope = json.dumps({"id": 2, "op": "publish", "room": "chat:big", "data": ""})
    fits = json.dumps({"id": 2, "op": "publish", "room": "chat:big", "data": "x" * (4096 - len(envelope))})
    assert len(fits.encode()) == 4096
    await client.send_raw(fits)
    assert "ok" in await client.reply(2)
    await client.send_raw(fits.replace('"id": 2', '"id": 30'))  # one byte more
    await assert_closed(client, 1009, push=False)


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        '{"id": 2, "op": "explode"}',
        '{"op": "join", "room": "chat:x"}',
        '{"id": 0, "op": "leave", "room": "chat:x"}',
        '{"id": -3, "op": "leave", "room": "chat:x"}',
        '{"id": 1.5, "op": "leave", "room": "chat:x"}',
        '{"id": "7", "op": "leave", "room": "chat:x"}',
        '{"id": true, "op": "leave", "room": "chat:x"}',
        '{"id": 99999999999999999999999999, "op": "leave", "room": "chat:x"}',
        '[{"id": 2, "op": "leave"}]',
        '"just a string"',
        '{"id": 5, "op": "leave", "room": "a"}\n{"id": 5, "op": "leave", "room": "b"}',
        "\ufffd",
        '{"id": 2, "op": "leave", "room": NaN}',
        "[" * 5000 + "]" * 5000,
    ],
)
async def test_protocol_violations_close_4004(server: ServerProcess, frame: str) -> None:
    client = await RawClient.connected(server.ws_url)
    await client.ws.send(frame)
    await assert_closed(client, 4004)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"id": 2, "op": "subscribe", "room": "chat:x"}, 'unknown op "subscribe" (ops: connect, join, leave, publish'),
        ({"id": 2, "op": "publsh", "room": "chat:x"}, 'unknown op "publsh" (did you mean "publish"?)'),
        ({"id": 2, "room": "chat:x"}, "a command needs an op"),
        ({"id": 2, "op": 7}, "op must be a string"),
        ({"id": 2, "op": '\u00e9"' + "x" * 300}, 'unknown op "?\\"xxxxxxxxxxxxxxxxxxxxxx" (ops:'),
    ],
)
async def test_an_unknown_op_is_named_in_the_close(
    server: ServerProcess, command: dict[str, object], reason: str
) -> None:
    client = await RawClient.connected(server.ws_url)
    await client.send(command)
    closed = await client.closed()
    assert closed.code == 4004
    assert closed.disconnect is not None and closed.disconnect["reason"].startswith(reason)
    assert len(closed.disconnect["reason"].encode()) <= 123


async def test_bad_parameters_are_400_replies_and_keep_the_connection(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    bad_params = [
        {"op": "join", "room": "chat:x", "since": "yesterday"},
        {"op": "join", "room": "chat:x", "since": {"epoch": 1, "offset": 0}},
        {"op": "join", "room": "chat:x", "since": {"epoch": "e", "offset": -1}},
        {"op": "history", "room": "chat:x", "limit": "ten"},
        {"op": "publish", "room": "chat:x", "data": 1, "idempotency_key": ""},
        {"op": "publish", "room": "chat:x", "data": 1, "idempotency_key": "k" * 129},
        {"op": "refresh"},
        {"op": "connect", "token": token()},
    ]
    for i, params in enumerate(bad_params, start=10):
        reply = await client.call(**params)  # type: ignore[arg-type]
        assert reply["error"]["code"] == 400, (params, reply)
        assert reply["id"] == client._next_id and i
    assert "ok" in await client.call("join", room="chat:still-alive")
    await client.close()


# --- 429 and 4029 ---------------------------------------------------------------------------------


async def test_room_limit_answers_429_and_leaving_frees_a_slot(server_factory: ServerFactory) -> None:
    srv = server_factory(max_rooms_per_connection=2)
    client = await RawClient.connected(srv.ws_url)
    assert "ok" in await client.call("join", room="chat:a")
    assert "ok" in await client.call("join", room="chat:b")
    assert (await client.call("join", room="chat:c"))["error"]["code"] == 429
    await client.call("leave", room="chat:a")
    assert "ok" in await client.call("join", room="chat:c")
    await client.close()


async def test_command_flood_gets_429_then_closes_4029(server_factory: ServerFactory) -> None:
    # A token refills every 10 s: however slowly a loaded machine runs the test, no refill turns the 429
    # below into an "ok".
    srv = server_factory(command_rate=0.1, command_burst=5)
    client = await RawClient.connected(srv.ws_url)
    await client.send(*({"id": 10 + i, "op": "presence_stats", "room": "chat:x"} for i in range(5)))
    assert all(["ok" in await client.reply(10 + i) for i in range(5)])
    await client.send({"id": 20, "op": "presence_stats", "room": "chat:x"})
    assert (await client.reply(20))["error"]["code"] == 429
    await client.send(*({"id": 30 + i, "op": "presence_stats", "room": "chat:x"} for i in range(10)))
    await assert_closed(client, 4029)


async def test_a_pipelined_publish_burst_closed_4029_publishes_nothing_after_the_limit(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory(command_rate=0.1, command_burst=5)  # a token every 10 s: no refill to speak of
    client = await RawClient.connected(srv.ws_url)
    assert "ok" in await client.call("join", room="chat:flood")  # one token spent: 4 left
    await client.send(*({"id": 100 + i, "op": "publish", "room": "chat:flood", "data": i} for i in range(30)))
    replies: list[dict[str, object]] = []
    with pytest.raises(Closed) as closed:
        while True:
            message = await client.recv()
            if "id" in message:
                replies.append(message)
    assert closed.value.code == 4029, replies
    # In command order: 4 accepted, then 429 until the debt reaches the burst (4 more, or 5 if the
    # bucket refilled a fraction of a token meanwhile), then the close.
    assert [r["id"] for r in replies] == list(range(100, 100 + len(replies)))
    assert ["ok" in r for r in replies] == [True] * 4 + [False] * (len(replies) - 4)
    assert len(replies) in (8, 9)
    observer = await RawClient.connected(srv.ws_url, "observer")
    history = (await observer.call("history", room="chat:flood", limit=100))["ok"]
    assert [p["data"] for p in history["publications"]] == [0, 1, 2, 3]  # nothing behind the closing one ran
    await observer.close()


async def test_rate_limit_refills_over_time(server_factory: ServerFactory) -> None:
    srv = server_factory(command_rate=20, command_burst=2)
    client = await RawClient.connected(srv.ws_url)
    for _ in range(6):
        assert "ok" in await client.call("presence_stats", room="chat:x")
        await asyncio.sleep(0.1)
    await client.close()


# --- 4008 slow consumer ----------------------------------------------------------------------------


async def test_slow_consumer_is_closed_4008_and_others_are_unaffected(server_factory: ServerFactory) -> None:
    srv = server_factory(max_queue_bytes=65536)
    slow = await RawClient.open(srv.ws_url, max_queue=1)
    await slow.call("connect", token=token("slow"))
    await slow.call("join", room="chat:firehose")
    fast = await RawClient.connected(srv.ws_url, "fast")
    await fast.call("join", room="chat:firehose")
    payload = "x" * 2000
    received = 0

    async def read_fast() -> None:
        nonlocal received
        while received < 2000:
            if (await fast.recv()).get("push") == "pub":
                received += 1

    reader = asyncio.create_task(read_fast())
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}) as http:
        for i in range(2000):
            response = await http.post(srv.http_url + "/api/publish", json={"room": "chat:firehose", "data": payload})
            assert response.status_code == 200, i
    await asyncio.wait_for(reader, WAIT)
    assert received == 2000
    closed = await slow.closed()
    assert closed.code in (4008, 1006)  # 1006 if the server had to abort a transport that never drained
    metrics = httpx.get(srv.http_url + "/metrics").text
    assert "hubbub_slow_consumer_disconnects_total" in metrics
    assert _metric(metrics, "hubbub_slow_consumer_disconnects_total") == 1.0
    await fast.close()


async def test_slow_consumer_that_resumes_reading_sees_4008(server_factory: ServerFactory) -> None:
    srv = server_factory(max_queue_bytes=65536, command_rate=10000, command_burst=10000)
    slow = await RawClient.open(srv.ws_url, max_queue=1)
    await slow.call("connect", token=token("slow"))
    await slow.call("join", room="chat:burst")
    publisher = await RawClient.connected(srv.ws_url, "publisher")
    for batch in range(150):  # 150 frames x 25 publications x 2 KB: far beyond socket buffers
        await publisher.send(
            *(
                {"id": 1000 + batch * 25 + i, "op": "publish", "room": "chat:burst", "data": "y" * 2000}
                for i in range(25)
            )
        )
    await publisher.reply(1000 + 150 * 25 - 1)
    await assert_closed(slow, 4008)
    assert slow.disconnect is not None and slow.disconnect["reconnect"] is True
    await publisher.close()


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not found")


# --- 4009, 4010 -------------------------------------------------------------------------------------


async def test_token_expiry_without_refresh_closes_4009(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, token=token("short", ttl=1))
    await assert_closed(client, 4009, timeout=TIMED_CLOSE)
    assert client.disconnect is not None and client.disconnect["reconnect"] is True


async def test_refresh_before_expiry_keeps_the_connection(server: ServerProcess) -> None:
    # `exp` is whole seconds: a 1 s token may have only milliseconds left, too few to refresh in on a
    # loaded machine. This one has 2 to 3 s.
    issued = time.time()
    expires = int(issued + 3)
    client = await RawClient.connected(server.ws_url, token=token("short", ttl=3, now=issued))
    assert "ok" in await client.call("refresh", token=token("short", ttl=60))
    # The subject is the passing of time: the connection outlives the first token's expiry.
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.5)
    assert "ok" in await client.call("presence_stats", room="chat:x")
    await client.close()


async def test_unanswered_pings_close_4010_and_answered_pings_keep_alive(server_factory: ServerFactory) -> None:
    # A pong must reach the server within pong_timeout of its ping: 1.5 s leaves room for a test process
    # that a loaded machine did not schedule for a while (0.3 s did not), and the close still comes well
    # before the defaults' 35 s.
    srv = server_factory(ping_interval=0.5, pong_timeout=1.5)
    silent = await RawClient.connected(srv.ws_url, "silent")
    assert (await silent.recv())["push"] == "ping"
    await assert_closed(silent, 4010, timeout=TIMED_CLOSE)
    polite = await RawClient.connected(srv.ws_url, "polite")
    for _ in range(4):
        await polite.push("ping")  # waits for the next ping; `push` answers the others
        await polite.send({"op": "pong"})
    assert "ok" in await polite.call("presence_stats", room="chat:x")
    await polite.close()


# --- 1013, 4000, 4003 ---------------------------------------------------------------------------------


async def test_node_full_closes_1013_and_readyz_reports_503(server_factory: ServerFactory) -> None:
    srv = server_factory(max_connections=2)
    first = await RawClient.connected(srv.ws_url)
    assert httpx.get(srv.http_url + "/readyz").status_code == 200
    second = await RawClient.connected(srv.ws_url)
    ready = httpx.get(srv.http_url + "/readyz")
    assert ready.status_code == 503 and "capacity" in ready.json()["reason"]
    third = await RawClient.open(srv.ws_url)
    await assert_closed(third, 1013)
    await second.close()
    await until(lambda: httpx.get(srv.http_url + "/readyz").status_code == 200, what="/readyz 200 with a slot free")
    await first.close()


@pytest.mark.parametrize("code", [4000, 4003, 4011])
async def test_api_disconnect_closes_every_connection_of_the_user(server: ServerProcess, code: int) -> None:
    user = f"target-{code}"
    a = await RawClient.connected(server.ws_url, user)
    b = await RawClient.connected(server.ws_url, user)
    bystander = await RawClient.connected(server.ws_url, "bystander")
    response = server.api("POST", "/api/disconnect", json={"user": user, "code": code, "reason": "bye"})
    assert response.json() == {"disconnected": 2}
    for client in (a, b):
        await assert_closed(client, code)
        assert client.disconnect is not None and client.disconnect["reason"] == "bye"
    assert "ok" in await bystander.call("presence_stats", room="chat:x")
    await bystander.close()


async def test_client_close_1000_is_clean(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    await client.ws.close(1000)
    assert client.ws.close_code == 1000
