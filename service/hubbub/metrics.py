"""Every metric hubbub exports: one table, defined once, with the values each label may take.

Names below are the Prometheus names scraped from `/metrics`; `docs/metrics.md` lists the same
table and a test keeps the two in step. Labels are bounded by construction: never a room, user
or client id (a client could otherwise inflate cardinality without limit). Each label's allowed
values are part of the table (`MetricSpec.values`), and a test checks every exported sample
against them.

How the numbers are kept (all of it on a private registry: several nodes may share a test process):

- Counters and gauges are plain integers (`Tally`) or read when scraped (`Sampled`), exported
  through OpenTelemetry's observable instruments and its Prometheus reader. The SDK's synchronous
  instruments cost ~6 µs a call, paid on the per-publication path several times.
- Histograms are plain integer buckets (`Histogram`), exported by a prometheus_client collector
  (`_Histograms`): OpenTelemetry has no observable histogram, and its synchronous `record` is the
  same ~6 µs. Observing is a bisect and an increment.
- The standard process_* and python_* collectors of prometheus_client.

Layering: this module imports nothing else of hubbub. The node creates `Metrics` before the
backends and hands the Redis backends only `Metrics.redis` (a `RedisMetrics`: plain numbers they
update); what only the node knows (readiness, presence entries) is read through callables it sets
on `Sampled` gauges.
"""

from __future__ import annotations

import asyncio
import http
import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

Kind = Literal["counter", "gauge", "histogram"]

#: Why an upgrade request was refused (or a new connection closed at once: draining, capacity).
HandshakeRefusal = Literal[
    "origin",
    "auth",
    "header_too_large",
    "handshake_timeout",
    "too_many_handshakes",
    "not_websocket",
    "starting",
    "draining",
    "capacity",
]
#: Which limit said no: a command's 429, the ping/pong budget, the demo's token endpoint (the HTTP API has none).
RateLimit = Literal["commands", "control_frames", "demo_token"]
RedisClient = Literal["broker", "presence", "cluster"]
RedisErrorKind = Literal["timeout", "connection", "response", "other"]
BackfillResult = Literal["ok", "failed"]

#: A label whose one value is fixed for the life of the process (the version): bounded, not known here.
PER_PROCESS: Final = None

Values = frozenset[str] | None


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str  # the Prometheus name
    kind: Kind
    labels: tuple[str, ...]
    help: str
    #: label -> the values it may take (PER_PROCESS: one value for the life of the process).
    values: Mapping[str, Values] = field(default_factory=dict)


LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUEUE_BUCKETS: Final = (0, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

#: Seconds between two looks of the event-loop lag probe.
LAG_PROBE_INTERVAL: Final = 0.5

#: Close codes that may appear as a label value: the server's own table, plus 1006 for dropped TCP connections.
_KNOWN_CODES: Final = frozenset(
    {"1000", "1001", "1003", "1006", "1009", "1011", "1012", "1013", "4000", "4001", "4003", "4004", "4008"}
    | {"4009", "4010", "4011", "4029"}
)
#: The protocol's ops less `pong`, which has no result (a test keeps them in step with protocol.OPS).
_OPS: Final = frozenset({"connect", "refresh", "join", "leave", "publish", "history", "presence", "presence_stats"})
#: `ok` or a reply error code (codes.ErrorCode; a test keeps them in step).
_RESULTS: Final = frozenset({"ok", "400", "401", "403", "404", "409", "413", "429", "500", "503"})
#: auth.AUTH_FAILURE_REASONS (a test keeps them in step).
_AUTH_REASONS: Final = frozenset(
    {"malformed", "bad_algorithm", "unknown_key", "bad_signature", "expired", "not_yet_valid", "bad_audience"}
    | {"bad_issuer", "missing_sub", "bad_claims", "missing_token"}
)
#: backends.base.InsufficientStateCause (a test keeps them in step).
_INSUFFICIENT_CAUSES: Final = frozenset(
    {"epoch_changed", "offsets_reused", "history_lost", "history_trimmed", "backfill_exhausted"}
)
#: The HTTP routes' templates (api.routes() and pages.routes(); a test keeps them in step); others are "other".
HTTP_ROUTES: Final = (
    "/api/publish",
    "/api/broadcast",
    "/api/history/{room:path}",
    "/api/presence/{room:path}",
    "/api/presence_stats/{room:path}",
    "/api/disconnect",
    "/api/shed",
    "/api/info",
    "/api/status",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/status",
    "/hubbub.js",
    "/hubbub.d.ts",
    "/static/{name}",
    "/demo/token",
)
_HTTP_STATUSES: Final = frozenset(str(int(status)) for status in http.HTTPStatus)


def _of(literal: object) -> frozenset[str]:
    return frozenset(get_args(literal))


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("hubbub_connections", "gauge", (), "Open WebSocket connections on this node."),
    MetricSpec("hubbub_connects_total", "counter", (), "Connections that completed `connect`."),
    MetricSpec(
        "hubbub_disconnects_total",
        "counter",
        ("code",),
        "Closed connections by close code (server's table only).",
        {"code": _KNOWN_CODES | {"other"}},
    ),
    MetricSpec(
        "hubbub_commands_total",
        "counter",
        ("op", "result"),
        "Commands by op and result (ok or error code).",
        {"op": _OPS, "result": _RESULTS},
    ),
    MetricSpec(
        "hubbub_publications_total",
        "counter",
        ("source",),
        "Publications accepted (source: ws or api).",
        {"source": frozenset({"ws", "api"})},
    ),
    MetricSpec("hubbub_deliveries_total", "counter", (), "Publication pushes queued to local connections."),
    MetricSpec(
        "hubbub_fanout_latency_seconds",
        "histogram",
        (),
        "Time from a publication's acceptance to its push being queued to every local member.",
    ),
    MetricSpec(
        "hubbub_slow_consumer_disconnects_total", "counter", (), "Connections closed 4008 for an over-full queue."
    ),
    MetricSpec(
        "hubbub_auth_failures_total", "counter", ("reason",), "Rejected tokens by reason.", {"reason": _AUTH_REASONS}
    ),
    MetricSpec("hubbub_draining", "gauge", (), "1 while this node is draining, else 0."),
    MetricSpec(
        "hubbub_shed_connections_total",
        "counter",
        (),
        "Connections closed 1012 (reason rebalancing) at the request of POST /api/shed.",
    ),
    MetricSpec(
        "hubbub_handshake_refusals_total",
        "counter",
        ("reason",),
        "WebSocket upgrades refused, and new connections closed at once (draining, capacity), by reason.",
        {"reason": _of(HandshakeRefusal)},
    ),
    MetricSpec(
        "hubbub_outbound_queue_bytes",
        "histogram",
        (),
        "Characters queued to each open connection, sampled every few seconds.",
    ),
    MetricSpec(
        "hubbub_rate_limited_total",
        "counter",
        ("limit",),
        "Requests refused by a rate limit.",
        {"limit": _of(RateLimit)},
    ),
    MetricSpec("hubbub_rate_limit_disconnects_total", "counter", (), "Connections closed 4029 (rate limited)."),
    MetricSpec(
        "hubbub_redis_command_duration_seconds",
        "histogram",
        ("client",),
        "Round trips to Redis by client.",
        {"client": _of(RedisClient)},
    ),
    MetricSpec(
        "hubbub_redis_errors_total",
        "counter",
        ("client", "kind"),
        "Failed Redis calls by client and kind.",
        {"client": _of(RedisClient), "kind": _of(RedisErrorKind)},
    ),
    MetricSpec("hubbub_redis_available", "gauge", (), "1 while Redis is reachable, else 0 (redis backend only)."),
    MetricSpec(
        "hubbub_redis_subscriber_reconnects_total", "counter", (), "Pub/sub connections re-established after a loss."
    ),
    MetricSpec(
        "hubbub_redis_position_repairs_total",
        "counter",
        (),
        "Rooms a position check found out of step with Redis and repaired.",
    ),
    MetricSpec(
        "hubbub_redis_backfills_total",
        "counter",
        ("result",),
        "Backfills from a room's stream, by result.",
        {"result": _of(BackfillResult)},
    ),
    MetricSpec(
        "hubbub_insufficient_state_disconnects_total",
        "counter",
        ("cause",),
        "Connections closed 4011 because publications were lost, by cause.",
        {"cause": _INSUFFICIENT_CAUSES},
    ),
    MetricSpec("hubbub_redis_control_failures_total", "counter", (), "Control-channel listen or handle failures."),
    MetricSpec("hubbub_presence_entries", "gauge", (), "Presence entries held by this node's connections."),
    MetricSpec(
        "hubbub_event_loop_lag_seconds", "histogram", (), "How late a periodic timer fires (event-loop responsiveness)."
    ),
    MetricSpec("hubbub_ready", "gauge", (), "1 while /readyz answers ready, else 0."),
    MetricSpec("hubbub_connection_limit", "gauge", (), "The max_connections setting."),
    MetricSpec(
        "hubbub_api_requests_total",
        "counter",
        ("route", "status"),
        "HTTP requests answered, by route template and status.",
        {"route": frozenset(HTTP_ROUTES) | {"other"}, "status": _HTTP_STATUSES | {"other"}},
    ),
    MetricSpec(
        "hubbub_build_info",
        "gauge",
        ("version", "backend"),
        "Always 1; the labels say which version runs on which backend.",
        {"version": PER_PROCESS, "backend": frozenset({"memory", "redis"})},
    ),
)

