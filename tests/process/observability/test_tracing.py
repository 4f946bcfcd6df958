"""Tracing: API calls and publications as OpenTelemetry spans, sent over OTLP/HTTP; nothing when off.

In-process nodes export to the SDK's InMemorySpanExporter; real `hubbub serve` processes export to
a real OTLP/HTTP receiver on 127.0.0.1 (tests/support/otlp_receiver.py), alone and through Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, get_tracer_provider
from starlette.applications import Starlette

from hubbub import __version__, api, tracing
from hubbub.auth import Principal
from hubbub.backends import Backends
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.loader import load_settings
from hubbub.node import Node
from hubbub.settings import DEV_API_KEY, Settings
from hubbub.tracing import Tracing
from hubbub.types import Room
from tests.support.inprocess import InProcessClient
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.polling import until
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess, server_config
from tests.support.wsclient import RawClient

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME")


@pytest.fixture(autouse=True)
def _no_otel_variables_of_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing must be on or off by what each test configures, not by the shell it runs in."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def settings(**overrides: Any) -> Settings:
    return load_settings(env={}, overrides={"mode": "development", "node_name": "trace-node", **overrides})


@asynccontextmanager
async def running(node: Node, name: str) -> AsyncIterator[tuple[httpx.AsyncClient, InProcessClient]]:
    """The node started, with one member in room `name` (a real session, in-process), and an HTTP client of
    its API."""
    await node.start()
    member = InProcessClient(
        node, principal=Principal(user="member", rooms=("*",), publish=(), info=None, expires_at=None)
    )
    assert "ok" in await member.call("connect")
    assert "ok" in await member.call("join", room=name)
    app = Starlette(routes=api.routes())
    app.state.node = node
    headers = {"authorization": f"Bearer {DEV_API_KEY}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hubbub", headers=headers
        ) as client:
            yield client, member
    finally:
        await member.close()
        await node.stop()


def memory_backends() -> Backends:
    engine = MemoryEngine()
    return Backends(broker=engine, history=engine, presence=MemoryPresence())


def by_name(spans: Iterable[ReadableSpan]) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in spans:
        assert span.name not in found, f"two {span.name} spans"
        found[span.name] = span
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def no_private_values(attributes: Iterable[tuple[str, Any]], private: Iterable[str]) -> None:
    values = [str(value) for _, value in attributes]
    for secret in private:
        assert not any(secret in value for value in values), f"{secret!r} recorded in {values}"


# --- in process, with the SDK's in-memory exporter ------------------------------------------------


async def test_an_api_publish_is_one_trace_from_the_callers_span_to_the_fanout() -> None:
    exporter = InMemorySpanExporter()
    config = settings()
    node = Node(config, memory_backends(), tracing=Tracing(config, exporter))
    room = f"chat:{uuid.uuid4().hex[:10]}"
    async with running(node, room) as (client, member):
        response = await client.post(
            "/api/publish", json={"room": room, "data": {"text": "secret-data"}}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        assert (await member.push("pub"))["data"] == {"text": "secret-data"}
        assert node.tracing is not None and node.tracing.provider.force_flush()
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /api/publish", "publish", "broker.publish", "fanout"}
    call, publish, broker, fanout = (spans[n] for n in ("POST /api/publish", "publish", "broker.publish", "fanout"))
    # The caller's trace goes on: same trace id, the API span a child of the caller's span.
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {TRACE_ID}
    assert parent_of(call) == int(CALLER_SPAN, 16)
    assert parent_of(publish) == call.context.span_id
    assert parent_of(broker) == publish.context.span_id
    assert parent_of(fanout) == broker.context.span_id
    assert call.kind is SpanKind.SERVER
    assert dict(call.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/api/publish",
        "http.response.status_code": 200,
    }
    assert dict(publish.attributes or {}) == {"hubbub.namespace": "chat", "hubbub.source": "api"}
    assert dict(broker.attributes or {}) == {"hubbub.backend": "memory"}
    assert dict(fanout.attributes or {}) == {"hubbub.namespace": "chat", "hubbub.members": 1}
    resource = dict(call.resource.attributes)
    assert resource["service.name"] == "hubbub"
    assert resource["service.instance.id"] == "trace-node"
    assert resource["service.version"] == __version__
    for span in spans.values():
        no_private_values((span.attributes or {}).items(), [room.partition(":")[2], "secret-data", DEV_API_KEY])


async def test_a_websocket_publish_starts_its_own_trace_and_routes_name_no_room() -> None:
    exporter = InMemorySpanExporter()
    config = settings()
    node = Node(config, memory_backends(), tracing=Tracing(config, exporter))
    room = f"chat:{uuid.uuid4().hex[:10]}"
    async with running(node, room) as (client, member):
        options = config.namespace("chat")
        assert options is not None
        await node.publish(Room(room), {"text": "hello"}, None, options, info={"user": "alice"}, source="ws")
        history = await client.get(f"/api/history/{room}")
        unauthorized = await client.post("/api/publish", json={}, headers={"authorization": "Bearer wrong"})
        assert (history.status_code, unauthorized.status_code) == (200, 401)
        assert node.tracing is not None and node.tracing.provider.force_flush()
    spans = exporter.get_finished_spans()
    publish = next(s for s in spans if s.name == "publish")
    assert publish.parent is None  # a root span: nothing called the WebSocket publish
    assert dict(publish.attributes or {}) == {"hubbub.namespace": "chat", "hubbub.source": "ws"}
    names = sorted(s.name for s in spans)
    assert names == sorted(["publish", "broker.publish", "fanout", "GET /api/history/{room:path}", "POST /api/publish"])
    refused = next(s for s in spans if s.name == "POST /api/publish")
    assert dict(refused.attributes or {})["http.response.status_code"] == 401
    for span in spans:
        no_private_values([("name", span.name), *(span.attributes or {}).items()], [room, "alice", "hello"])


async def test_without_tracing_no_provider_is_made_and_publishing_works(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_provider(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a TracerProvider was made with tracing off")

    monkeypatch.setattr(tracing, "TracerProvider", no_provider)
    global_provider = get_tracer_provider()
    node = Node(settings(), memory_backends())
    assert node.tracing is None
    room = f"chat:{uuid.uuid4().hex[:10]}"
    async with running(node, room) as (client, member):
        assert node.backends.broker._handler is node.hub  # type: ignore[attr-defined]  # the hub itself, unwrapped
        response = await client.post(
            "/api/publish", json={"room": room, "data": 1}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        assert (await member.push("pub"))["data"] == 1
    assert get_tracer_provider() is global_provider


def test_the_standard_otlp_variables_turn_tracing_on_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.configured_endpoint(settings()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.configured_endpoint(settings()) == ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    assert tracing.configured_endpoint(settings())[0] == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # type: ignore[index]
    assert tracing.configured_endpoint(settings(otlp_endpoint="http://mine:4318")) == (
        "otlp_endpoint",
        "http://mine:4318",
    )
    made = Tracing.from_settings(settings())
    assert made is not None
    made.shutdown()


@pytest.mark.parametrize(
    ("source", "endpoint", "url"),
    [
        ("otlp_endpoint", "http://collector:4318", "http://collector:4318/v1/traces"),
        ("otlp_endpoint", "http://collector:4318/", "http://collector:4318/v1/traces"),
        ("otlp_endpoint", "https://tempo.example/otlp/v1/traces", "https://tempo.example/otlp/v1/traces"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base", "http://collector:4318/base/v1/traces"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318", "http://collector:4318"),
    ],
)
def test_spans_go_to_v1_traces_unless_the_url_names_its_path(source: str, endpoint: str, url: str) -> None:
    assert tracing.traces_url(source, endpoint) == url


# --- real processes, real OTLP/HTTP receiver ---------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running_receiver = OtlpReceiver().start()
    yield running_receiver
    running_receiver.stop()


@pytest.fixture
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server processes inherit this: their batches leave within 100 ms, not the SDK's 5 s."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


def received_tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> dict[str, ReceivedSpan]:
    """`root` and its descendants among `spans`, by name (each name once)."""
    tree = {root.name: root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for span in spans:
            if span.trace_id == root.trace_id and span.parent_span_id == parent.span_id:
                assert span.name not in tree, f"two {span.name} spans under {root.name}"
                tree[span.name] = span
                frontier.append(span)
    return tree


@pytest.mark.usefixtures("quick_batches")
async def test_a_served_node_sends_api_and_websocket_publish_traces_to_an_otlp_receiver(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    server = ServerProcess(tmp_path, server_config(otlp_endpoint=receiver.url, node_name="traced-node")).start()
    try:
        room = f"chat:{uuid.uuid4().hex[:10]}"
        member = await RawClient.connected(server.ws_url, "member-user")
        assert "ok" in await member.call("join", room=room)
        headers = {"authorization": "Bearer test-api-key", "traceparent": TRACEPARENT}
        response = httpx.post(
            f"{server.http_url}/api/publish", json={"room": room, "data": "from-the-api"}, headers=headers, timeout=10
        )
        assert response.status_code == 200
        assert (await member.push("pub"))["data"] == "from-the-api"
        publisher = await RawClient.connected(server.ws_url, "publisher-user")
        assert "ok" in await publisher.call("publish", room=room, data="from-a-socket")
        assert (await member.push("pub"))["data"] == "from-a-socket"

        def both_traces() -> tuple[dict[str, ReceivedSpan], dict[str, ReceivedSpan]]:
            spans = receiver.snapshot()
            api_call = next(s for s in spans if s.name == "POST /api/publish")
            ws_publish = next(s for s in spans if s.name == "publish" and s.attributes["hubbub.source"] == "ws")
            api_tree, ws_tree = received_tree(spans, api_call), received_tree(spans, ws_publish)
            assert set(api_tree) == {"POST /api/publish", "publish", "broker.publish", "fanout"}, api_tree
            assert set(ws_tree) == {"publish", "broker.publish", "fanout"}, ws_tree
            return api_tree, ws_tree

        api_tree, ws_tree = await until(both_traces, what="the API and WebSocket publish traces")
    finally:
        server.stop()
    assert set(receiver.paths) == {"/v1/traces"}
    call = api_tree["POST /api/publish"]
    assert (call.trace_id, call.parent_span_id, call.kind) == (TRACE_ID, CALLER_SPAN, "SERVER")
    assert call.attributes == {
        "http.request.method": "POST",
        "http.route": "/api/publish",
        "http.response.status_code": 200,
    }
    assert api_tree["publish"].parent_span_id == call.span_id
    assert api_tree["publish"].attributes == {"hubbub.namespace": "chat", "hubbub.source": "api"}
    assert ws_tree["publish"].parent_span_id == ""  # a root span
    for tree in (api_tree, ws_tree):
        assert tree["broker.publish"].parent_span_id == tree["publish"].span_id
        assert tree["broker.publish"].attributes == {"hubbub.backend": "memory"}
        assert tree["fanout"].parent_span_id == tree["broker.publish"].span_id
        assert tree["fanout"].attributes == {"hubbub.namespace": "chat", "hubbub.members": 1}
    resource = call.resource
    assert (resource["service.name"], resource["service.instance.id"]) == ("hubbub", "traced-node")
    assert resource["service.version"] == __version__
    private = [room, room.partition(":")[2], "member-user", "publisher-user", "from-the-api", "from-a-socket"]
    for span in receiver.snapshot():
        no_private_values([("name", span.name), *span.attributes.items()], private)


@pytest.mark.redis
@pytest.mark.usefixtures("quick_batches")
async def test_through_redis_each_nodes_fanout_continues_the_publishers_trace(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    nodes: list[ServerProcess] = []
    try:
        for name in ("node-a", "node-b"):
            config = server_config(otlp_endpoint=receiver.url, node_name=name, redis_url=redis.url)
            nodes.append(ServerProcess(tmp_path, config).start().wait_ready())
        publisher_node, member_node = nodes
        async with httpx.AsyncClient(timeout=5) as http:
            for node in nodes:  # healthy at once; ready once its Redis connections are up

                async def ready(url: str = node.http_url) -> bool:
                    return (await http.get(url + "/readyz")).status_code == 200

                await until(ready, what=f"{node.http_url}/readyz to answer 200")
        room = f"chat:{uuid.uuid4().hex[:10]}"
        member = await RawClient.connected(member_node.ws_url, "member-user")
        assert "ok" in await member.call("join", room=room)
        response = publisher_node.api("POST", "/api/publish", json={"room": room, "data": "across"})
        assert response.status_code == 200
        assert (await member.push("pub"))["data"] == "across"

        def fanout_on_b() -> tuple[ReceivedSpan, ReceivedSpan]:
            spans = receiver.snapshot()
            fanout = next(s for s in spans if s.name == "fanout" and s.resource["service.instance.id"] == "node-b")
            broker = next(s for s in spans if s.name == "broker.publish" and s.span_id == fanout.parent_span_id)
            return broker, fanout

        broker, fanout = await until(fanout_on_b, what="node-b's fan-out span under node-a's broker.publish")
    finally:
        for node in nodes:
            node.stop()
        redis.stop()
    assert broker.resource["service.instance.id"] == "node-a"
    assert broker.trace_id == fanout.trace_id
    assert broker.attributes == {"db.system": "redis", "hubbub.backend": "redis"}
    assert fanout.attributes == {"hubbub.namespace": "chat", "hubbub.members": 1}
