"""The HTTP API for application backends and the operational endpoints (protocol §8)."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
import websockets

from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient, token


def room(ns: str = "chat") -> str:
    return f"{ns}:{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/publish"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/history/chat:x"),
        ("GET", "/api/presence/chat:x"),
        ("GET", "/api/presence_stats/chat:x"),
        ("POST", "/api/disconnect"),
        ("POST", "/api/shed"),
        ("GET", "/api/info"),
        ("GET", "/api/status"),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key", "test-api-key-but-longer"])
def test_api_requires_the_api_key(server: ServerProcess, method: str, path: str, key: str | None) -> None:
    response = server.api(method, path, key=key, json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401


def test_publish_returns_epoch_and_offset_and_is_readable_in_history(server: ServerProcess) -> None:
    name = room()
    first = server.api("POST", "/api/publish", json={"room": name, "data": {"a": 1}})
    assert first.status_code == 200
    assert first.json()["offset"] == 1 and first.json()["epoch"]
    server.api("POST", "/api/publish", json={"room": name, "data": {"a": 2}})
    history = server.api("GET", f"/api/history/{name}").json()
    assert history["offset"] == 2
    assert [p["data"] for p in history["publications"]] == [{"a": 1}, {"a": 2}]
    since = server.api("GET", f"/api/history/{name}?epoch={history['epoch']}&since=1&limit=10").json()
    assert [p["offset"] for p in since["publications"]] == [2]
    stale = server.api("GET", f"/api/history/{name}?epoch=other&since=0").json()
    assert stale["publications"] == [] and stale["epoch"] == history["epoch"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"data": 1}, 400),
        ({"room": "chat:x"}, 400),
        ({"room": "bad room", "data": 1}, 400),
        ({"room": "nosuch:x", "data": 1}, 404),
        ({"room": "chat:x", "data": 1, "idempotency_key": 5}, 400),
        ({"room": "chat:x", "data": "x" * 70_000}, 413),
    ],
)
def test_publish_errors_have_the_matching_status(server: ServerProcess, body: dict[str, object], code: int) -> None:
    response = server.api("POST", "/api/publish", json=body)
    assert response.status_code == code
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"", b"\xff\xfe"])
def test_malformed_bodies_are_400(server: ServerProcess, raw: bytes) -> None:
    assert server.api("POST", "/api/publish", content=raw).status_code == 400


def test_oversized_body_is_413_without_reading_it_all(server: ServerProcess) -> None:
    response = server.api("POST", "/api/publish", content=b"{" + b" " * 2_000_000 + b"}")
    assert response.status_code == 413


def test_broadcast_publishes_to_each_room_and_reports_per_room_errors(server: ServerProcess) -> None:
    rooms = [room(), room(), "nosuch:x", "bad room"]
    results = server.api("POST", "/api/broadcast", json={"rooms": rooms, "data": "hi"}).json()["results"]
    assert results[rooms[0]]["offset"] == 1 and results[rooms[1]]["offset"] == 1
    assert results["nosuch:x"]["error"]["code"] == 404
    assert results["bad room"]["error"]["code"] == 400
    assert server.api("POST", "/api/broadcast", json={"rooms": [], "data": 1}).status_code == 400


def test_broadcast_idempotency_key_applies_per_room(server: ServerProcess) -> None:
    rooms = [room(), room()]
    body = {"rooms": rooms, "data": 1, "idempotency_key": "b1"}
    first = server.api("POST", "/api/broadcast", json=body).json()
    second = server.api("POST", "/api/broadcast", json=body).json()
    assert first == second
    assert all(len(server.api("GET", f"/api/history/{r}").json()["publications"]) == 1 for r in rooms)


async def test_presence_endpoints_show_connected_members(server: ServerProcess) -> None:
    name = room()
    a = await RawClient.connected(server.ws_url, "alice")
    b = await RawClient.connected(server.ws_url, "bob")
    await a.call("join", room=name)
    await b.call("join", room=name)
    async with httpx.AsyncClient(headers={"authorization": "Bearer test-api-key"}) as http:
        presence = (await http.get(f"{server.http_url}/api/presence/{name}")).json()
        stats = (await http.get(f"{server.http_url}/api/presence_stats/{name}")).json()
        disabled = await http.get(f"{server.http_url}/api/presence/quiet:x")
    assert sorted(e["user"] for e in presence["clients"].values()) == ["alice", "bob"]
    assert stats == {"clients": 2, "users": 2}
    assert disabled.status_code == 403
    await a.close()
    await b.close()


def test_disconnect_validates_user_and_code(server: ServerProcess) -> None:
    assert server.api("POST", "/api/disconnect", json={"user": "nobody"}).json() == {"disconnected": 0}
    assert server.api("POST", "/api/disconnect", json={}).status_code == 400
    assert server.api("POST", "/api/disconnect", json={"user": "x", "code": 1000}).status_code == 400
    assert server.api("POST", "/api/disconnect", json={"user": "x", "code": 4999}).status_code == 400
    assert server.api("POST", "/api/disconnect", json={"user": "x", "reason": "r" * 200}).status_code == 400


def test_info_lists_this_node_with_counts(server: ServerProcess) -> None:
    nodes = server.api("GET", "/api/info").json()["nodes"]
    assert len(nodes) == 1
    node = nodes[0]
    assert {"name", "connections", "rooms", "draining", "uptime"} <= node.keys()
    assert node["draining"] is False


def test_health_ready_and_metrics_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(server.http_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.http_url + "/readyz").status_code == 200
    metrics = httpx.get(server.http_url + "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert any(line.startswith("hubbub_connections") for line in metrics.text.splitlines())


def test_unknown_paths_are_404(server: ServerProcess) -> None:
    assert httpx.get(server.http_url + "/nope").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field", "suggestion"),
    [
        ("/api/publish", {"room": "chat:x", "data": 1, "idempotencykey": "k1"}, "idempotencykey", "idempotency_key"),
        ("/api/publish", {"room": "chat:x", "data": 1, "rooms": ["chat:y"]}, "rooms", None),
        (
            "/api/broadcast",
            {"rooms": ["chat:x"], "data": 1, "idempotency-key": "k"},
            "idempotency-key",
            "idempotency_key",
        ),
        ("/api/disconnect", {"user": "alice", "reasons": "bye"}, "reasons", "reason"),
    ],
)
def test_an_unknown_body_field_is_400_naming_it(
    server: ServerProcess, path: str, body: dict[str, object], field: str, suggestion: str | None
) -> None:
    response = server.api("POST", path, json=body)
    assert response.status_code == 400
    reason = response.json()["error"]["reason"]
    assert reason.startswith(f"unknown field `{field}`")
    if suggestion:
        assert f"did you mean `{suggestion}`?" in reason


def test_a_retry_with_a_misspelled_idempotency_key_cannot_duplicate(server: ServerProcess) -> None:
    name = room()
    body = {"room": name, "data": {"text": "once"}, "idempotencykey": "order-17"}
    assert [server.api("POST", "/api/publish", json=body).status_code for _ in range(2)] == [400, 400]
    assert server.api("GET", f"/api/history/{name}").json()["publications"] == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("since=0", "`since` and `epoch` go together"),
        ("epoch=abc", "`since` and `epoch` go together"),
        ("since=x&epoch=abc", "`since` must be a non-negative integer"),
        ("limt=5", "unknown query parameter `limt`; did you mean `limit`?"),
        ("limit=-1", "`limit` must be a non-negative integer"),
    ],
)
def test_history_queries_that_would_be_misread_are_400(server: ServerProcess, query: str, reason: str) -> None:
    response = server.api("GET", f"/api/history/{room()}?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["reason"].startswith(reason)


def test_presence_calls_take_no_query_parameters(server: ServerProcess) -> None:
    for call in ("presence", "presence_stats"):
        response = server.api("GET", f"/api/{call}/{room()}?user=alice")
        assert response.status_code == 400
        assert "unknown query parameter `user`" in response.json()["error"]["reason"]


#: A JSON number written with a fraction of zero (`25.0`): a client decoding into an integer type fails on it.
WHOLE_FLOAT = re.compile(r'(?<![\w."])-?\d+\.0+(?:[eE][+-]?\d+)?(?=[,}\]\s]|$)')


async def test_whole_quantities_go_out_without_a_fraction(server: ServerProcess) -> None:
    """Every default duration is whole; on the wire it is `25`, not `25.0`, in replies and API answers."""
    name = room()
    texts: list[str] = []
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect", "token": token("alice")}))
        connected = str(await ws.recv())
        assert '"ping_interval":25,' in connected
        texts.append(connected)
        await ws.send(json.dumps({"id": 2, "op": "join", "room": name}))
        texts.append(str(await ws.recv()))
        await ws.send(json.dumps({"id": 3, "op": "publish", "room": name, "data": {"n": 1.5, "m": 2}}))
        texts += [str(await ws.recv()), str(await ws.recv())]
        await ws.send(json.dumps({"id": 4, "op": "presence_stats", "room": name}))
        texts.append(str(await ws.recv()))
        texts += [
            server.api("POST", "/api/publish", json={"room": name, "data": 1}).text,
            server.api("GET", f"/api/history/{name}").text,
            server.api("GET", f"/api/presence_stats/{name}").text,
            server.api("GET", "/api/info").text,
            server.api("GET", "/api/status").text,
        ]
    for text in texts:
        assert not WHOLE_FLOAT.search(text), text
    assert WHOLE_FLOAT.search('{"a":25.0}') and not WHOLE_FLOAT.search('{"a":25.5,"b":"25.0"}')
