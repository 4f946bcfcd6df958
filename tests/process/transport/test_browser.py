"""hubbub.js, the demo chat and the status page in headless Chromium against real servers.

Chromium is Debian's, driven by npm playwright-core (tests/support/browser.py). Pages load from
the service itself, so they run under its Content-Security-Policy. The servers are real
`hubbub serve` processes; where a restart must not lose history they share a real Redis.
Screenshots of the demo and status pages land in tests/artifacts/screenshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process.client.test_client_support import Relay
from tests.support.browser import AppOrigin, Browser, Page
from tests.support.nginx import Nginx
from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer
from tests.support.server import TEST_NAMESPACES, ServerProcess, server_config
from tests.support.wsclient import token

pytestmark = pytest.mark.browser

DEMO_NAMESPACES = {
    **TEST_NAMESPACES,
    "demo": {"history_size": 1000, "presence": True, "join_leave": True, "client_publish": True},
}

#: Installs a client on the page as `window.t` with every event it emits logged to `t.log`.
#: The token callback fetches demo tokens; `t.failTokens = true` makes it throw.
HARNESS = """
async ({ url, name, options }) => {
  const hubbub = await import("/hubbub.js");
  const plain = (v) => JSON.parse(JSON.stringify(v, (k, x) =>
    x instanceof Error ? { error: x.name, message: x.message, code: x.code ?? null } : x));
  const t = (window.t = { hubbub, log: [], tokens: 0, failTokens: false, results: {} });
  const token = async () => {
    if (t.failTokens) throw new Error("token service down (test)");
    const answer = await fetch("/demo/token", { method: "POST", body: JSON.stringify({ name }) });
    if (!answer.ok) throw new Error(`token endpoint answered ${answer.status}`);
    t.tokens += 1;
    return (await answer.json()).token;
  };
  t.client = new hubbub.Client(url, { token, ...options });
  const events = ["state", "connected", "disconnect", "connectError", "rejoin", "publication", "presence", "refresh"];
  for (const event of events) {
    t.client.on(event, (value) => t.log.push({ event, at: Date.now(), value: plain(value) }));
  }
  t.events = (event) => t.log.filter((e) => e.event === event).map((e) => e.value);
  t.offsets = (room) => t.events("publication").filter((p) => p.room === room).map((p) => p.offset);
  await t.client.connect();
  return t.client.clientId;
}
"""


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/ws"


def demo_config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"demo": True, "namespaces": DEMO_NAMESPACES, "jwt_leeway": 0, "ping_interval": 5}
    return server_config(**{**base, **overrides})


def harness(page: Page, url: str, name: str = "tester", **options: Any) -> str:
    client_id: str = page.evaluate(HARNESS, {"url": url, "name": name, "options": options})
    return client_id


def room_name() -> str:
    return f"demo:{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    yield chromium
    chromium.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, demo_config(node_name="demo-node")).start()
    yield proc
    proc.kill()


@pytest.fixture
def redis_nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two nodes sharing a real Redis, so history outlives a node. What started is stopped, whatever failed."""
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    procs: list[ServerProcess] = []
    try:
        for i in range(2):
            config = demo_config(
                redis_url=redis.url, node_name=f"node{i}", presence_ttl=3, drain_delay=0, drain_period=0.2
            )
            procs.append(ServerProcess(tmp_path, config).start())
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        redis.stop()


def publish(proc: ServerProcess, room: str, data: Any) -> int:
    answer = proc.api("POST", "/api/publish", json={"room": room, "data": data})
    assert answer.status_code == 200, answer.text
    offset: int = answer.json()["offset"]
    return offset


def history_data(proc: ServerProcess, room: str) -> list[Any]:
    answer = proc.api("GET", f"/api/history/{room}?limit=1000").json()
    return [p["data"] for p in answer["publications"]]


# --- the demo chat ----------------------------------------------------------------------------------


def join_demo(page: Page, name: str, room: str) -> None:
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join")
    page.wait("() => document.querySelector('#status')?.dataset.state === 'connected' && window.hubbubDemo?.room")


def wait_text(page: Page, selector: str, text: str, timeout: float = 30) -> None:
    """Wait until an element matching `selector` contains `text`."""
    script = "([s, t]) => [...document.querySelectorAll(s)].some((e) => e.textContent.includes(t))"
    page.wait(script, [selector, text], timeout=timeout)


def wait_shown(page: Page, selector: str, timeout: float = 30) -> None:
    """Wait until `selector` exists, is not hidden and has text."""
    script = "(s) => { const e = document.querySelector(s); return e && !e.hidden && e.textContent.trim() !== ''; }"
    page.wait(script, selector, timeout=timeout)


