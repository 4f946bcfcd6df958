"""Close codes that need a real server process: refusals of the upgrade, the transport's own closes and
limits (a binary message, a frame too large, a socket that stops reading), and the closing handshake.

Every close code a session sends, and each limit of the protocol, is tested in-process, on a fake clock:
tests/inprocess/test_session_inprocess.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import ServerFactory
from tests.support.server import API_KEY, ServerProcess
from tests.support.wsclient import WAIT, RawClient, token


async def assert_closed(client: RawClient, code: int, *, push: bool = True, timeout: float = WAIT) -> None:
    closed = await client.closed(timeout)
    assert closed.code == code, f"closed with {closed.code}, expected {code}"
    if push:
        assert closed.disconnect is not None, "no disconnect push before the close"
        assert closed.disconnect["code"] == code
        assert isinstance(closed.disconnect["reason"], str) and closed.disconnect["reason"]
        assert isinstance(closed.disconnect["reconnect"], bool)


# --- the upgrade: 401, 403 -----------------------------------------------------------------------


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


# --- the transport: 1003, 1009 --------------------------------------------------------------------


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


# --- 4008: a slow consumer on a real socket ----------------------------------------------------------


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


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not found")


# --- 1000 ------------------------------------------------------------------------------------------


async def test_client_close_1000_is_clean(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    await client.ws.close(1000)
    assert client.ws.close_code == 1000
