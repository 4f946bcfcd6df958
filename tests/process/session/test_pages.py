"""What the service serves to browsers, over plain HTTP: the client library, the demo's token
endpoint and pages, the status page and its API. The pages themselves run in Chromium in
tests/process/transport/test_browser.py."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from hubbub.loader import load_settings
from hubbub.preflight import warnings
from hubbub.refusals import OriginRefusals
from tests.conftest import ServerFactory
from tests.support.polling import until
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


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_demo_off_page_tells_a_browser_how_to_turn_the_demo_on(server_factory: ServerFactory) -> None:
    proc = server_factory(demo_namespace="lobby")
    page = get(proc, "/", accept=BROWSER_ACCEPT)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["vary"] == "Accept"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    text = page.text
    assert "<script" not in text and "style=" not in text
    for needed in ("demo: true", "HUBBUB_DEMO=true", "client_publish", "presence", "history_size", "jwt_secret"):
        assert needed in text, needed
    assert "<code>lobby</code>" in text and "{namespace}" not in text
    assert 'href="/status"' in text and "docs/configuration.md" in text and "docs/browser-client.md" in text
    # API clients (and the JSON they have always had) are unaffected.
    for accept in ("application/json", "*/*"):
        answer = get(proc, "/", accept=accept)
        assert answer.status_code == 404 and "demo is off" in answer.json()["error"]["reason"]


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
        ({"name": "ada", "nmae": "ada"}, 400),
        ({"name": "x" * 5000}, 413),
    ],
)
def test_demo_token_rejects_bad_names_with_a_reason(demo_server: ServerProcess, body: object, code: int) -> None:
    answer = httpx.post(demo_server.http_url + "/demo/token", json=body)
    assert answer.status_code == code
    assert answer.json()["error"]["reason"]


def test_demo_tokens_are_rate_limited_per_address_with_retry_after(server_factory: ServerFactory) -> None:
    proc = server_factory(demo=True, namespaces=DEMO_NS, demo_tokens_per_minute=3)
    url = proc.http_url + "/demo/token"
    answers = [httpx.post(url, json={"name": f"ada{n}"}) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert "demo_tokens_per_minute" in refused.json()["error"]["reason"]
    # Another client address (uvicorn trusts X-Forwarded-For from 127.0.0.1, as from a local proxy).
    other = httpx.post(url, json={"name": "bob"}, headers={"x-forwarded-for": "192.0.2.7"})
    assert other.status_code == 200 and other.json()["user"] == "bob"


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

    async def settled() -> dict[str, Any]:
        """The status once both disconnects are counted (the server learns of the second one on its own)."""
        status: dict[str, Any] = (await asyncio.to_thread(proc.api, "GET", "/api/status")).json()
        node = status["nodes"][0]
        assert node["totals"] == {"publications": 20, "deliveries": 60, "connects": 4, "disconnects": 2}, node
        assert node["connections"] == 2, node
        return status

    status = await until(settled, what="the node's totals and connections after the two disconnects")
    node = status["nodes"][0]
    assert status["node"] == "status-node" and len(status["nodes"]) == 1
    assert node["rooms"] == 1 and node["ready"] and not node["draining"]
    # Rates cover the last 10 s, and the publications were made a moment ago.
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


# --- the client library from other origins (CORS) ------------------------------------------------

APP_ORIGIN = "http://localhost:3000"


@pytest.fixture
def cors_server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(allowed_origins=["https://*.example.com", APP_ORIGIN])


@pytest.mark.parametrize("path", ["/hubbub.js", "/hubbub.d.ts"])
def test_client_library_grants_cors_to_allowed_origins_and_keeps_it_on_304s(
    cors_server: ServerProcess, path: str
) -> None:
    for origin in (APP_ORIGIN, "https://app.example.com"):
        first = get(cors_server, path, origin=origin)
        assert first.status_code == 200
        assert first.headers["access-control-allow-origin"] == origin
        assert first.headers["vary"] == "Origin"
        again = get(cors_server, path, origin=origin, **{"if-none-match": first.headers["etag"]})
        assert again.status_code == 304
        assert again.headers["access-control-allow-origin"] == origin
        assert again.headers["vary"] == "Origin"
    # No Origin (a non-browser client, or a same-origin GET): no grant, but the answer still varies by Origin.
    plain = get(cors_server, path)
    assert "access-control-allow-origin" not in plain.headers and plain.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in plain.headers


def test_client_library_grants_nothing_to_other_origins_and_logs_them_once(cors_server: ServerProcess) -> None:
    for _ in range(5):
        refused = get(cors_server, "/hubbub.js", origin="http://localhost:3001")
        assert refused.status_code == 200  # the file is public; the browser withholds it without the grant
        assert "access-control-allow-origin" not in refused.headers and refused.headers["vary"] == "Origin"
    get(cors_server, "/hubbub.js", origin="https://example.com.evil.test")
    log = cors_server.wait_for_log('"https://example.com.evil.test"')
    lines = [line for line in log.splitlines() if "localhost:3001" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "/hubbub.js" in lines[0]
    expected = '["https://*.example.com", "http://localhost:3000", "http://localhost:3001"]'
    assert f"""add "http://localhost:3001" to allowed_origins (HUBBUB_ALLOWED_ORIGINS='{expected}')""" in lines[0]


def test_client_library_answers_the_cors_preflight_for_allowed_origins_only(cors_server: ServerProcess) -> None:
    asked = {"origin": APP_ORIGIN, "access-control-request-method": "GET"}
    answer = httpx.options(
        cors_server.http_url + "/hubbub.js", headers={**asked, "access-control-request-headers": "authorization"}
    )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == APP_ORIGIN
    assert answer.headers["access-control-allow-methods"] == "GET, HEAD"
    assert answer.headers["access-control-allow-headers"] == "authorization"
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "Origin" in answer.headers["vary"]
    other = httpx.options(cors_server.http_url + "/hubbub.d.ts", headers={**asked, "origin": "https://evil.test"})
    assert other.status_code == 204 and not any(h.startswith("access-control-") for h in other.headers)
    assert httpx.options(cors_server.http_url + "/hubbub.txt", headers=asked).status_code in (404, 405)


def test_development_mode_grants_every_origin_the_client_library(server_factory: ServerFactory) -> None:
    dev = server_factory(mode="development")
    answer = get(dev, "/hubbub.js", origin="http://localhost:5173")
    assert answer.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "Pages from any origin may connect" in dev.log()


async def test_a_refused_websocket_origin_is_logged_with_the_setting_to_change_and_rate_limited(
    cors_server: ServerProcess, server_factory: ServerFactory
) -> None:
    from websockets.exceptions import InvalidStatus

    for _ in range(20):
        with pytest.raises(InvalidStatus) as refused:
            await RawClient.open(cors_server.ws_url, origin="http://127.0.0.1:3000")
        assert refused.value.response.status_code == 403
        assert b"allowed_origins" in refused.value.response.body
    with pytest.raises(InvalidStatus):
        await RawClient.open(cors_server.ws_url, origin="null")

    def logged() -> str:
        log = cors_server.log()
        return log if 'origin "null"' in log else ""

    log = await until(logged, what='the refusal of origin "null" in the server log')
    lines = [line for line in log.splitlines() if "refused a WebSocket" in line]
    assert len(lines) == 2, lines  # 20 refusals of one origin: one line; the next origin's line counts them
    assert '"http://127.0.0.1:3000"' in lines[0] and "WARNING" in lines[0]
    assert 'add "http://127.0.0.1:3000" to allowed_origins' in lines[0]
    assert "19 more refusal(s) not logged" in lines[1] and "file:// page or a sandboxed frame" in lines[1]
    # Development mode lets the same page connect.
    dev = server_factory(mode="development", jwt_secret=SECRET)
    client = await RawClient.connected(dev.ws_url, open_kwargs={"origin": "http://127.0.0.1:3000"})
    await client.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refused_origins_are_logged_once_per_origin_and_a_few_origins_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    refusals = OriginRefusals(interval=60, per_interval=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="hubbub.origins"):
        assert refusals.refused("http://a.test", "a WebSocket", ())
        assert not any(refusals.refused("http://a.test", "a WebSocket", ()) for _ in range(100))
        assert refusals.refused("http://b.test", "a WebSocket", ())
        assert refusals.refused("http://c.test", "a WebSocket", ())
        # A flood of made-up origins: no more lines this interval, whatever the origin.
        assert not any(refusals.refused(f"http://{i}.test", "a WebSocket", ()) for i in range(1000))
        assert len(caplog.records) == 3 and refusals.suppressed == 1000
        clock.now += 61
        assert refusals.refused("http://a.test", "/hubbub.js", ("https://app.example.com",))
    last = caplog.records[-1].getMessage()
    assert last.startswith('refused /hubbub.js from origin "http://a.test": add "http://a.test" to allowed_origins')
    assert """HUBBUB_ALLOWED_ORIGINS='["https://app.example.com", "http://a.test"]'""" in last
    assert "(100 more refusal(s) not logged since the previous warning)" in caplog.records[1].getMessage()
    assert "(1000 more refusal(s) not logged since the previous warning)" in last
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_the_memory_of_refused_origins_is_bounded() -> None:
    refusals = OriginRefusals(per_interval=1000, memory=4, clock=FakeClock())
    assert all(refusals.refused(f"http://{i}.test", "a WebSocket", ()) for i in range(10))
    assert list(refusals._logged) == [f"http://{i}.test" for i in range(6, 10)]
    assert not refusals.refused("http://9.test", "a WebSocket", ())


@pytest.mark.parametrize(
    ("origin", "shown", "advice"),
    [
        ("http://localhost:3000", '"http://localhost:3000"', 'add "http://localhost:3000" to allowed_origins'),
        ("http://[::1]:8080", '"http://[::1]:8080"', 'add "http://[::1]:8080" to allowed_origins'),
        ("null", '"null"', "serve it over http(s)"),
        ("http://x.test'; rm -rf /", '"http://x.test\'; rm -rf /"', "not a browser origin"),
        ("http://a\x1b[31m.test", '"http://a\\u001b[31m.test"', "not a browser origin"),
        ("http://" + "a" * 500, '"http://' + "a" * 113 + '\\u2026"', "add "),
    ],
)
def test_a_refused_origin_is_quoted_safely_and_advice_is_given_only_for_real_origins(
    origin: str, shown: str, advice: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hubbub.origins"):
        OriginRefusals().refused(origin, "a WebSocket", ())
    message = caplog.records[0].getMessage()
    assert f"from origin {shown}:" in message and advice in message
    assert "\x1b" not in message and "\n" not in message