_SPECS: Final = {spec.name: spec for spec in METRICS}

Key = tuple[tuple[str, str], ...]


class Tally:
    """A counter (or up-down counter) kept in plain integers and read by OpenTelemetry when scraped.

    The SDK's synchronous `Counter.add` takes a lock, hashes the attributes and runs an aggregation:
    about 6 µs here, paid on the per-publication path several times. A Tally's `add` is a dict update;
    the SDK reads the totals through an observable instrument's callback at collection time.
    """

    __slots__ = ("_counts",)

    def __init__(self, *, zero: bool = False, series: Iterable[Mapping[str, str]] = ()) -> None:
        #: attribute items -> total; `zero` exports the unlabelled series before the first event, `series`
        #: those labelled series (a rate over a bounded set is then defined from the start).
        self._counts: dict[Key, int] = {(): 0} if zero else {}
        for attributes in series:
            self._counts[tuple(attributes.items())] = 0

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, dict(key)) for key, total in list(self._counts.items())]


class Sampled:
    """A gauge read when scraped from `source`; nothing is exported while it has none."""

    __slots__ = ("source",)

    def __init__(self, source: Callable[[], float] | None = None) -> None:
        self.source = source

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        source = self.source
        return [] if source is None else [Observation(source())]


class Histogram:
    """Observations counted per bucket in plain integers (a bisect and an increment each).

    `bounds` are the buckets' inclusive upper bounds (Prometheus `le`); the last count is +Inf.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_sizes(self, sizes: list[int]) -> None:
        """Many non-negative integers at once. Most are zeros (idle queues): counted in one C loop, and only
        the others are bisected (10,000 sizes, 5 % non-zero: ~0.05 ms)."""
        counts, bounds = self.counts, self.bounds
        counts[bisect_left(bounds, 0)] += sizes.count(0)
        for size in filter(None, sizes):
            counts[bisect_left(bounds, size)] += 1
        self.total += sum(sizes)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        les = [_le(bound) for bound in self.bounds] + ["+Inf"]
        return list(zip(les, itertools.accumulate(self.counts), strict=True))


def _le(bound: float) -> str:
    # As Go formats it (what Prometheus itself writes and normalises `le` to): 1.0, 65536.0, 1.6777216e+07.
    formatted: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return formatted


class LagProbe:
    """Event-loop lag: a timer due every LAG_PROBE_INTERVAL records how late it fired.

    A loop busy with something else (a long callback, a full garbage collection) runs every timer
    late by as much; one timer handle, no task.
    """

    __slots__ = ("_due", "_handle", "_histogram", "_loop")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + LAG_PROBE_INTERVAL
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        # uvloop counts in milliseconds: a timer may fire a hair early.
        self._histogram.observe(max(0.0, now - self._due))
        self._arm(now)


class RedisMetrics:
    """What the Redis backends measure, as plain numbers they update; `Metrics` exports them.

    The backends get this object rather than `Metrics` (they need nothing else, and tests build them
    without a node). Nothing of it is exported until `available` has a source: with the memory
    backend there is no Redis to report on.
    """

    __slots__ = ("available", "backfills", "control_failures", "errors", "latency", "position_repairs", "reconnects")

    def __init__(self) -> None:
        self.latency: dict[RedisClient, Histogram] = {c: Histogram(LATENCY_BUCKETS) for c in get_args(RedisClient)}
        self.errors = Tally(
            series=[{"client": c, "kind": k} for c in get_args(RedisClient) for k in get_args(RedisErrorKind)]
        )
        self.reconnects = Tally(zero=True)
        self.position_repairs = Tally(zero=True)
        self.backfills = Tally(series=[{"result": r} for r in get_args(BackfillResult)])
        self.control_failures = Tally(zero=True)
        #: 1 while Redis is reachable; set by the redis backend, which turns the export of all of these on.
        self.available = Sampled()

    @property
    def enabled(self) -> bool:
        return self.available.source is not None

    def error(self, client: RedisClient, kind: RedisErrorKind) -> None:
        self.errors.add(1, {"client": client, "kind": kind})

    def backfill(self, result: BackfillResult) -> None:
        self.backfills.add(1, {"result": result})


class _Histograms:
    """The prometheus_client collector of the plain histograms (same registry as the OpenTelemetry reader)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        for spec in METRICS:
            if spec.kind == "histogram":
                yield HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for name, histogram in (
            ("hubbub_fanout_latency_seconds", m.fanout_latency),
            ("hubbub_outbound_queue_bytes", m.queue_bytes),
            ("hubbub_event_loop_lag_seconds", m.event_loop_lag),
        ):
            family = HistogramMetricFamily(name, _SPECS[name].help)
            family.add_metric([], histogram.cumulative(), histogram.total)
            yield family
        if m.redis.enabled:
            spec = _SPECS["hubbub_redis_command_duration_seconds"]
            family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
            for client, histogram in m.redis.latency.items():
                family.add_metric([client], histogram.cumulative(), histogram.total)
            yield family


