"""Cookie affinity of the Ingress the operator renders, through a real nginx in front of two real hubbub
processes (the Service's endpoints; with the embedded broker each is independent, which is all affinity
needs).

No Ingress controller runs here: tests/support/ingress.py turns the Ingress from `plan()` into nginx config
that reproduces ingress-nginx's persistent cookie affinity, and refuses annotations it does not emulate. The
API server's acceptance of the same objects is tested in tests/kubernetes/test_operator_crd.py.
"""

from __future__ import annotations

import email.message
import http.client
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from hubbub_operator import kinds
from hubbub_operator.plan import plan
from tests.support.ingress import (
    PREFIX,
    IngressNginx,
    IngressRoute,
    NotEmulated,
    cookie_value,
    set_cookie,
    understand,
)
from tests.support.nginx import Nginx
from tests.support.polling import until
from tests.support.server import API_KEY, ServerProcess, server_config
from tests.support.wsclient import RawClient, token

ROOT = Path(__file__).resolve().parents[3]
COOKIE = "HUBBUB_AFFINITY"


# -- the objects, from the operator's plan ------------------------------------------------------------------


def realtime_service(exposure: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "realtimeservice-minimal.yaml").read_text())
    obj["metadata"].update(namespace="default", uid="00000000-0000-4000-8000-000000000001", generation=1)
    obj["spec"]["exposure"] = exposure
    return obj


def planned(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    p = plan(obj, available_kinds=kinds.OPTIONAL, redis_password="r" * 20, api_key="a" * 20)
    assert not p.problems, p.problems
    found = [c for c in p.children if c["kind"] == kind]
    assert len(found) == 1, [c["kind"] for c in p.children]
    return found[0]


def ingress(annotations: dict[str, str] | None = None, **section: Any) -> dict[str, Any]:
    """The Ingress the operator renders for a cookie-affine RealtimeService (`annotations`: the spec's own)."""
    if annotations:
        section["annotations"] = annotations
    return planned(realtime_service({"sessionAffinity": "Cookie", "ingress": section}), "Ingress")


# -- pure: what the emulation understands -----------------------------------------------------------------


def test_the_operators_ingress_is_understood_in_full() -> None:
    route = understand(ingress())
    assert route.read_timeout == route.send_timeout == 3600
    assert route.affinity is not None
    assert (route.affinity.cookie, route.affinity.path, route.affinity.max_age) == (COOKIE, "/", 172800)
    assert route.affinity.change_on_failure and route.affinity.samesite == "Lax"
    assert route.backend == "default-chat-http"


@pytest.mark.parametrize(
    ("annotations", "complaint"),
    [
        ({PREFIX + "upstream-hash-by": "$remote_addr"}, "annotations not emulated: " + PREFIX + "upstream-hash-by"),
        ({"example.com/owner": "team"}, "annotations not emulated: example.com/owner"),
        ({PREFIX + "affinity-mode": "balanced"}, "affinity-mode 'balanced' is not emulated"),
        ({PREFIX + "session-cookie-max-age": "two days"}, "must be a number of seconds"),
        ({PREFIX + "proxy-read-timeout": "1h"}, "must be a whole number of seconds"),
    ],
)
def test_an_annotation_the_emulation_does_not_reproduce_fails_loudly(
    annotations: dict[str, str], complaint: str
) -> None:
    with pytest.raises(NotEmulated, match=re.escape(complaint)):
        understand(ingress(annotations))


def test_tls_and_expires_are_refused_not_silently_dropped() -> None:
    tls = ingress(host="chat.example.com", tls={"secretName": "chat-tls"})
    with pytest.raises(NotEmulated, match="TLS termination is not emulated"):
        understand(tls)
    with pytest.raises(NotEmulated, match="session-cookie-expires"):
        understand(ingress({PREFIX + "session-cookie-expires": "172800"}))


def test_the_set_cookie_is_ingress_nginx_s() -> None:
    route = understand(ingress())
    value = cookie_value(route, 8080)
    assert re.fullmatch(r"[0-9a-f]{32}\|[0-9a-f]{32}", value)
    assert set_cookie(route, 8080) == f"{COOKIE}={value}; Max-Age=172800; Path=/; HttpOnly; SameSite=Lax"
    assert cookie_value(route, 8080) != cookie_value(route, 8081)


_DURATION = re.compile(r"([0-9]{1,5})(h|m|s|ms)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def gateway_seconds(duration: str) -> float:
    """A Gateway API Duration (GEP-2257: `1h30m`, `48h`, `500ms`) in seconds."""
    assert re.fullmatch(r"([0-9]{1,5}(h|m|s|ms)){1,4}", duration), duration
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(duration))


def test_the_http_route_and_the_ingress_pin_clients_alike() -> None:
    """A user switching between exposure.ingress and exposure.gateway keeps the cookie name and lifetime, so
    clients' cookies stay meaningful and last as long."""
    route = planned(
        realtime_service({"sessionAffinity": "Cookie", "gateway": {"parentRefs": [{"name": "gw"}]}}), "HTTPRoute"
    )
    persistence = route["spec"]["rules"][0]["sessionPersistence"]
    affinity = understand(ingress()).affinity
    assert affinity is not None
    assert persistence["type"] == "Cookie"
    assert persistence["sessionName"] == affinity.cookie
    assert gateway_seconds(persistence["absoluteTimeout"]) == affinity.max_age
    # Permanent: a cookie with a lifetime (Max-Age), not a session cookie a browser drops on exit.
    assert persistence["cookieConfig"]["lifetimeType"] == "Permanent"
    assert "idleTimeout" not in persistence  # ingress-nginx has no idle timeout for the cookie


@pytest.mark.parametrize(
    "section", [{}, {"host": "chat.example.com"}, {"path": "/chat"}, {"host": "chat.example.com", "path": "/c"}]
)
def test_the_nginx_config_passes_nginx_t(tmp_path: Path, section: dict[str, Any]) -> None:
    nginx = Nginx(tmp_path, [1, 2], routing=IngressNginx(understand(ingress(None, **section))))
    (tmp_path / "tmp").mkdir()
    nginx.config_path.write_text(nginx.config_text())
    nginx.check_config()


# -- the data plane ------------------------------------------------------------------------------------------


@dataclass
class Pod:
    """A hubbub process standing in for one pod behind the Service."""

    name: str
    proc: ServerProcess

    @property
    def port(self) -> int:
        return self.proc.port

    async def connections(self) -> int:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            reply = await http.get(f"{self.proc.http_url}/api/info", headers={"authorization": f"Bearer {API_KEY}"})
            reply.raise_for_status()
            (own,) = [n for n in reply.json()["nodes"] if n["name"] == self.name]
            count: int = own["connections"]
            return count


@pytest.fixture(scope="module")
def pod_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Pod]]:
    started: list[Pod] = []
    try:
        for name in ("pod-a", "pod-b"):
            workdir = tmp_path_factory.mktemp(name)
            started.append(Pod(name, ServerProcess(workdir, server_config(node_name=name)).start()))
        yield started
    finally:
        for pod in started:
            pod.proc.kill()


