"""The metric table is defined once, documented once, and exported as documented: every metric moves
when its event happens, on real server processes (and a real Redis), and every exported label value
is one the table declares."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast, get_args

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hubbub import __version__, fdlimit, protocol
from hubbub.app import HubbubApp
from hubbub.auth import AUTH_FAILURE_REASONS
from hubbub.backends.base import InsufficientStateCause
from hubbub.codes import CLOSE_TABLE, ErrorCode
from hubbub.loader import load_settings
from hubbub.metrics import HTTP_ROUTES, METRICS, PER_PROCESS, MetricSpec
from tests.conftest import ServerFactory
from tests.support.conversation import Closed
from tests.support.polling import until
from tests.support.redis_server import RedisServer
from tests.support.server import API_KEY, TEST_NAMESPACES, ServerProcess, server_config
from tests.support.wsclient import RawClient, token

DOC = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
SPECS = {spec.name: spec for spec in METRICS}
#: Exported only with the Redis backend.
REDIS_ONLY = frozenset(spec.name for spec in METRICS if spec.name.startswith("hubbub_redis_"))
KEY = base64.b64encode(b"hubbub-metrics16").decode()


# --- the table --------------------------------------------------------------------------------------


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    for spec in METRICS:
        row = next((line for line in DOC.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"{spec.name} missing from docs/metrics.md"
        assert f"| {spec.kind} |" in row
        for label in spec.labels:
            assert f"`{label}`" in row
    documented = {line.split("`")[1] for line in DOC.splitlines() if line.startswith("| `hubbub_")}
    assert documented == {spec.name for spec in METRICS}


def test_every_auth_failure_reason_is_documented() -> None:
    for reason in AUTH_FAILURE_REASONS:
        assert f"`{reason}`" in DOC


def values(name: str, label: str) -> set[str]:
    declared = SPECS[name].values[label]
    return set(declared) if declared is not None else set()


def test_every_label_has_a_declared_value_set_in_step_with_where_the_values_come_from() -> None:
    for spec in METRICS:
        assert set(spec.values) == set(spec.labels), spec.name
    assert values("hubbub_auth_failures_total", "reason") == set(AUTH_FAILURE_REASONS)
    assert values("hubbub_commands_total", "op") == protocol.OPS - {"pong"}
    assert values("hubbub_commands_total", "result") == {"ok"} | {str(int(c)) for c in ErrorCode}
    codes = {str(int(code)) for code in CLOSE_TABLE} | {"1001", "1006", "other"}
    assert values("hubbub_disconnects_total", "code") == codes
    assert values("hubbub_insufficient_state_disconnects_total", "cause") == set(get_args(InsufficientStateCause))
    app = HubbubApp(load_settings(env={}, overrides={"mode": "development"}))
    assert {getattr(route, "path", None) for route in app.http.routes} == set(HTTP_ROUTES)
    for spec in METRICS:
        for label, declared in spec.values.items():
            if declared is not None and len(declared) < 20:  # the long ones (statuses, routes) are listed by reference
                for value in declared:
                    assert f"`{value}`" in DOC or value.isdigit() or value == "other", (spec.name, label, value)


# --- scraping -----------------------------------------------------------------------------------------


class Scrape:
    """One `/metrics` answer, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` carrying `labels` (and any others)."""
        return sum(value for sample, have, value in self.samples if sample == name and labels.items() <= have.items())

    def has(self, name: str) -> bool:
        return any(sample == name for sample, _, _ in self.samples)

    def bucket(self, name: str, le: str, **labels: str) -> float:
        return self.value(name + "_bucket", le=le, **labels)


def scrape(proc: ServerProcess) -> Scrape:
    response = httpx.get(proc.http_url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def scraped(proc: ServerProcess, check: Callable[[Scrape], bool], what: str) -> Scrape:
    """The first scrape of `proc` that passes `check` (polling, as tests/support/polling.py does)."""

    def look() -> Scrape | None:
        found = scrape(proc)
        return found if check(found) else None

    found = await until(look, what=what)
    assert found is not None
    return found


def _spec_of(sample: str) -> MetricSpec | None:
    for suffix in ("", "_bucket", "_count", "_sum"):
        spec = SPECS.get(sample.removesuffix(suffix)) if sample.endswith(suffix) else None
        if spec is not None and (suffix == "" or spec.kind == "histogram"):
            return spec
    return None


def assert_bounded(found: Scrape) -> None:
    """Every hubbub sample belongs to a metric of the table and carries its labels, each with a declared value."""
    per_process: dict[tuple[str, str], set[str]] = {}
    for sample, labels, _ in found.samples:
        if not sample.startswith("hubbub_"):
            continue
        spec = _spec_of(sample)
        assert spec is not None, f"{sample} is not in the metric table"
        given = {k: v for k, v in labels.items() if not (k == "le" and spec.kind == "histogram")}
        assert set(given) == set(spec.labels), (sample, labels)
        for label, value in given.items():
            allowed = spec.values[label]
            if allowed is PER_PROCESS:
                per_process.setdefault((spec.name, label), set()).add(value)
            else:
                assert value in allowed, f"{sample}: {label}={value!r} is not a declared value"
    for key, values in per_process.items():
        assert len(values) == 1, (key, values)


async def raw_request(port: int, request: bytes, *, timeout: float = 10.0) -> int:
    """Send `request` on a new connection; the status of the answer (0 when closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line else 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def everything_until_closed(client: RawClient) -> tuple[list[dict[str, Any]], int | None]:
    """Every message the server sends until it closes, and the close code."""
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await client.recv())
    except Closed as exc:
        return seen, exc.code


def upgrade(path: str = "/ws", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# --- the embedded backend ---------------------------------------------------------------------------


async def test_metrics_endpoint_exports_every_metric_and_counts_activity(server: ServerProcess) -> None:
    bad = await RawClient.open(server.ws_url)
    await bad.send({"id": 1, "op": "connect", "token": "not-a-token"})
    await bad.closed()
    client = await RawClient.connected(server.ws_url, "metrics-user")
    await client.call("join", room="chat:metrics")
    await client.call("publish", room="chat:metrics", data=1)
    await client.call("join", room="nosuch:x")
    # The lag probe fires every 0.5 s from the node's start.
    found = await scraped(server, lambda s: s.value("hubbub_event_loop_lag_seconds_count") >= 1, "a lag probe sample")
    for spec in METRICS:
        name = spec.name + ("_bucket" if spec.kind == "histogram" else "")
        if spec.name in REDIS_ONLY:
            assert not found.has(name), f"{name} exported without Redis"
        else:
            assert found.has(name), f"{name} not exported"
    connections = [
        line for line in found.text.splitlines() if line.startswith(("hubbub_connections ", "hubbub_connections{"))
    ]
    assert len(connections) == 1 and connections[0].startswith("hubbub_connections "), "no labels (rule 13)"
    assert found.value("hubbub_connections") >= 1
    assert found.value("hubbub_commands_total", op="publish", result="ok") >= 1
    assert found.value("hubbub_commands_total", op="join", result="404") >= 1
    assert found.value("hubbub_publications_total", source="ws") >= 1
    assert found.value("hubbub_fanout_latency_seconds_count") >= 1
    assert found.value("hubbub_build_info", version=__version__, backend="memory") == 1
    # max_connections (20,000 by default), or fewer when the open-file hard limit the server inherits
    # from this process cannot hold it with the pending handshakes (the node says so; see fdlimit).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fitted = fdlimit.budget(hard, 20000, 2048).max_connections if hard != resource.RLIM_INFINITY else 20000
    assert found.value("hubbub_connection_limit") == fitted
    assert found.value("hubbub_ready") == 1
    for runtime in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert found.has(runtime), f"{runtime} not exported"
    assert any(sample.startswith("python_gc_") for sample, _, _ in found.samples)
    # No room or user id ever appears in a label; every label value is a declared one.
    assert "chat:metrics" not in found.text and "metrics-user" not in found.text
    assert_bounded(found)
    await client.close()


async def test_disconnects_and_auth_failures_are_counted_by_bounded_labels(server: ServerProcess) -> None:
    bad = await RawClient.open(server.ws_url)
    await bad.send({"id": 1, "op": "connect", "token": "not-a-token"})
    await bad.closed()
    found = await scraped(
        server, lambda s: s.value("hubbub_disconnects_total", code="4001") >= 1, "the 4001 close counted"
    )
    assert found.value("hubbub_auth_failures_total", reason="malformed") >= 1


async def test_presence_entries_follow_joins_and_leaves(server: ServerProcess) -> None:
    before = scrape(server).value("hubbub_presence_entries")
    room = f"chat:{uuid.uuid4().hex[:8]}"
    first = await RawClient.connected(server.ws_url, "p1")
    second = await RawClient.connected(server.ws_url, "p2")
    await first.call("join", room=room)
    await second.call("join", room=room)
    await second.call("join", room="nohist:no-presence")  # a namespace without presence holds no entry
    assert scrape(server).value("hubbub_presence_entries") == before + 2
    await first.call("leave", room=room)
    assert scrape(server).value("hubbub_presence_entries") == before + 1
    await second.close()
    await until(lambda: scrape(server).value("hubbub_presence_entries") == before, what="the closed one's entry gone")
    await first.close()


async def test_refused_upgrades_are_counted_by_reason_and_capacity_shows_in_ready(
    server_factory: ServerFactory,
) -> None:
    proc = server_factory(
        allowed_origins=["https://good.example"],
        max_header_bytes=1024,
        handshake_timeout=1,
        max_pending_handshakes=3,
        max_connections=1,
    )

    def refusals(reason: str) -> float:
        return scrape(proc).value("hubbub_handshake_refusals_total", reason=reason)

    assert await raw_request(proc.port, upgrade(extra="Origin: https://evil.example\r\n")) == 403
    assert await raw_request(proc.port, upgrade("/ws?token=not-a-token")) == 401
    assert await raw_request(proc.port, upgrade("/nope")) == 404
    assert await raw_request(proc.port, upgrade(extra=f"X-Pad: {'p' * 2000}\r\n")) == 431
    assert (refusals("origin"), refusals("auth"), refusals("not_websocket"), refusals("header_too_large")) == (
        1,
        1,
        1,
        1,
    )

    # Part of a request head, then nothing: 408 at handshake_timeout.
    assert await raw_request(proc.port, upgrade()[:40]) == 408
    assert refusals("handshake_timeout") == 1

    # More connections still sending their head than max_pending_handshakes: the oldest is shed.
    idle = [await asyncio.open_connection("127.0.0.1", proc.port) for _ in range(4)]
    try:
        await until(lambda: refusals("too_many_handshakes") >= 1, what="a shed connection counted")
    finally:
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # At max_connections a new connection is upgraded and closed 1013 at once; the node reports unready.
    holder = await RawClient.open(proc.ws_url)
    await until(lambda: scrape(proc).value("hubbub_ready") == 0, what="hubbub_ready 0 at capacity")
    extra = await RawClient.open(proc.ws_url)
    assert (await extra.closed()).code == 1013
    assert refusals("capacity") == 1
    assert scrape(proc).value("hubbub_connection_limit") == 1
    await holder.close()
    await until(lambda: scrape(proc).value("hubbub_ready") == 1, what="hubbub_ready 1 again")
    assert_bounded(scrape(proc))


async def test_command_and_ping_floods_are_counted_as_rate_limited_and_their_4029_closes(
    server_factory: ServerFactory,
) -> None:
    proc = server_factory(command_rate=1, command_burst=5)
    flooder = await RawClient.connected(proc.ws_url, "flooder")
    # 5 within the burst, then 429s until the overdraft reaches the burst: 4029.
    await flooder.send(*({"id": 10 + i, "op": "leave", "room": "chat:x"} for i in range(12)))
    seen, code = await everything_until_closed(flooder)
    assert code == 4029
    rejected = sum(1 for m in seen if m.get("error", {}).get("code") == 429)
    assert rejected >= 3

    pinger = await RawClient.open(proc.ws_url)  # before `connect`: 16 pings, then 4029
    pongs = [cast(asyncio.Future[float], await pinger.ws.ping()) for _ in range(17)]
    assert (await pinger.closed()).code == 4029
    for pong in pongs:  # the last is never answered: its error is expected, not to be reported
        if pong.done() and not pong.cancelled():
            pong.exception()

    def counted() -> Scrape:
        found = scrape(proc)
        assert found.value("hubbub_rate_limit_disconnects_total") == 2, found.text
        return found

    found = await until(counted, what="both 4029 closes counted")
    assert found.value("hubbub_rate_limited_total", limit="commands") == rejected
    assert found.value("hubbub_commands_total", op="leave", result="429") == rejected
    assert found.value("hubbub_rate_limited_total", limit="control_frames") == 1
    assert found.value("hubbub_disconnects_total", code="4029") == 2
    assert found.value("hubbub_rate_limited_total", limit="demo_token") == 0


async def test_demo_token_429s_and_api_requests_are_counted_by_route_template(server_factory: ServerFactory) -> None:
    demo = {"history_size": 50, "presence": True, "join_leave": True, "client_publish": True}
    proc = server_factory(demo=True, namespaces={**TEST_NAMESPACES, "demo": demo}, demo_tokens_per_minute=1)
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=10) as http:
        assert (await http.post("/demo/token", json={"name": "ann"})).status_code == 200
        assert (await http.post("/demo/token", json={"name": "ann"})).status_code == 429
        assert (await http.post("/api/publish", json={"room": "chat:x", "data": 1})).status_code == 401
        authorized = {"authorization": f"Bearer {API_KEY}"}
        assert (await http.get("/api/history/chat:secret-room", headers=authorized)).status_code == 200
        assert (await http.get("/no/such/path/chat:secret-room")).status_code == 404
    found = scrape(proc)
    assert found.value("hubbub_rate_limited_total", limit="demo_token") == 1
    assert found.value("hubbub_api_requests_total", route="/demo/token", status="200") == 1
    assert found.value("hubbub_api_requests_total", route="/demo/token", status="429") == 1
    assert found.value("hubbub_api_requests_total", route="/api/publish", status="401") == 1
    assert found.value("hubbub_api_requests_total", route="/api/history/{room:path}", status="200") == 1
    assert found.value("hubbub_api_requests_total", route="other", status="404") == 1
    assert "secret-room" not in found.text and "/no/such" not in found.text
    assert_bounded(found)


async def test_a_slow_consumer_shows_in_queue_bytes_then_is_counted_when_closed(server_factory: ServerFactory) -> None:
    proc = server_factory(max_queue_bytes=16 * 1024 * 1024)
    room = f"nohist:{uuid.uuid4().hex[:8]}"
    slow = await RawClient.open(proc.ws_url, max_queue=1)  # reads nothing once one message waits
    joined = await slow.call("connect", token=token("slow"), rooms={room: {}})
    assert "ok" in joined
    data = "x" * 60_000
    async with httpx.AsyncClient(
        base_url=proc.http_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=10
    ) as http:

        async def publish(megabytes: int) -> None:
            for _ in range(megabytes * 1024 * 1024 // len(data)):
                response = await http.post("/api/publish", json={"room": room, "data": data})
                assert response.status_code == 200, response.text

        # More than the sockets' buffers take, less than max_queue_bytes: the rest waits in the queue.
        await publish(10)

        def queued() -> bool:
            found = scrape(proc)
            over_a_mib = found.value("hubbub_outbound_queue_bytes_count") - found.bucket(
                "hubbub_outbound_queue_bytes", "1.048576e+06"
            )
            return over_a_mib >= 1

        await until(queued, what="a sample of over 1 MiB queued (sampled every 5 s)")
        assert scrape(proc).value("hubbub_slow_consumer_disconnects_total") == 0
        await publish(20)
    # It reads nothing, so its close frame never goes out: it is dropped CLOSE_GRACE later, then counted.
    found = await scraped(
        proc, lambda s: s.value("hubbub_disconnects_total", code="4008") == 1, "the 4008 close counted"
    )
    assert found.value("hubbub_slow_consumer_disconnects_total") == 1


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[tuple[RedisServer, ServerProcess]]:
    redis = RedisServer(tmp_path / "redis").start()
    proc = ServerProcess(
        tmp_path,
        server_config(
            redis_url=redis.url, node_name="m0", presence_ttl=3, position_check_interval=0.3, redis_timeout=1
        ),
    )
    try:
        proc.start().wait_ready()
        yield redis, proc
    finally:
        proc.kill()
        redis.stop()


async def joined_member(proc: ServerProcess, room: str) -> RawClient:
    client = await RawClient.connected(proc.ws_url, f"member-{uuid.uuid4().hex[:6]}")
    assert "ok" in await client.call("join", room=room)
    return client


@pytest.mark.redis
async def test_redis_metrics_move_with_backfills_lost_history_and_control_messages(
    redis_node: tuple[RedisServer, ServerProcess],
) -> None:
    redis, proc = redis_node
    room = f"chat:{uuid.uuid4().hex[:8]}"
    member = await joined_member(proc, room)  # chat has presence: one entry, one presence round trip
    assert proc.api("POST", "/api/publish", json={"room": room, "data": 1}).status_code == 200
    await member.push("pub")

    def latency_everywhere() -> Scrape:
        found = scrape(proc)
        for client in ("broker", "presence", "cluster"):
            assert found.value("hubbub_redis_command_duration_seconds_count", client=client) >= 1, client
        return found

    found = await until(latency_everywhere, what="round trips of every Redis client timed")
    assert found.value("hubbub_redis_available") == 1
    assert found.value("hubbub_build_info", backend="redis") == 1
    assert found.value("hubbub_presence_entries") == 1
    for name in REDIS_ONLY:
        assert found.has(name + ("_bucket" if SPECS[name].kind == "histogram" else "")), name

    # A lost pub/sub message: the stream moved on, the node was not told. The position check backfills it.
    meta, stream = f"hubbub:{{{room}}}:meta", f"hubbub:{{{room}}}:stream"
    redis.command("HINCRBY", meta, "offset", 1)
    redis.command("XADD", stream, "MAXLEN", 100, "2-1", "d", '"lost"', "t", int(time.time() * 1000), "i", "null")
    assert (await member.push("pub"))["offset"] == 2
    found = scrape(proc)
    assert found.value("hubbub_redis_position_repairs_total") == 1
    assert found.value("hubbub_redis_backfills_total", result="ok") == 1

    # Offsets that are in no stream (trimmed, expired): the backfill fails and the member must recover.
    redis.command("HINCRBY", meta, "offset", 3)
    assert (await member.closed()).code == 4011
    found = await scraped(
        proc,
        lambda s: s.value("hubbub_insufficient_state_disconnects_total", cause="history_trimmed") == 1,
        "the 4011 counted as history_trimmed",
    )
    assert found.value("hubbub_redis_backfills_total", result="failed") == 1
    assert found.value("hubbub_redis_position_repairs_total") == 2

    # The room's history lost (what an empty restart does): the next publication is in a new epoch.
    member = await joined_member(proc, room)
    redis.command("FLUSHALL")
    assert proc.api("POST", "/api/publish", json={"room": room, "data": 2}).status_code == 200
    assert (await member.closed()).code == 4011
    await until(
        lambda: scrape(proc).value("hubbub_insufficient_state_disconnects_total", cause="epoch_changed") == 1,
        what="the 4011 counted as epoch_changed",
    )

    # Control messages that cannot be handled are counted; the channel stays up.
    redis.command("PUBLISH", "hubbub:control", "not json")
    redis.command("PUBLISH", "hubbub:control", '{"op": "disconnect"}')
    await until(lambda: scrape(proc).value("hubbub_redis_control_failures_total") == 2, what="two control failures")
    assert proc.api("POST", "/api/disconnect", json={"user": "nobody"}).json() == {"disconnected": 0}
    assert_bounded(scrape(proc))


@pytest.mark.redis
async def test_redis_going_away_shows_unavailable_with_errors_then_a_subscriber_reconnect(
    redis_node: tuple[RedisServer, ServerProcess],
) -> None:
    redis, proc = redis_node
    await until(lambda: scrape(proc).value("hubbub_redis_available") == 1, what="Redis available")
    assert scrape(proc).value("hubbub_redis_subscriber_reconnects_total") == 0
    redis.stop()

    def down() -> Scrape:
        found = scrape(proc)
        assert found.value("hubbub_redis_available") == 0
        assert found.value("hubbub_ready") == 0
        assert found.value("hubbub_redis_errors_total", client="broker") >= 1
        return found

    found = await until(down, what="Redis unavailable, with errors counted")
    assert found.value("hubbub_redis_errors_total", client="broker", kind="connection") >= 1
    redis.start()

    def back() -> bool:
        found = scrape(proc)
        return (
            found.value("hubbub_redis_available") == 1 and found.value("hubbub_redis_subscriber_reconnects_total") >= 1
        )

    await until(back, what="Redis available again after a subscriber reconnect")
    assert_bounded(scrape(proc))
