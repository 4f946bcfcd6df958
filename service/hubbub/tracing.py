"""Tracing: spans of the HTTP API calls and of a publication's way to the members, sent over OTLP/HTTP.

Off unless an OTLP endpoint is configured (`otlp_endpoint`, or the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`). Off, the node holds no
`Tracing` (None) and every traced call site tests that once: nothing calls into OpenTelemetry per
publication or per delivery. On, the spans are:

    POST /api/publish          SERVER    (an API call; continues an incoming W3C `traceparent`)
      publish                  PRODUCER  (root for a WebSocket publish)
        broker.publish         CLIENT
          fanout               CONSUMER  (on every node with members; through Redis, see below)

Attributes never carry a room name, user, client id, data or token: a room is recorded by its
namespace only, and a failure by its exception's type, not its text (which may quote a key).

Through Redis the publishing node's `broker.publish` context rides in hubbub's internal pub/sub
message (an extra `tp` field, W3C traceparent, which nodes without tracing or older nodes ignore),
so each node's `fanout` span is a child of it, in the same trace. The provider is the node's own:
the global tracer provider is never set, so several nodes in one process stay apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Final, Protocol
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.requests import Request
from starlette.responses import Response

from hubbub import __version__
from hubbub.backends.base import BrokerEventHandler, InsufficientStateCause, PublishResult
from hubbub.preflight import redact
from hubbub.protocol import Publication
from hubbub.rules import namespace_of
from hubbub.settings import Settings
from hubbub.types import JSONObject, Room

log = logging.getLogger("hubbub.tracing")

#: The standard variables the OTLP exporter reads itself when `otlp_endpoint` is not set, most specific first.
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: The OTLP/HTTP path of traces, appended to an `otlp_endpoint` given without a path.
TRACES_PATH: Final = "/v1/traces"

#: W3C Trace Context only: the global propagator (OTEL_PROPAGATORS) is not consulted.
_PROPAGATOR: Final = TraceContextTextMapPropagator()

Attributes = Mapping[str, AttributeValue]


class FanOut(BrokerEventHandler, Protocol):
    """The node's local fan-out (`hub.Hub`) as the traced handler sees it: typed here rather than imported,
    since `hubbub.hub` sits in a layer that `hubbub.preflight`, which imports this module, may not reach."""

    def members(self, room: Room) -> int:
        """Local members of `room`."""


def configured_endpoint(settings: Settings, environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """Where spans would go, as (the setting or variable that says so, its value); None: tracing is off."""
    if settings.otlp_endpoint:
        return "otlp_endpoint", settings.otlp_endpoint
    for name in ENDPOINT_VARIABLES:
        if environ.get(name):
            return name, environ[name]
    return None


def traces_url(source: str, endpoint: str) -> str:
    """The URL spans are posted to. `otlp_endpoint` without a path gets the standard `/v1/traces`, as
    OTEL_EXPORTER_OTLP_ENDPOINT always does (the OTLP exporter specification); the traces variable is used as is."""
    if source == "OTEL_EXPORTER_OTLP_ENDPOINT" or (source == "otlp_endpoint" and urlsplit(endpoint).path in ("", "/")):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


class Tracing:
    """The node's tracer provider (a BatchSpanProcessor in front of `exporter`) and what hubbub traces with it."""

    def __init__(self, settings: Settings, exporter: SpanExporter) -> None:
        attributes: dict[str, AttributeValue] = {
            "service.instance.id": settings.node_name,
            "service.version": __version__,
        }
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "hubbub"  # else Resource.create takes the operator's name
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
            resource=Resource.create(attributes),
            # The node shuts it down (flushing) when it stops; no second shutdown at exit.
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("hubbub", __version__)
        self._broker_attributes: dict[str, Attributes] = {
            "redis": {"db.system": "redis", "hubbub.backend": "redis"},
            "memory": {"hubbub.backend": "memory"},
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """The node's tracing as configured, exporting over OTLP/HTTP (protobuf); None when it is off."""
        found = configured_endpoint(settings)
        if found is None:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        source, endpoint = found
        url = traces_url(source, endpoint)
        # From the variables the exporter resolves the URL itself (and reads its other OTEL_EXPORTER_OTLP_* ones).
        exporter = OTLPSpanExporter(endpoint=url if source == "otlp_endpoint" else None)
        log.info("tracing: spans to %s (from %s), sample ratio %g", redact(url), source, settings.trace_sample_ratio)
        return cls(settings, exporter)

    def shutdown(self) -> None:
        """Export what is still buffered and stop. Blocks up to the exporter's timeout when the receiver is down."""
        self.provider.shutdown()

    # --- spans ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _span(
        self, name: str, kind: SpanKind, attributes: Attributes, context: Context | None = None
    ) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            # An exception's text may quote a room or a Redis key: only its type is recorded.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(StatusCode.ERROR)
                raise

    async def api_call(self, request: Request, respond: Callable[[], Awaitable[Response]]) -> Response:
        """An HTTP API call in a SERVER span named after its route template, never its path (rooms are in it)."""
        method = request.method
        route: str | None = getattr(request.scope.get("route"), "path", None)
        attributes: dict[str, AttributeValue] = {"http.request.method": method}
        if route is not None:
            attributes["http.route"] = route
        parent = _PROPAGATOR.extract(request.headers)
        with self._span(f"{method} {route}" if route else method, SpanKind.SERVER, attributes, parent) as span:
            try:
                response = await respond()
            except Exception:
                span.set_attribute("http.response.status_code", 500)  # what Starlette answers for it
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(StatusCode.ERROR)
            return response

    async def publish(
        self, room: Room, source: str, backend: str, published: Awaitable[PublishResult]
    ) -> PublishResult:
        """Await the broker's `published` in a `publish` span and its `broker.publish` child."""
        attributes = {"hubbub.namespace": namespace_of(room), "hubbub.source": source}
        with self._span("publish", SpanKind.PRODUCER, attributes) as span:
            with self._span("broker.publish", SpanKind.CLIENT, self._broker_attributes.get(backend, {})):
                result = await published
            if result.duplicate:
                span.set_attribute("hubbub.duplicate", True)
            return result

    def handler(self, hub: FanOut) -> TracedHandler:
        """The hub as the broker's event handler, with each fan-out in a span."""
        return TracedHandler(hub, self)

    def traceparent(self) -> str | None:
        """The current span's context as a W3C traceparent, for a message that leaves the process."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")


class TracedHandler:
    """The BrokerEventHandler a tracing node gives its broker: the hub, with a `fanout` span per publication.

    Chosen at start-up in place of the hub itself, so a node without tracing runs the hub's
    `on_publication` directly. The span's parent is the current context (in-process brokers deliver
    inside `broker.publish`) or, for a publication that came through Redis, the publisher's context
    that the broker passes in `remote_parent`.
    """

    def __init__(self, hub: FanOut, tracing: Tracing) -> None:
        self.hub = hub
        self.tracing = tracing
        self._parent: Context | None = None

    def traceparent(self) -> str | None:
        return self.tracing.traceparent()

    @contextlib.contextmanager
    def remote_parent(self, traceparent: object) -> Iterator[None]:
        """Fan-outs within this block continue `traceparent` (from another node); a root span without one."""
        carrier = {"traceparent": traceparent} if isinstance(traceparent, str) else {}
        self._parent = _PROPAGATOR.extract(carrier)  # an empty Context when absent or malformed
        try:
            yield
        finally:
            self._parent = None

    def on_publication(self, room: Room, epoch: str, pub: Publication) -> None:
        attributes: Attributes = {"hubbub.namespace": namespace_of(room), "hubbub.members": self.hub.members(room)}
        with self.tracing._span("fanout", SpanKind.CONSUMER, attributes, self._parent):
            self.hub.on_publication(room, epoch, pub)

    def on_join(self, room: Room, info: JSONObject) -> None:
        self.hub.on_join(room, info)

    def on_leave(self, room: Room, info: JSONObject) -> None:
        self.hub.on_leave(room, info)

    def on_insufficient_state(self, room: Room, cause: InsufficientStateCause) -> None:
        self.hub.on_insufficient_state(room, cause)