def _otel_name(spec: MetricSpec) -> str:
    # The exporter appends `_total` to counters itself.
    return spec.name.removesuffix("_total")


class Metrics:
    """The node's instruments, on a private registry (several nodes may share one test process)."""

    def __init__(self, node_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Scope labels would add three constant labels to every series; `hubbub_connections` must carry none.
        reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self.registry)
        self._provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create({"service.name": "hubbub", "hubbub.node": node_name})
        )
        meter = self._provider.get_meter("hubbub")
        self.redis = RedisMetrics()

        def counter(name: str, tally: Tally | None = None, *, zero: bool = False, redis: bool = False) -> Tally:
            tally = tally or Tally(zero=zero)
            observe = self._when_redis(tally.observe) if redis else tally.observe
            meter.create_observable_counter(_otel_name(_SPECS[name]), [observe], description=_SPECS[name].help)
            return tally

        def gauge(name: str, tally: Tally | None = None) -> Tally:
            tally = tally or Tally(zero=True)
            meter.create_observable_up_down_counter(name, [tally.observe], description=_SPECS[name].help)
            return tally

        def sampled(name: str, probe: Sampled | None = None) -> Sampled:
            probe = probe or Sampled()
            meter.create_observable_gauge(name, [probe.observe], description=_SPECS[name].help)
            return probe

        self.connections = gauge("hubbub_connections")
        self.connects = counter("hubbub_connects_total", zero=True)
        self.disconnects = counter("hubbub_disconnects_total")
        self.commands = counter("hubbub_commands_total")
        self.publications = counter("hubbub_publications_total")
        self.deliveries = counter("hubbub_deliveries_total", zero=True)
        self.fanout_latency = Histogram(LATENCY_BUCKETS)
        self.slow_consumers = counter("hubbub_slow_consumer_disconnects_total", zero=True)
        self.auth_failures = counter("hubbub_auth_failures_total")
        self.draining = gauge("hubbub_draining")
        self.shed = counter("hubbub_shed_connections_total", zero=True)
        self.handshake_refusals = counter(
            "hubbub_handshake_refusals_total", Tally(series=[{"reason": r} for r in get_args(HandshakeRefusal)])
        )
        self.queue_bytes = Histogram(QUEUE_BUCKETS)
        self.rate_limited = counter(
            "hubbub_rate_limited_total", Tally(series=[{"limit": r} for r in get_args(RateLimit)])
        )
        self.rate_limit_disconnects = counter("hubbub_rate_limit_disconnects_total", zero=True)
        counter("hubbub_redis_errors_total", self.redis.errors, redis=True)
        meter.create_observable_gauge(
            "hubbub_redis_available",
            [self.redis.available.observe],
            description=_SPECS["hubbub_redis_available"].help,
        )
        counter("hubbub_redis_subscriber_reconnects_total", self.redis.reconnects, redis=True)
        counter("hubbub_redis_position_repairs_total", self.redis.position_repairs, redis=True)
        counter("hubbub_redis_backfills_total", self.redis.backfills, redis=True)
        counter("hubbub_redis_control_failures_total", self.redis.control_failures, redis=True)
        self.insufficient_state = counter(
            "hubbub_insufficient_state_disconnects_total",
            Tally(series=[{"cause": c} for c in sorted(_INSUFFICIENT_CAUSES)]),
        )
        self.presence_entries = sampled("hubbub_presence_entries")
        self.event_loop_lag = Histogram(LAG_BUCKETS)
        self.ready = sampled("hubbub_ready")
        self.connection_limit = sampled("hubbub_connection_limit")
        self.api_requests = counter("hubbub_api_requests_total")
        self.build_info = gauge("hubbub_build_info", Tally())
        self.registry.register(_Histograms(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._command_attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._cause_attrs = {cause: {"cause": cause} for cause in _INSUFFICIENT_CAUSES}

    def _when_redis(
        self, observe: Callable[[CallbackOptions], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        redis = self.redis
        return lambda options: observe(options) if redis.enabled else []

    def disconnected(self, code: int) -> None:
        label = str(code)
        self.disconnects.add(1, {"code": label if label in _KNOWN_CODES else "other"})
        if code == 4029:
            self.rate_limit_disconnects.add(1)

    def command(self, op: str, result: str) -> None:
        # Attribute dicts are cached: they are built once per (op, result) pair, not per command.
        key = (op, result)
        attrs = self._command_attrs.get(key)
        if attrs is None:
            attrs = self._command_attrs[key] = {"op": op, "result": result}
        self.commands.add(1, attrs)

    def refused(self, reason: HandshakeRefusal) -> None:
        self.handshake_refusals.add(1, {"reason": reason})

    def rate_limit(self, limit: RateLimit) -> None:
        self.rate_limited.add(1, {"limit": limit})

    def insufficient(self, cause: str, connections: int) -> None:
        """`connections` closed 4011 for `cause` (one of backends.base.InsufficientStateCause)."""
        self.insufficient_state.add(connections, self._cause_attrs[cause])

    def api_request(self, route: str, status: int) -> None:
        label = str(status)
        self.api_requests.add(1, {"route": route, "status": label if label in _HTTP_STATUSES else "other"})

    def describe_node(self, *, version: str, backend: str, max_connections: int) -> None:
        """What is fixed for the life of the node: its build and its connection limit."""
        self.build_info.add(1, {"version": version, "backend": backend})
        self.connection_limit.source = lambda: max_connections

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