def messages(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('#messages li.message')].map((li) => ({
            offset: li.dataset.offset ? Number(li.dataset.offset) : null,
            pending: li.dataset.pending !== undefined,
            author: li.dataset.author,
            text: li.querySelector('.text')?.textContent ?? '',
        }))"""
    )
    return found


def online(page: Page) -> list[str]:
    users: list[str] = page.evaluate("() => [...document.querySelectorAll('#online li')].map((li) => li.dataset.user)")
    return sorted(users)


def test_two_pages_chat_through_the_server_and_presence_follows_a_closed_page(
    browser: Browser, demo: ServerProcess
) -> None:
    room = f"lobby-{uuid.uuid4().hex[:6]}"
    ada = browser.open(demo.http_url + "/")
    grace = browser.open(demo.http_url + "/")
    join_demo(ada, "Ada", room)
    join_demo(grace, "Grace", room)
    ada.wait("() => [...document.querySelectorAll('#online li')].some((li) => li.dataset.user === 'Grace')")
    assert online(grace) == ["Ada", "Grace"]

    ada.fill("#message", "Hello from Ada")
    ada.press("#message", "Enter")
    wait_text(grace, "#messages li.message .text", "Hello from Ada")
    grace.fill("#message", "Hi Ada, Grace here")
    grace.click("#send")
    ada.wait("() => document.querySelectorAll('#messages li.message:not([data-pending])').length >= 2")
    for page in (ada, grace):
        got = [(m["author"], m["text"], m["offset"]) for m in messages(page)]
        assert got == [("Ada", "Hello from Ada", 1), ("Grace", "Hi Ada, Grace here", 2)]
    publish(demo, f"demo:{room}", {"text": "Deploy finished"})
    grace.wait("() => document.querySelectorAll('#messages li.message').length === 3")
    assert messages(grace)[-1]["author"] == "server"
    grace.screenshot("demo.png")

    ada.close()
    grace.wait("() => ![...document.querySelectorAll('#online li')].some((li) => li.dataset.user === 'Ada')")
    # "Ada left" waits a few seconds for Ada to come back (a restarted node drops everyone at once).
    grace.wait("() => document.querySelector('#messages li.notice[data-kind=leave]')", timeout=20)
    assert online(grace) == ["Grace"]
    grace.close()


def page_value(page: Page, selector: str) -> str:
    value: str = page.evaluate("(s) => document.querySelector(s).value", selector)
    return value


def test_two_tabs_of_one_browser_are_two_users_unless_given_the_same_name(
    browser: Browser, demo: ServerProcess
) -> None:
    room = f"tabs-{uuid.uuid4().hex[:6]}"
    first = browser.open(demo.http_url + "/")
    suggested = page_value(first, "#name")
    assert suggested.strip() and len(suggested) <= 32
    join_demo(first, "Ada", room)
    second = browser.open(demo.http_url + "/", tab_of=first)
    other = page_value(second, "#name")
    assert other.strip() and other != "Ada"
    assert page_value(second, "#room") == room  # the room is remembered for the browser
    second.click("#join")  # with the suggested name
    second.wait("() => document.querySelector('#status')?.dataset.state === 'connected' && window.hubbubDemo?.room")
    first.wait(has_user(other))
    assert online(first) == sorted(["Ada", other])
    # A reload keeps the tab's own name.
    second.goto(demo.http_url + "/")
    assert page_value(second, "#name") == other
    first.goto(demo.http_url + "/")
    assert page_value(first, "#name") == "Ada"
    for page in (second, first):
        page.close()


def test_demo_page_works_on_a_phone_sized_screen_in_dark_mode(browser: Browser, demo: ServerProcess) -> None:
    phone = browser.open(demo.http_url + "/", width=390, height=844, dark=True)
    join_demo(phone, "Linus", "phones")
    phone.fill("#message", "typed on a phone")
    phone.press("#message", "Enter")
    phone.wait("() => document.querySelector('#messages li.message[data-offset=\"1\"]')")
    overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "the page scrolls sideways on a 390 px screen"
    phone.screenshot("demo-phone.png")
    phone.close()


def test_restarted_server_page_recovers_missed_publications_in_order_once(
    browser: Browser, redis_nodes: list[ServerProcess]
) -> None:
    node, other = redis_nodes
    room = f"recovery-{uuid.uuid4().hex[:6]}"
    page = browser.open(node.http_url + "/")
    join_demo(page, "Ada", room)
    page.evaluate(
        """() => { const c = window.hubbubDemo.client; window.seen = { disconnects: [], errors: [], rejoins: [] };
            c.on('disconnect', (d) => window.seen.disconnects.push(d));
            c.on('connectError', (e) => window.seen.errors.push({ attempt: e.attempt, delay: e.delay }));
            c.on('rejoin', (r) => window.seen.rejoins.push({ recovered: r.recovered, previous: r.previous })); }"""
    )
    full = f"demo:{room}"
    for i in range(1, 6):
        publish(other, full, {"text": f"before {i}"})
    page.wait("() => document.querySelectorAll('#messages li.message').length === 5")

    node.kill()  # SIGKILL: no close frame, no disconnect push
    page.wait("() => document.querySelector('#status').dataset.state === 'reconnecting'")
    for i in range(1, 21):
        publish(other, full, {"text": f"missed {i}"})
    # The page keeps trying while the node is down: failed attempts back off.
    page.wait("() => window.seen.errors.length >= 2", timeout=30)
    node.start()
    page.wait("() => document.querySelector('#messages li.notice[data-kind=recovered]')", timeout=30)
    for i in range(1, 4):
        publish(other, full, {"text": f"after {i}"})
    page.wait("() => document.querySelectorAll('#messages li.message').length === 28", timeout=30)

    got = messages(page)
    assert [m["offset"] for m in got] == list(range(1, 29))
    expected = [f"before {i}" for i in range(1, 6)] + [f"missed {i}" for i in range(1, 21)]
    assert [m["text"] for m in got] == expected + [f"after {i}" for i in range(1, 4)]
    seen = page.evaluate("() => window.seen")
    assert seen["disconnects"][0]["code"] is None and seen["disconnects"][0]["reconnect"] is True
    assert seen["rejoins"] == [
        {"recovered": True, "previous": {"epoch": seen["rejoins"][0]["previous"]["epoch"], "offset": 5}}
    ]
    attempts = [e["attempt"] for e in seen["errors"]]
    assert attempts == list(range(1, len(attempts) + 1))
    assert all(0 <= e["delay"] <= 20000 for e in seen["errors"])
    page.screenshot("demo-recovered.png")
    page.close()


def test_demo_says_when_a_restart_lost_history_and_starts_over(browser: Browser, demo: ServerProcess) -> None:
    """The embedded broker keeps history in memory: a restart is a new epoch, and the page must say so."""
    page = browser.open(demo.http_url + "/")
    join_demo(page, "Ada", "amnesia")
    for i in range(3):
        publish(demo, "demo:amnesia", {"text": f"old {i}"})
    page.wait("() => document.querySelectorAll('#messages li.message').length === 3")
    demo.restart()
    page.wait("() => document.querySelector('#messages li.notice[data-kind=\"not-recovered\"]')", timeout=30)
    publish(demo, "demo:amnesia", {"text": "new epoch"})
    wait_text(page, "#messages li.message .text", "new epoch")
    rejoin = page.evaluate("() => window.hubbubDemo.room.recovered")
    assert rejoin is False
    page.close()


def notices_after_disconnect(page: Page, *kinds: str) -> list[str]:
    """The texts of the notices of `kinds` shown since the page's first "Disconnected" notice."""
    found: list[str] = page.evaluate(
        """(kinds) => {
            const all = [...document.querySelectorAll('#messages li.notice')];
            const since = all.findIndex((li) => li.dataset.kind === 'disconnect');
            return all.slice(since).filter((li) => kinds.includes(li.dataset.kind)).map((li) => li.textContent);
        }""",
        list(kinds),
    )
    return found


