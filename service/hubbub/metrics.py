"""Every metric hubbub exports: one table, defined once, exported through OpenTelemetry.

Names below are the Prometheus names scraped from `/metrics`; `docs/metrics.md` lists the same
table and a test keeps the two in step. Labels are bounded by construction: never a room, user
or client id (a client could otherwise inflate cardinality without limit). Close codes are
labelled only from the server's fixed table, and op names only from the protocol's op set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str  # the Prometheus name
    kind: Kind
    labels: tuple[str, ...]
    help: str


LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("hubbub_connections", "gauge", (), "Open WebSocket connections on this node."),
    MetricSpec("hubbub_connects_total", "counter", (), "Connections that completed `connect`."),
    MetricSpec(
        "hubbub_disconnects_total", "counter", ("code",), "Closed connections by close code (server's table only)."
    ),
    MetricSpec("hubbub_commands_total", "counter", ("op", "result"), "Commands by op and result (ok or error code)."),
    MetricSpec("hubbub_publications_total", "counter", ("source",), "Publications accepted (source: ws or api)."),
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
    MetricSpec("hubbub_auth_failures_total", "counter", ("reason",), "Rejected tokens by reason."),
    MetricSpec("hubbub_draining", "gauge", (), "1 while this node is draining, else 0."),
)

#: Close codes that may appear as a label value: the server's own table, plus 1006 for dropped TCP connections.
_KNOWN_CODES: Final = frozenset(
    {"1000", "1001", "1003", "1006", "1009", "1011", "1012", "1013", "4000", "4001", "4003", "4004", "4008"}
    | {"4009", "4010", "4011", "4029"}
)


class Tally:
    """A counter (or up-down counter) kept in plain integers and read by OpenTelemetry when scraped.

    The SDK's synchronous `Counter.add` takes a lock, hashes the attributes and runs an aggregation:
    about 6 µs here, paid on the per-publication path several times. A Tally's `add` is a dict update;
    the SDK reads the totals through an observable instrument's callback at collection time.
    """

    __slots__ = ("_counts",)

    def __init__(self, *, zero: bool = False) -> None:
        #: attribute items -> total; `zero` exports the unlabelled series before the first event.
        self._counts: dict[tuple[tuple[str, str], ...], int] = {(): 0} if zero else {}

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, dict(key)) for key, total in list(self._counts.items())]


def _otel_name(spec: MetricSpec) -> str:
    # The exporter appends `_total` to counters and the unit suffix to histograms itself.
    name = spec.name.removesuffix("_total")
    return name.removesuffix("_seconds") if spec.kind == "histogram" else name


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
        spec = {s.name: s for s in METRICS}

        def counter(name: str, *, zero: bool = False) -> Tally:
            tally = Tally(zero=zero)
            meter.create_observable_counter(_otel_name(spec[name]), [tally.observe], description=spec[name].help)
            return tally

        def gauge(name: str) -> Tally:
            tally = Tally(zero=True)
            meter.create_observable_up_down_counter(
                _otel_name(spec[name]), [tally.observe], description=spec[name].help
            )
            return tally

        self.connections = gauge("hubbub_connections")
        self.connects = counter("hubbub_connects_total", zero=True)
        self.disconnects = counter("hubbub_disconnects_total")
        self.commands = counter("hubbub_commands_total")
        self.publications = counter("hubbub_publications_total")
        self.deliveries = counter("hubbub_deliveries_total", zero=True)
        self.fanout_latency = meter.create_histogram(
            _otel_name(spec["hubbub_fanout_latency_seconds"]),
            unit="s",
            description=spec["hubbub_fanout_latency_seconds"].help,
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        self.slow_consumers = counter("hubbub_slow_consumer_disconnects_total", zero=True)
        self.auth_failures = counter("hubbub_auth_failures_total")
        self.draining = gauge("hubbub_draining")
        self._command_attrs: dict[tuple[str, str], dict[str, str]] = {}

    def disconnected(self, code: int) -> None:
        label = str(code)
        self.disconnects.add(1, {"code": label if label in _KNOWN_CODES else "other"})

    def command(self, op: str, result: str) -> None:
        # Attribute dicts are cached: they are built once per (op, result) pair, not per command.
        key = (op, result)
        attrs = self._command_attrs.get(key)
        if attrs is None:
            attrs = self._command_attrs[key] = {"op": op, "result": result}
        self.commands.add(1, attrs)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
