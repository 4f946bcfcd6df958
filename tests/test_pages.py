"""What the service serves to browsers, over plain HTTP: the client library, the demo's token
endpoint and pages, the status page and its API. The pages themselves run in Chromium in
tests/test_browser.py."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from hubbub.loader import load_settings
from hubbub.preflight import warnings
from tests.conftest import ServerFactory
from tests.support.server import SECRET, TEST_NAMESPACES, ServerProcess
from tests.support.wsclient import RawClient

DEMO_NAMESPACE = {"history_size": 50, "presence": True, "join_leave": True, "client_publish": True}
DEMO_NS = {**TEST_NAMESPACES, "demo": DEMO_NAMESPACE}


def get(server: ServerProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(server.http_url + path, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("path", "media_type", "marker"),
    [
        ("/hubbub.js", "text/javascript", b"export class Client"),
        ("/hubbub.d.ts", "application/typescript", b"export class Client"),
    ],
)
def test_client_library_is_served_with_its_type_and_revalidated_by_etag(
    server: ServerProcess, path: str, media_type: str, marker: bytes
) -> None:
    first = get(server, path)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith(media_type)
    assert marker in first.content
    assert first.headers["cache-control"] == "no-cache"
    again = get(server, path, **{"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    stale = get(server, path, **{"if-none-match": '"something-else"'})
    assert stale.status_code == 200 and stale.content == first.content


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/..%2Fpages.py", "/static/../api.py", "/static/demo.html", "/static/.hidden.js"]
)
def test_static_serves_only_known_assets(server: ServerProcess, path: str) -> None:
    response = get(server, path)
    assert response.status_code == 404
    assert b"import" not in response.content


def test_static_assets_of_the_pages_are_served(server: ServerProcess) -> None:
    assets = [("demo.js", "text/javascript"), ("status.js", "text/javascript"), ("hubbub.css", "text/css")]
    for name, media_type in assets:
        response = get(server, f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media_type)


def test_demo_is_off_in_production_unless_turned_on(server: ServerProcess) -> None:
    page = get(server, "/")
    assert page.status_code == 404
    assert "demo is off" in page.json()["error"]["reason"]
    assert httpx.post(server.http_url + "/demo/token", json={"name": "x"}).status_code == 404


@pytest.fixture
def demo_server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(demo=True, namespaces=DEMO_NS, demo_token_ttl=60)


def test_demo_page_is_served_with_a_strict_content_security_policy(demo_server: ServerProcess) -> None:
    page = get(demo_server, "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b'src="/static/demo.js"' in page.content
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_a_demo_token_joins_and_publishes_in_the_demo_namespace_only(demo_server: ServerProcess) -> None:
    answer = httpx.post(demo_server.http_url + "/demo/token", json={"name": "  Ada Lovelace "})
    assert answer.status_code == 200
    body = answer.json()
    assert body["user"] == "Ada Lovelace" and body["namespace"] == "demo" and body["expires_in"] == 60
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["exp"] - time.time() == pytest.approx(60, abs=5)

    client = await RawClient.connected(demo_server.ws_url, token=body["token"])
    room = f"demo:{uuid.uuid4().hex[:8]}"
    assert "ok" in await client.call("join", room=room)
    published = await client.call("publish", room=room, data={"text": "hi"})
    assert published["ok"]["offset"] == 1
    pub = await client.push("pub")
    assert pub["info"]["info"] == {"name": "Ada Lovelace"}
    # The token gives nothing outside the demo namespace.
    assert (await client.call("join", room="chat:lobby"))["error"]["code"] == 403
    await client.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": ""}, 400),
        ({"name": "   "}, 400),
        ({"name": "x" * 33}, 400),
        ({"name": "bad\u0000name"}, 400),
        ({"name": 7}, 400),
        ({}, 400),
        ([1, 2], 400),
        ({"name": "x" * 5000}, 413),
    ],
)
def test_demo_token_rejects_bad_names_with_a_reason(demo_server: ServerProcess, body: object, code: int) -> None:
    answer = httpx.post(demo_server.http_url + "/demo/token", json=body)
    assert answer.status_code == code
    assert answer.json()["error"]["reason"]


def test_demo_token_without_a_signing_secret_is_503_with_the_reason(server_factory: ServerFactory) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    proc = server_factory(demo=True, namespaces=DEMO_NS, jwt_secret=None, jwt_public_key=public.decode())
    answer = httpx.post(proc.http_url + "/demo/token", json={"name": "ada"})
    assert answer.status_code == 503
    assert "jwt_secret" in answer.json()["error"]["reason"]


def test_check_config_warns_about_a_demo_that_cannot_work() -> None:
    settings = load_settings(overrides={"mode": "production", "demo": True, "api_key": "k" * 16})
    problems = "\n".join(str(w) for w in warnings(settings))
    assert "no jwt_secret signs demo tokens" in problems
    assert "namespace 'demo' is not configured" in problems
    fine = load_settings(
        overrides={"mode": "production", "demo": True, "jwt_secret": SECRET, "api_key": "k", "namespaces": DEMO_NS}
    )
    assert not [w for w in warnings(fine) if "demo" in str(w)]


def test_status_page_holds_no_key_in_production_and_the_dev_key_in_development(
    server: ServerProcess, server_factory: ServerFactory
) -> None:
    production = get(server, "/status")
    assert production.status_code == 200
    assert b'<meta name="hubbub-dev-api-key" content="">' in production.content
    assert b"test-api-key" not in production.content
    development = get(server_factory(mode="development", api_key=None), "/status")
    assert b'<meta name="hubbub-dev-api-key" content="hubbub-dev-api-key">' in development.content


async def test_status_api_reports_totals_rates_and_recent_disconnects(server_factory: ServerFactory) -> None:
    proc = server_factory(node_name="status-node")
    room = f"quiet:{uuid.uuid4().hex[:8]}"
    watchers = [await RawClient.connected(proc.ws_url, user=f"watcher{i}") for i in range(3)]
    for watcher in watchers:
        assert "ok" in await watcher.call("join", room=room)
    for i in range(20):
        assert proc.api("POST", "/api/publish", json={"room": room, "data": i}).status_code == 200
    for watcher in watchers:
        for _ in range(20):
            await watcher.push("pub")
    kicked = await RawClient.connected(proc.ws_url, user="mallory")
    assert proc.api("POST", "/api/disconnect", json={"user": "mallory", "reason": "spam"}).json()["disconnected"] == 1
    await kicked.closed()
    await watchers[0].close()

    deadline = time.monotonic() + 5
    while True:
        status = proc.api("GET", "/api/status").json()
        node = status["nodes"][0]
        if node["totals"]["disconnects"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["node"] == "status-node" and len(status["nodes"]) == 1
    assert node["totals"] == {"publications": 20, "deliveries": 60, "connects": 4, "disconnects": 2}
    assert node["connections"] == 2 and node["rooms"] == 1 and node["ready"] and not node["draining"]
    assert node["rates"]["publications"] > 0 and node["rates"]["deliveries"] > node["rates"]["publications"]
    assert node["disconnects"]["by_code"] == {"1000": 1, "4000": 1}
    recent = node["disconnects"]["recent"]
    assert [(r["code"], r["user"], r["reason"]) for r in recent] == [
        (1000, "watcher0", "closed by the client"),
        (4000, "mallory", "spam"),
    ]
    assert recent[0]["ts"] >= recent[1]["ts"]
    assert status["close_codes"]["4008"] == "slow consumer" and status["close_codes"]["1006"].startswith("connection")
    for watcher in watchers[1:]:
        await watcher.close()