def has_user(user: str) -> str:
    return f"() => [...document.querySelectorAll('#online li')].some((li) => li.dataset.user === {user!r})"


#: Holds the page's token requests (so its reconnect waits) until `window.releaseTokens()`.
HOLD_TOKENS = """() => {
    const fetch = window.fetch;
    let release;
    const released = new Promise((resolve) => { release = resolve; });
    window.releaseTokens = () => { release(); return true; };
    window.fetch = (...args) => released.then(() => fetch(...args));
    return true;
}"""


def test_a_restart_says_nothing_about_users_who_stayed_and_still_reports_who_left(
    browser: Browser, demo: ServerProcess
) -> None:
    """Bob is back first after the restart; Alice returns later and Carol closed her tab meanwhile."""
    room = f"stay-{uuid.uuid4().hex[:6]}"
    pages = {name: browser.open(demo.http_url + "/") for name in ("Alice", "Bob", "Carol")}
    for name, page in pages.items():
        join_demo(page, name, room)
    alice, bob, carol = pages.values()
    bob.wait(f"() => ({has_user('Alice')})() && ({has_user('Carol')})()")
    alice.evaluate(HOLD_TOKENS)

    demo.stop()
    carol.close()
    demo.start()
    bob.wait("() => document.querySelector('#messages li.notice[data-kind=\"not-recovered\"]')", timeout=30)
    bob.wait(f"() => !({has_user('Alice')})()")  # Bob has the new list: Alice is not back yet
    alice.evaluate("() => window.releaseTokens()")
    bob.wait(has_user("Alice"), timeout=20)
    bob.wait("() => document.querySelector('#messages li.notice[data-kind=leave]')", timeout=30)
    assert notices_after_disconnect(bob, "join", "leave") == ["Carol left"]
    assert online(bob) == ["Alice", "Bob"]

    # Someone new still shows at once.
    dave = browser.open(demo.http_url + "/")
    join_demo(dave, "Dave", room)
    wait_text(bob, "#messages li.notice[data-kind=join]", "Dave joined")
    assert notices_after_disconnect(bob, "join", "leave") == ["Carol left", "Dave joined"]
    wait_text(alice, "#messages li.notice[data-kind=join]", "Dave joined")
    assert "Bob" not in " ".join(notices_after_disconnect(alice, "join", "leave"))
    for page in (alice, bob, dave):
        page.close()