@pytest.fixture
async def pods(pod_set: list[Pod]) -> list[Pod]:
    """Both pods up (a test before may have killed one) and holding no session."""
    for pod in pod_set:
        if not pod.proc.running():
            pod.proc.start()
    await idle(pod_set)
    return pod_set


class Served:
    """nginx serving one Ingress in front of the pods."""

    def __init__(self, tmp_path: Path, obj: dict[str, Any], pods: list[Pod]) -> None:
        self.route: IngressRoute = understand(obj)
        self.pods = pods
        self.nginx = Nginx(tmp_path / "nginx", [p.port for p in pods], routing=IngressNginx(self.route))


@pytest.fixture
async def served(tmp_path: Path, pods: list[Pod]) -> AsyncIterator[Served]:
    s = Served(tmp_path, ingress(), pods)
    s.nginx.start()
    try:
        yield s
    finally:
        s.nginx.stop()


class Browser:
    """A client that keeps cookies like a browser: one jar for HTTP requests and WebSocket handshakes."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx
        self.http = httpx.AsyncClient(trust_env=False, timeout=10)
        self.set_cookies: list[str] = []

    @property
    def jar(self) -> CookieJar:
        return self.http.cookies.jar

    async def aclose(self) -> None:
        await self.http.aclose()

    async def node(self, path: str = "/api/status") -> str:
        """Which pod answered a plain GET."""
        reply = await self.http.get(self.nginx.http_url + path, headers={"authorization": f"Bearer {API_KEY}"})
        reply.raise_for_status()
        self.set_cookies += reply.headers.get_list("set-cookie")
        node: str = reply.json()["node"]
        return node

    async def websocket(self) -> RawClient:
        """A connected hubbub session through nginx, the jar's cookies on the handshake, its Set-Cookie kept."""
        request = urllib.request.Request(self.nginx.http_url + "/ws")
        self.jar.add_cookie_header(request)
        headers = {"Cookie": c} if (c := request.get_header("Cookie")) else {}
        client = await RawClient.connected(
            self.nginx.ws_url, open_kwargs={"additional_headers": headers, "proxy": None}, token=token("alice")
        )
        response = client.ws.response
        assert response is not None
        found = response.headers.get_all("Set-Cookie")
        self.set_cookies += found
        message = email.message.Message()
        for value in found:
            message["Set-Cookie"] = value
        # http.cookiejar reads a response only through info(); a websockets handshake is not an HTTPResponse.
        self.jar.extract_cookies(cast("http.client.HTTPResponse", _Response(message)), request)
        return client

    def cookie(self, name: str = COOKIE) -> str | None:
        values = [c.value for c in self.jar if c.name == name]
        return values[0] if values else None