def test_publishes_made_offline_are_delivered_exactly_once_after_the_reconnect(
    browser: Browser, redis_nodes: list[ServerProcess]
) -> None:
    node, other = redis_nodes
    room = room_name()
    page = browser.open(node.http_url + "/status")
    harness(page, ws_url(node.http_url), backoffBase=100, backoffCap=1000)
    page.evaluate("(room) => t.client.join(room).then(() => true)", room)
    node.kill()
    page.wait("() => t.client.state === 'reconnecting'")
    queued = page.evaluate(
        """(room) => {
            t.pending = [];
            for (let i = 1; i <= 12; i++) t.pending.push(t.client.publish(room, { n: i }));
            return t.client.queued;
        }""",
        room,
    )
    assert queued == 12
    # They stay queued through failed attempts.
    failed = page.evaluate("() => t.events('connectError').length")
    page.wait("(failed) => t.events('connectError').length > failed", failed, timeout=30)
    assert page.evaluate("() => t.client.queued") == 12
    node.start()
    results = page.evaluate("() => Promise.all(t.pending)")
    assert [r["offset"] for r in results] == list(range(1, 13))
    # A barrier: once the next publication is in, anything delivered twice would have been too.
    assert publish(other, room, {"n": 13}) == 13
    page.wait("(room) => t.offsets(room).includes(13)", room, timeout=30)
    assert page.evaluate("(room) => t.offsets(room)", room) == list(range(1, 14))
    assert history_data(other, room) == [{"n": i} for i in range(1, 14)]
    assert page.evaluate("() => t.client.queued") == 0
    page.close()


def test_a_publish_whose_reply_was_lost_is_resent_with_its_key_and_stored_once(
    browser: Browser, demo: ServerProcess
) -> None:
    with threaded_relay(demo.port) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        page = browser.open(base + "/status")
        harness(page, ws_url(base), backoffBase=50, backoffCap=200)
        room = room_name()
        page.evaluate("(room) => t.client.join(room).then(() => true)", room)
        relay.blackhole = True  # the server still gets the publish; its reply never comes back
        page.evaluate("(room) => { t.lost = t.client.publish(room, { only: 'once' }); return true; }", room)
        wait_until(lambda: history_data(demo, room) == [{"only": "once"}], what="the publish to be stored")
        relay.blackhole = False
        relay.cut()
        result = page.evaluate("() => t.lost")
        assert result["offset"] == 1
        assert history_data(demo, room) == [{"only": "once"}]
        page.close()


def test_a_silent_connection_is_declared_dead_and_replaced(browser: Browser, tmp_path: Path) -> None:
    # The server's own verdict (no pong within pong_timeout) comes at least 1.5 s after the client's.
    proc = ServerProcess(tmp_path, demo_config(ping_interval=1, pong_timeout=2)).start()
    try:
        with threaded_relay(proc.port) as relay:
            base = f"http://127.0.0.1:{relay.port}"
            page = browser.open(base + "/status")
            harness(page, ws_url(base), heartbeatGrace=500, backoffBase=50, backoffCap=200)
            page.wait("() => t.client.pings >= 1", timeout=20)
            relay.silence()  # this connection goes quiet; the next one is fine
            page.wait("() => t.client.state === 'connected' && t.client.connects === 2", timeout=20)
            gone = page.evaluate("() => t.events('disconnect')[0]")
            assert gone["code"] is None and gone["reconnect"] is True and "received" in gone["reason"]
            page.close()
    finally:
        proc.kill()


def test_an_expiring_token_is_refreshed_through_the_callback_on_the_same_connection(
    browser: Browser, tmp_path: Path
) -> None:
    proc = ServerProcess(tmp_path, demo_config(demo_token_ttl=3)).start()
    try:
        page = browser.open(proc.http_url + "/status")
        harness(page, ws_url(proc.http_url))
        room = room_name()
        page.evaluate("(room) => t.client.join(room).then(() => true)", room)
        # Two refreshes: the connection outlived its first token. Read at once, at a moment when every
        # token fetched was used by a refresh (a fetch for the next one may be under way at any other).
        seen = page.wait(
            """() => {
                const refreshes = t.events('refresh');
                return refreshes.length >= 2 && t.tokens === 1 + refreshes.length && {
                    refreshes, connects: t.client.connects, disconnects: t.events('disconnect') };
            }""",
            timeout=30,
        )
        assert seen["connects"] == 1 and seen["disconnects"] == []
        assert all(r["error"] is None and r["expiresIn"] <= 3 for r in seen["refreshes"])
        publish(proc, room, "still here")
        page.wait("(room) => t.offsets(room).includes(1)", room)
        page.close()
    finally:
        proc.kill()


def test_an_expired_token_is_replaced_through_the_callback_without_losing_the_room(
    browser: Browser, tmp_path: Path
) -> None:
    proc = ServerProcess(tmp_path, demo_config(demo_token_ttl=3)).start()
    try:
        page = browser.open(proc.http_url + "/status")
        harness(page, ws_url(proc.http_url), backoffBase=200, backoffCap=500)
        room = room_name()
        page.evaluate("(room) => t.client.join(room).then(() => true)", room)
        publish(proc, room, 1)
        page.wait("(room) => t.offsets(room).includes(1)", room)
        page.evaluate("() => { t.failTokens = true; }")  # refreshes fail: the token runs out
        page.wait("() => t.events('disconnect').some((d) => d.code === 4009)", timeout=20)
        publish(proc, room, 2)
        publish(proc, room, 3)
        page.evaluate("() => { t.failTokens = false; }")
        page.wait("() => t.events('rejoin').length === 1", timeout=20)
        page.wait("(room) => t.offsets(room).length === 3", room)
        assert page.evaluate("(room) => t.offsets(room)", room) == [1, 2, 3]
        rejoin = page.evaluate("() => t.events('rejoin')[0]")
        assert rejoin["recovered"] is True and rejoin["room"] == room
        assert page.evaluate("() => t.events('refresh').some((r) => r.error)")
        assert page.evaluate("(room) => t.client.rooms.get(room).active", room) is True
        page.close()
    finally:
        proc.kill()


def test_a_terminal_close_stops_reconnecting_and_surfaces_the_reason(browser: Browser, demo: ServerProcess) -> None:
    page = browser.open(demo.http_url + "/status")
    outcome = page.evaluate(
        """async (url) => {
            const { Client } = await import('/hubbub.js');
            const client = (window.bad = new Client(url, { token: 'not-a-jwt', backoffBase: 50 }));
            const states = (window.badStates = []);
            client.on('state', (s) => states.push(s));
            try { await client.connect(); return { connected: true }; }
            catch (e) { return { name: e.name, code: e.disconnect?.code, reason: e.disconnect?.reason }; }
        }""",
        ws_url(demo.http_url),
    )
    assert outcome["name"] == "ConnectFailed" and outcome["code"] == 4001
    assert outcome["reason"]
    time.sleep(1.5)  # long enough for several backoff attempts, had it kept trying
    final = page.evaluate("() => ({ state: bad.state, attempts: bad.attempts, final: bad.final, states: badStates })")
    assert final["state"] == "closed" and final["attempts"] == 1
    assert final["final"]["code"] == 4001 and final["final"]["reconnect"] is False
    assert final["states"] == ["connecting", "closed"]
    page.close()