@dataclass
class _Response:
    """What http.cookiejar reads from a response: its headers, through info()."""

    message: email.message.Message

    def info(self) -> email.message.Message:
        return self.message


@pytest.fixture
async def browsers(served: Served) -> AsyncIterator[list[Browser]]:
    made: list[Browser] = []
    yield made
    for b in made:
        await b.aclose()


async def holder(pods: list[Pod]) -> Pod:
    """The one pod holding the (single) open WebSocket session, once the pods' counts show it."""

    async def check() -> Pod:
        counts = [await p.connections() for p in pods]
        assert sorted(counts) == [0] * (len(pods) - 1) + [1], dict(zip([p.name for p in pods], counts, strict=True))
        return pods[counts.index(1)]

    return await until(check, what="one pod holding the session")


async def idle(pods: list[Pod]) -> None:
    async def check() -> bool:
        return all([await p.connections() == 0 for p in pods])

    await until(check, what="no session left on any pod")


async def reconnects(browser: Browser, pods: list[Pod], times: int) -> list[str]:
    """Where `times` WebSocket sessions, one after another, landed."""
    landed: list[str] = []
    for _ in range(times):
        client = await browser.websocket()
        landed.append((await holder(pods)).name)
        await client.close()
        await idle(pods)
    return landed


async def test_a_client_keeping_its_cookie_lands_on_the_same_pod_on_every_reconnect(
    served: Served, browsers: list[Browser]
) -> None:
    browser = Browser(served.nginx)
    browsers.append(browser)
    first = await browser.node()
    assert browser.cookie() is not None, browser.set_cookies
    assert await reconnects(browser, served.pods, 6) == [first] * 6
    assert [await browser.node() for _ in range(5)] == [first] * 5
    # Pinned: nothing after the first response re-sets the cookie.
    assert len(browser.set_cookies) == 1, browser.set_cookies


async def test_clients_without_the_cookie_spread_over_both_pods(served: Served, browsers: list[Browser]) -> None:
    landed: dict[str, int] = {}
    for _ in range(20):
        browser = Browser(served.nginx)
        browsers.append(browser)
        node = await browser.node()
        landed[node] = landed.get(node, 0) + 1
        # Each new client is pinned to where it landed.
        (pod,) = [p for p in served.pods if p.name == node]
        assert browser.cookie() == cookie_value(served.route, pod.port)
    assert set(landed) == {"pod-a", "pod-b"}, landed


async def test_a_websocket_handshake_without_the_cookie_gets_one_pinning_it(
    served: Served, browsers: list[Browser]
) -> None:
    browser = Browser(served.nginx)
    browsers.append(browser)
    client = await browser.websocket()
    pod = await holder(served.pods)
    assert browser.set_cookies == [set_cookie(served.route, pod.port)]
    await client.close()
    await idle(served.pods)
    assert await browser.node() == pod.name


def attributes(header: str) -> dict[str, str]:
    name_value, *rest = [part.strip() for part in header.split(";")]
    name, _, value = name_value.partition("=")
    attrs = {"name": name, "value": value}
    for part in rest:
        key, _, val = part.partition("=")
        attrs[key.lower()] = val
    return attrs


async def test_the_cookie_carries_the_ingress_annotations(served: Served, browsers: list[Browser]) -> None:
    browser = Browser(served.nginx)
    browsers.append(browser)
    await browser.node()
    (header,) = browser.set_cookies
    notes = planned(realtime_service({"sessionAffinity": "Cookie", "ingress": {}}), "Ingress")["metadata"][
        "annotations"
    ]
    attrs = attributes(header)
    assert attrs["name"] == notes[PREFIX + "session-cookie-name"] == COOKIE
    assert attrs["path"] == notes[PREFIX + "session-cookie-path"]
    assert attrs["max-age"] == notes[PREFIX + "session-cookie-max-age"]
    assert attrs["samesite"] == notes[PREFIX + "session-cookie-samesite"]
    assert "httponly" in attrs and "secure" not in attrs
    (cookie,) = list(browser.jar)
    assert cookie.expires is not None and cookie.path == "/"