def test_a_wrong_path_fails_the_first_connect_within_connect_timeout_saying_what_it_may_be(
    browser: Browser, demo: ServerProcess
) -> None:
    """A browser sees no HTTP status for a refused upgrade: the client retries until connectTimeout,
    warns once per attempt, then rejects with a ConnectFailed that names the URL and the likely causes,
    and stops."""
    page = browser.open(demo.http_url + "/status")
    try:
        outcome = page.evaluate(
            """async (url) => {
                const { Client } = await import('/hubbub.js');
                const client = (window.lost = new Client(url, { token: 'x', connectTimeout: 2000 }));
                const started = performance.now();
                try { await client.connect(); return { connected: true }; }
                catch (e) {
                  return { name: e.name, message: e.message, attempts: e.attempts, url: e.url,
                           took: performance.now() - started, state: client.state };
                }
            }""",
            demo.http_url.replace("http://", "ws://") + "/chat",
        )
        url = demo.http_url.replace("http://", "ws://") + "/chat"
        assert outcome["name"] == "ConnectFailed", outcome
        assert 1900 <= outcome["took"] < 5000, outcome
        assert outcome["state"] == "closed" and outcome["url"] == url
        assert outcome["message"] == (
            f"could not connect to {url} within 2000 ms ({outcome['attempts']} attempts); last error: could not"
            " open the WebSocket (the server may be down, the path wrong, or this page's origin not allowed)"
        )
        warnings = [line for line in page.log() if line.startswith("warning: hubbub: ")]
        attempts = [line for line in warnings if line.startswith("warning: hubbub: connect attempt ")]
        assert outcome["attempts"] - 1 <= len(attempts) <= outcome["attempts"], warnings
        assert warnings[-1] == f"warning: hubbub: giving up: {outcome['message']}"
        # Stopped: no attempt after the rejection.
        attempts_then = outcome["attempts"]
        page.wait("() => new Promise((done) => setTimeout(() => done(true), 1000))")
        assert page.evaluate("() => lost.attempts") == attempts_then
    finally:
        page.close()


def test_a_draining_node_sends_its_browsers_to_another_node_after_a_random_delay(
    browser: Browser, redis_nodes: list[ServerProcess], tmp_path: Path
) -> None:
    nginx = Nginx(tmp_path / "nginx", [p.port for p in redis_nodes]).start()
    try:
        room = room_name()
        drained = redis_nodes[0]
        pages: list[Page] = []
        # nginx spreads new connections at random: open pages until two are on the node to drain.
        while len(pages) < 12:
            page = browser.open(nginx.http_url + "/status")
            harness(page, ws_url(nginx.http_url), name=f"user{len(pages)}", drainJitter=1500)
            page.evaluate("(room) => t.client.join(room).then(() => true)", room)
            pages.append(page)
            if len(pages) >= 4 and local_connections(drained) >= 2:
                break
        for i in range(1, 4):
            publish(redis_nodes[1], room, i)
        drained.signal(signal.SIGTERM)
        for i in range(4, 11):
            publish(redis_nodes[1], room, i)
            time.sleep(0.1)
        for page in pages:
            page.wait("(room) => t.offsets(room).length === 10", room, timeout=30)
            assert page.evaluate("(room) => t.offsets(room)", room) == list(range(1, 11))
        drains = [page.evaluate("() => t.events('disconnect').filter((d) => d.code === 1012)") for page in pages]
        delays = [d[0]["delay"] for d in drains if d]
        assert delays, "no page was on the drained node"
        assert all(0 <= delay <= 1500 for delay in delays)
        for page in pages:
            page.close()
    finally:
        nginx.stop()


def test_batched_frames_are_split_and_every_publication_arrives_in_order(browser: Browser, demo: ServerProcess) -> None:
    page = browser.open(demo.http_url + "/status")
    page.evaluate(
        """() => {
            const Native = window.WebSocket;
            window.frameCount = 0;
            window.WebSocket = class extends Native {
                constructor(...args) {
                    super(...args);
                    this.addEventListener('message', () => { window.frameCount += 1; });
                }
            };
        }"""
    )
    harness(page, ws_url(demo.http_url))
    room = room_name()
    page.evaluate("(room) => t.client.join(room).then(() => true)", room)

    async def flood() -> None:
        import httpx

        async with httpx.AsyncClient(headers={"authorization": "Bearer test-api-key"}) as http:
            for start in range(1, 500, 50):
                await asyncio.gather(
                    *(
                        http.post(demo.http_url + "/api/publish", json={"room": room, "data": n})
                        for n in range(start, start + 50)
                    )
                )

    asyncio.run(flood())
    page.wait("(room) => t.offsets(room).length === 500", room, timeout=30)
    assert page.evaluate("(room) => t.offsets(room)", room) == list(range(1, 501))
    frames = page.evaluate("() => window.frameCount")
    assert frames < 500, "the server sent one frame per message: batching was not exercised"
    page.close()


def local_connections(proc: ServerProcess) -> int:
    nodes = proc.api("GET", "/api/status").json()["nodes"]
    count: int = next(n["connections"] for n in nodes if n["name"] == proc.config["node_name"])
    return count


def test_with_the_demo_off_a_browser_gets_a_page_saying_how_to_turn_it_on(browser: Browser, tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, server_config()).start()
    try:
        page = browser.open(proc.http_url + "/")
        heading = page.evaluate("() => document.querySelector('h1').textContent")
        assert heading == "The demo chat is off on this node"
        page.wait("() => getComputedStyle(document.querySelector('.off-card')).borderRadius === '12px'")  # styled
        assert page.evaluate("() => document.querySelector('a[href=\"/status\"]') !== null")
        # Nothing refused by the Content-Security-Policy (the page's own 404 is the one error logged).
        errors = [line for line in page.log() if line.startswith(("error", "pageerror"))]
        assert errors == ["error: Failed to load resource: the server responded with a status of 404 (Not Found)"]
        page.click("a[href='/status']")
        wait_shown(page, "#api-key-form")
        page.close()
    finally:
        proc.kill()


# --- hubbub.js on a page of another origin ----------------------------------------------------------

#: Run in a page of the application's origin: import hubbub.js from the node, connect, join, publish,
#: and see the publication come back. Says which step failed, and how.
CROSS_ORIGIN = """
async ({ base, token, room }) => {
  let hubbub;
  try {
    hubbub = await import(`${base}/hubbub.js`);
  } catch (error) {
    return { step: "import", error: String(error) };
  }
  const client = new hubbub.Client(base.replace("http://", "ws://") + "/ws", { token, backoffBase: 100 });
  const errors = [];
  client.on("connectError", (e) => errors.push(String(e.error)));
  const connected = await Promise.race([
    client.connect().then(() => true),
    new Promise((resolve) => setTimeout(() => resolve(false), 20000)),
  ]);
  if (!connected) {
    await client.close();
    return { step: "connect", error: errors.join("; ") };
  }
  const joined = await client.join(room);
  const back = new Promise((resolve) => joined.on("publication", (pub) => resolve(pub.data)));
  await client.publish(room, { text: "from another origin" });
  const data = await back;
  await client.close();
  return { step: "done", data };
}
"""

#: A bare WebSocket from the page: how it ended.
BARE_WEBSOCKET = """
(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve({ opened: true }); };
  ws.onclose = (event) => resolve({ opened: false, code: event.code });
})
"""


def cross_origin(browser: Browser, app: AppOrigin, proc: ServerProcess) -> dict[str, Any]:
    page = browser.open(app.url + "/")
    try:
        args = {"base": proc.http_url, "token": token("ada"), "room": f"chat:{uuid.uuid4().hex[:8]}"}
        outcome: dict[str, Any] = page.evaluate(CROSS_ORIGIN, args)
        return outcome
    finally:
        page.close()


def test_a_page_of_an_allowed_origin_imports_hubbub_js_and_chats(browser: Browser, tmp_path: Path) -> None:
    with AppOrigin() as app:
        proc = ServerProcess(tmp_path, server_config(allowed_origins=[app.url])).start()
        try:
            assert cross_origin(browser, app, proc) == {"step": "done", "data": {"text": "from another origin"}}
            assert "refused" not in proc.log()
        finally:
            proc.kill()


def test_a_page_of_another_origin_is_refused_and_the_log_says_which_setting_to_change(
    browser: Browser, tmp_path: Path
) -> None:
    with AppOrigin() as app:
        proc = ServerProcess(tmp_path, server_config(allowed_origins=["https://app.example.com"])).start()
        try:
            outcome = cross_origin(browser, app, proc)
            assert outcome["step"] == "import", outcome
            wanted = f"""HUBBUB_ALLOWED_ORIGINS='["https://app.example.com", "{app.url}"]'"""
            log = proc.wait_for_log(f'refused /hubbub.js from origin "{app.url}"')
            assert wanted in log
            # The WebSocket on its own is refused too (the browser sees only a failed handshake). From a
            # third origin: an origin is logged once a minute, whatever it was refused.
            with AppOrigin() as third:
                page = browser.open(third.url + "/")
                assert page.evaluate(BARE_WEBSOCKET, ws_url(proc.http_url)) == {"opened": False, "code": 1006}
                page.close()
                log = proc.wait_for_log(f'refused a WebSocket from origin "{third.url}"')
            line = next(line for line in log.splitlines() if "refused a WebSocket" in line)
            assert "WARNING" in line and f'add "{third.url}" to allowed_origins' in line
        finally:
            proc.kill()


def test_a_page_of_any_origin_works_against_a_development_node(browser: Browser, tmp_path: Path) -> None:
    with AppOrigin() as app:
        proc = ServerProcess(tmp_path, server_config(mode="development")).start()
        try:
            assert cross_origin(browser, app, proc) == {"step": "done", "data": {"text": "from another origin"}}
        finally:
            proc.kill()