async def test_cookie_settings_from_the_spec_are_what_clients_get(tmp_path: Path, pods: list[Pod]) -> None:
    """The spec's annotations override the operator's: another name, a shorter life and the WebSocket path only.
    Requests outside that path carry no cookie, so they are balanced; WebSocket reconnects stay pinned."""
    obj = ingress(
        {
            PREFIX + "session-cookie-name": "chat_route",
            PREFIX + "session-cookie-max-age": "600",
            PREFIX + "session-cookie-path": "/ws",
        }
    )
    s = Served(tmp_path, obj, pods)
    s.nginx.start()
    browser = Browser(s.nginx)
    try:
        client = await browser.websocket()
        pod = await holder(pods)
        await client.close()
        await idle(pods)
        (header,) = browser.set_cookies
        attrs = attributes(header)
        assert (attrs["name"], attrs["max-age"], attrs["path"]) == ("chat_route", "600", "/ws")
        assert browser.cookie("chat_route") is not None and browser.cookie(COOKIE) is None
        assert await reconnects(browser, pods, 3) == [pod.name] * 3
        # /api is outside the cookie's path: the jar does not send it there, and nginx balances.
        seen = {await browser.node() for _ in range(20)}
        assert seen == {"pod-a", "pod-b"}
    finally:
        await browser.aclose()
        s.nginx.stop()


async def test_when_the_pinned_pod_dies_the_client_is_re_pinned_to_a_live_one(
    served: Served, browsers: list[Browser]
) -> None:
    """ingress-nginx with session-cookie-change-on-failure: the dead endpoint refuses, the request is retried on
    another, and the response carries a cookie for that one."""
    browser = Browser(served.nginx)
    browsers.append(browser)
    first = await browser.node()
    dead = next(p for p in served.pods if p.name == first)
    live = next(p for p in served.pods if p.name != first)
    dead.proc.kill()
    # Still in the endpoints (the kubelet has not noticed yet): nginx's retry reaches the live pod.
    assert await reconnects(browser, [live], 1) == [live.name]
    assert browser.cookie() == cookie_value(served.route, live.port)
    assert len(browser.set_cookies) == 2, browser.set_cookies
    # The dead pod comes back: the client stays where it was re-pinned (persistent affinity).
    dead.proc.start()
    assert await reconnects(browser, served.pods, 3) == [live.name] * 3
    assert len(browser.set_cookies) == 2, browser.set_cookies


async def test_a_pod_leaving_the_endpoints_re_pins_its_clients(served: Served, browsers: list[Browser]) -> None:
    """A pod drained and removed from the Service's endpoints: its cookie names no endpoint any more, so the
    client is balanced like a new one and pinned again (ingress-nginx does so whatever change-on-failure says)."""
    browser = Browser(served.nginx)
    browsers.append(browser)
    first = await browser.node()
    gone = next(p for p in served.pods if p.name == first)
    live = next(p for p in served.pods if p.name != first)
    served.nginx.reload([live.port])
    assert await reconnects(browser, served.pods, 2) == [live.name] * 2
    assert browser.cookie() == cookie_value(served.route, live.port)
    # Back in the endpoints (it kept running): the client stays where it was re-pinned (persistent affinity).
    served.nginx.reload([p.port for p in served.pods])
    assert gone.proc.running()
    assert [await browser.node() for _ in range(3)] == [live.name] * 3


async def test_without_change_on_failure_a_dead_pinned_pod_fails_the_request(tmp_path: Path, pods: list[Pod]) -> None:
    s = Served(tmp_path, ingress({PREFIX + "session-cookie-change-on-failure": "false"}), pods)
    s.nginx.start()
    browser = Browser(s.nginx)
    try:
        first = await browser.node()
        dead = next(p for p in pods if p.name == first)
        dead.proc.kill()
        reply = await browser.http.get(s.nginx.http_url + "/healthz")
        assert reply.status_code == 502
        assert browser.cookie() == cookie_value(s.route, dead.port)
    finally:
        await browser.aclose()
        s.nginx.stop()


async def test_the_ingress_timeouts_are_what_cuts_an_idle_websocket(tmp_path: Path, pods: list[Pod]) -> None:
    """hubbub pings every 25 s; a proxy read timeout below that would cut idle sessions. With the spec's
    timeout set to 2 s, nginx closes an idle session; with the operator's 3600 s it stays open."""
    short = Served(tmp_path / "short", ingress({PREFIX + "proxy-read-timeout": "2"}), pods)
    short.nginx.start()
    browser = Browser(short.nginx)
    try:
        client = await browser.websocket()
        closed = await client.closed(timeout=20)
        assert closed.code in (1006, None), closed.code  # cut below the protocol: no close frame
    finally:
        await browser.aclose()
        short.nginx.stop()
    await idle(pods)
    default = Served(tmp_path / "default", ingress(), pods)
    default.nginx.start()
    browser = Browser(default.nginx)
    try:
        client = await browser.websocket()
        # Twice the short timeout, idle: still open, and still answering.
        with pytest.raises(TimeoutError):
            await client.closed(timeout=4)
        assert "ok" in await client.call("join", room="chat:lobby")
        await client.close()
    finally:
        await browser.aclose()
        default.nginx.stop()