# --- the status page --------------------------------------------------------------------------------


def test_status_page_asks_for_the_key_then_shows_live_figures_of_every_node(
    browser: Browser, redis_nodes: list[ServerProcess]
) -> None:
    node, other = redis_nodes
    page = browser.open(node.http_url + "/status")
    wait_shown(page, "#api-key-form")
    page.fill("#api-key-form input", "wrong-key")
    page.press("#api-key-form input", "Enter")
    wait_text(page, "#api-key-form", "refused this API key (401")
    page.fill("#api-key-form input", "test-api-key")
    page.press("#api-key-form input", "Enter")
    page.wait("() => document.querySelectorAll('#nodes tbody tr[data-node]').length === 2", timeout=30)

    # Some life on both nodes: four chatters, a stream of publications, a kick and a closed tab.
    chats = {
        name: browser.open(proc.http_url + "/")
        for name, proc in [("Ada", other), ("Grace", other), ("Linus", node), ("Edsger", node)]
    }
    for name, chat in chats.items():
        join_demo(chat, name, "busy")
    for i in range(30):
        publish(node, "demo:busy", {"text": f"load {i}"})
    chats["Grace"].wait("() => document.querySelectorAll('#messages li.message').length === 30")
    other.api("POST", "/api/disconnect", json={"user": "Ada", "reason": "kicked by a moderator"})
    chats.pop("Edsger").close()
    wait_text(page, "#recent li", "kicked by a moderator")
    page.wait("() => document.querySelector('#recent li[data-code=\"1001\"]')", timeout=30)
    page.wait(
        "() => document.querySelector('#summary [data-metric=connections]').textContent.trim() === '2'", timeout=30
    )
    rows = page.evaluate(
        "() => [...document.querySelectorAll('#nodes tbody tr[data-node]')].map((tr) => tr.dataset.node)"
    )
    assert sorted(rows) == ["node0", "node1"]
    codes = page.evaluate(
        "() => [...document.querySelectorAll('#codes tbody tr[data-code]')].map((tr) => tr.dataset.code)"
    )
    assert {"1001", "4000"} <= set(codes)
    page.screenshot("status.png", full_page=True)

    node.kill()  # the page keeps the last figures and says the node is unreachable
    wait_shown(page, "#error")
    assert page.evaluate("() => document.querySelectorAll('#nodes tbody tr[data-node]').length") == 2
    for chat in chats.values():
        chat.close()
    page.close()


def test_status_page_keeps_a_refused_key_selected_for_retyping(browser: Browser, demo: ServerProcess) -> None:
    page = browser.open(demo.http_url + "/status")
    wait_shown(page, "#api-key-form")
    page.fill("#api-key", "test-api-kez")
    page.press("#api-key", "Enter")
    wait_text(page, "#api-key-error", "refused this API key (401")
    field = page.evaluate(
        """() => { const input = document.querySelector('#api-key');
            return { value: input.value, start: input.selectionStart, end: input.selectionEnd,
                     focused: document.activeElement === input, invalid: input.getAttribute('aria-invalid') }; }"""
    )
    assert field == {"value": "test-api-kez", "start": 0, "end": 12, "focused": True, "invalid": "true"}
    page.press("#api-key", "Backspace")  # the selection goes: the user types the key again
    assert page.evaluate("() => document.querySelector('#api-key').value") == ""
    page.fill("#api-key", "test-api-key")
    page.press("#api-key", "Enter")
    page.wait("() => document.querySelectorAll('#nodes tbody tr[data-node]').length === 1")
    page.click("#forget-key")  # asking afresh starts from an empty field
    wait_shown(page, "#api-key-form")
    assert page.evaluate("() => document.querySelector('#api-key').value") == ""
    page.close()


class ThreadedRelay:
    """The asyncio Relay of the client tests, on its own loop in a thread (these tests are synchronous)."""

    def __init__(self, relay: Relay, loop: asyncio.AbstractEventLoop) -> None:
        self._relay = relay
        self._loop = loop
        self.port = relay.port

    def silence(self) -> None:
        self._loop.call_soon_threadsafe(self._relay.silence)

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._relay.cut)

    @property
    def blackhole(self) -> bool:
        return self._relay.blackhole

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        self._relay.blackhole = value  # a plain attribute the relay's loop reads for every chunk


@contextlib.contextmanager
def threaded_relay(port: int) -> Iterator[ThreadedRelay]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    relay = asyncio.run_coroutine_threadsafe(Relay(port).start(), loop).result(30)
    try:
        yield ThreadedRelay(relay, loop)
    finally:
        asyncio.run_coroutine_threadsafe(relay.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
