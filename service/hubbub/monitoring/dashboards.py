"""hubbub's Grafana dashboards, built with Grafana's own types (grafana-foundation-sdk).

Two dashboards, each a table of rows and panels below, turned into Grafana's JSON model by the SDK:

- "hubbub / overview" (uid `hubbub-overview`): the service in a namespace, the selected pods summed.
- "hubbub / node" (uid `hubbub-node`): the same per pod, plus what only a node has: its outbound
  queues, presence entries, process CPU, memory, file descriptors and garbage collection.

Both have three variables: `datasource` (any Prometheus), `namespace` and `pod` (from the labels
Kubernetes service discovery attaches to every scraped series). Every query selects
`namespace="$namespace", pod=~"$pod"`; every rate() and increase() uses `$__rate_interval`;
quantiles are `histogram_quantile` over `sum by (le)` of the buckets' rates; gauges are never
rated. `python -m hubbub.monitoring` writes the JSON files; the service never imports this module
(the SDK is in the `dev` extra only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

#: The token queries below write for the dashboard's selection; replaced by SELECTION.
SEL: Final = "SEL"
SELECTION: Final = 'namespace="$namespace", pod=~"$pod"'
DATASOURCE: Final = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE: Final = "$__rate_interval"

Kind = Literal["timeseries", "stat"]


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    kind: Kind = "timeseries"
    width: int = 12
    stacked: bool = False


@dataclass(frozen=True, slots=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...]


def q(expr: str, legend: str) -> Target:
    """A query; `SEL` in it stands for the dashboard's selection (`{SEL}`, `{code="4011", SEL}`)."""
    return Target(expr.replace(SEL, SELECTION), legend)


def rate(metric: str, by: str = "", matchers: str = "") -> str:
    """`sum [by (...)] (rate(metric{matchers, SEL}[$__rate_interval]))`."""
    selector = f"{{{matchers}, {SEL}}}" if matchers else f"{{{SEL}}}"
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[{RATE}]))"


def quantile(phi: float, histogram: str, by: str = "") -> str:
    """The phi-quantile of a histogram over the selection, from its buckets' rates."""
    keys = f"{by}, le" if by else "le"
    return f"histogram_quantile({phi:g}, sum by ({keys}) (rate({histogram}_bucket{{{SEL}}}[{RATE}])))"


def panel(title: str, description: str, unit: str, *targets: Target, **options: Any) -> PanelSpec:
    return PanelSpec(title, description, unit, targets, **options)


# -- overview: the selected pods of a namespace, summed --------------------------------------------

OVERVIEW: Final = DashboardSpec(
    uid="hubbub-overview",
    title="hubbub / overview",
    description=(
        "hubbub in one namespace: connections, traffic, errors, Redis and node health. Runbooks: docs/runbooks.md."
    ),
    rows=(
        (
            "Connections",
            (
                panel(
                    "Connections",
                    "Open WebSocket connections: the total over the selected pods, and each pod's "
                    "(hubbub_connections, a gauge).",
                    "short",
                    q(f"sum(hubbub_connections{{{SEL}}})", "total"),
                    q(f"sum by (pod) (hubbub_connections{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Connection capacity used",
                    "Each pod's open connections as a fraction of its max_connections (hubbub_connection_limit). "
                    "Past 1, new connections close 1013 and the pod reports not ready. "
                    "Alert: HubbubNearConnectionCapacity.",
                    "percentunit",
                    q(f"max by (pod) (hubbub_connections{{{SEL}}} / hubbub_connection_limit{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Connects and disconnects by close code",
                    "Connections that completed `connect` per second, and closed connections per second by close "
                    "code (docs/protocol.md lists the codes; 1006: dropped without a close frame).",
                    "cps",
                    q(rate("hubbub_connects_total"), "connects"),
                    q(rate("hubbub_disconnects_total", "code"), "close {{code}}"),
                ),
                panel(
                    "Handshake refusals by reason",
                    "WebSocket upgrades refused before a connection opened, per second, by reason (origin, auth, "
                    "header_too_large, handshake_timeout, too_many_handshakes, not_websocket, starting, draining, "
                    "capacity).",
                    "cps",
                    q(rate("hubbub_handshake_refusals_total", "reason"), "{{reason}}"),
                ),
            ),
        ),
        (
            "Traffic",
            (
                panel(
                    "Publications per second",
                    "Publications accepted per second, by source: ws (clients) or api (the HTTP API).",
                    "cps",
                    q(rate("hubbub_publications_total", "source"), "{{source}}"),
                    stacked=True,
                ),
                panel(
                    "Deliveries per second",
                    "Publication pushes queued to local connections per second: publications times their "
                    "rooms' local members.",
                    "cps",
                    q(rate("hubbub_deliveries_total"), "deliveries"),
                ),
                panel(
                    "Fan-out latency",
                    "Time from a publication's acceptance to its push being queued to every local member: p50 "
                    "and p99 over the selected pods. Alert: HubbubFanoutLatencyHigh.",
                    "s",
                    q(quantile(0.5, "hubbub_fanout_latency_seconds"), "p50"),
                    q(quantile(0.99, "hubbub_fanout_latency_seconds"), "p99"),
                ),
                panel(
                    "Command errors by code",
                    "Commands answered with an error, per second, by op and reply code (400, 403, 404, 409, 413, "
                    "429, 503...). Alert: HubbubHighErrorRate.",
                    "cps",
                    q(rate("hubbub_commands_total", "op, result", 'result!="ok"'), "{{op}} {{result}}"),
                ),
                panel(
                    "HTTP API requests by route and status",
                    "Server API requests per second, by route template and HTTP status.",
                    "reqps",
                    q(rate("hubbub_api_requests_total", "route, status"), "{{route}} {{status}}"),
                ),
            ),
        ),
        (
            "Protection",
            (
                panel(
                    "Slow consumers (4008)",
                    "Connections closed 4008 per second because their outbound queue passed max_queue_bytes. "
                    "Alert: HubbubSlowConsumerStorm.",
                    "cps",
                    q(rate("hubbub_slow_consumer_disconnects_total"), "4008 closes"),
                ),
                panel(
                    "Rate limiting",
                    "Requests refused by a rate limit per second, by limit (commands: 429 replies; "
                    "control_frames; api; demo_token), and connections closed 4029 for going on.",
                    "cps",
                    q(rate("hubbub_rate_limited_total", "limit"), "{{limit}}"),
                    q(rate("hubbub_rate_limit_disconnects_total"), "4029 closes"),
                ),
                panel(
                    "Auth failures by reason",
                    "Rejected tokens per second, by reason (expired, bad_signature, unknown_key, ...). "
                    "Alert: HubbubAuthFailureSpike.",
                    "cps",
                    q(rate("hubbub_auth_failures_total", "reason"), "{{reason}}"),
                ),
            ),
        ),
        (
            "Redis",
            (
                panel(
                    "Redis command latency",
                    "Duration of Redis commands, p50 and p99 per client (broker, presence, cluster). "
                    "Alert: HubbubRedisLatencyHigh.",
                    "s",
                    q(quantile(0.5, "hubbub_redis_command_duration_seconds", "client"), "p50 {{client}}"),
                    q(quantile(0.99, "hubbub_redis_command_duration_seconds", "client"), "p99 {{client}}"),
                ),
                panel(
                    "Redis errors",
                    "Failed Redis commands per second, by client and kind (timeout, connection, response, other), "
                    "and control-channel failures.",
                    "cps",
                    q(rate("hubbub_redis_errors_total", "client, kind"), "{{client}} {{kind}}"),
                    q(rate("hubbub_redis_control_failures_total"), "control channel"),
                ),
                panel(
                    "Redis availability",
                    "Whether each pod reaches Redis (hubbub_redis_available, a gauge; only with the redis "
                    "backend). Alert: HubbubRedisUnavailable.",
                    "bool_yes_no",
                    q(f"min by (pod) (hubbub_redis_available{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Redis subscriber: reconnects, backfills, repairs",
                    "Per second: subscriber reconnects, room backfills after a gap (ok, failed) and position "
                    "repairs (a room found behind and caught up).",
                    "cps",
                    q(rate("hubbub_redis_subscriber_reconnects_total"), "subscriber reconnects"),
                    q(rate("hubbub_redis_backfills_total", "result"), "backfills {{result}}"),
                    q(rate("hubbub_redis_position_repairs_total"), "position repairs"),
                ),
                panel(
                    "Insufficient state closes (4011) by cause",
                    "Connections closed 4011 per second, by cause (epoch_changed, offsets_reused, history_lost, "
                    "history_trimmed, backfill_exhausted): their clients must resynchronise. "
                    "Alert: HubbubInsufficientStateCloses.",
                    "cps",
                    q(rate("hubbub_insufficient_state_disconnects_total", "cause"), "{{cause}}"),
                ),
            ),
        ),
        (
            "Nodes",
            (
                panel(
                    "Ready pods",
                    "Pods that would answer /readyz ready (hubbub_ready), among the pods reporting. "
                    "Alert: HubbubNoReadyNodes.",
                    "short",
                    q(f"sum(hubbub_ready{{{SEL}}})", "ready"),
                    q(f"count(hubbub_ready{{{SEL}}})", "reporting"),
                    kind="stat",
                    width=6,
                ),
                panel(
                    "Draining pods",
                    "Pods draining after SIGTERM (hubbub_draining). A drain should last drain_delay + "
                    "drain_period. Alert: HubbubStuckDraining.",
                    "short",
                    q(f"sum(hubbub_draining{{{SEL}}})", "draining"),
                    kind="stat",
                    width=6,
                ),
                panel(
                    "Event-loop lag",
                    "p99 lateness of each pod's 0.5 s probe timer: how long anything on that node waits for "
                    "the event loop. Alert: HubbubEventLoopLag.",
                    "s",
                    q(quantile(0.99, "hubbub_event_loop_lag_seconds", "pod"), "p99 {{pod}}"),
                ),
                panel(
                    "Versions running",
                    "Pods by hubbub version and backend (hubbub_build_info): two versions at once during a "
                    "rollout, one otherwise.",
                    "short",
                    q(f"count by (version, backend) (hubbub_build_info{{{SEL}}})", "{{version}} ({{backend}})"),
                ),
            ),
        ),
    ),
)


# -- node: the same per pod, and the process -------------------------------------------------------

NODE: Final = DashboardSpec(
    uid="hubbub-node",
    title="hubbub / node",
    description=(
        "hubbub per pod: connections, traffic, errors, Redis, queues and the process. Runbooks: docs/runbooks.md."
    ),
    rows=(
        (
            "Connections",
            (
                panel(
                    "Connections by pod",
                    "Open WebSocket connections on each pod (hubbub_connections, a gauge).",
                    "short",
                    q(f"sum by (pod) (hubbub_connections{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Connection capacity used by pod",
                    "Each pod's open connections as a fraction of its max_connections (hubbub_connection_limit).",
                    "percentunit",
                    q(f"max by (pod) (hubbub_connections{{{SEL}}} / hubbub_connection_limit{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Connects and disconnects by pod",
                    "Per pod and second: connections that completed `connect`, and closed connections by code.",
                    "cps",
                    q(rate("hubbub_connects_total", "pod"), "{{pod}} connects"),
                    q(rate("hubbub_disconnects_total", "pod, code"), "{{pod}} close {{code}}"),
                ),
                panel(
                    "Handshake refusals by pod",
                    "WebSocket upgrades refused per second, by pod and reason.",
                    "cps",
                    q(rate("hubbub_handshake_refusals_total", "pod, reason"), "{{pod}} {{reason}}"),
                ),
            ),
        ),
        (
            "Traffic",
            (
                panel(
                    "Publications by pod",
                    "Publications accepted per second on each pod, by source (ws, api).",
                    "cps",
                    q(rate("hubbub_publications_total", "pod, source"), "{{pod}} {{source}}"),
                ),
                panel(
                    "Deliveries by pod",
                    "Publication pushes queued to each pod's connections per second.",
                    "cps",
                    q(rate("hubbub_deliveries_total", "pod"), "{{pod}}"),
                ),
                panel(
                    "Fan-out latency by pod",
                    "p50 and p99 from a publication's acceptance to its push being queued to every local member, "
                    "per pod.",
                    "s",
                    q(quantile(0.5, "hubbub_fanout_latency_seconds", "pod"), "p50 {{pod}}"),
                    q(quantile(0.99, "hubbub_fanout_latency_seconds", "pod"), "p99 {{pod}}"),
                ),
                panel(
                    "Command errors by pod",
                    "Commands answered with an error per second, by pod and reply code.",
                    "cps",
                    q(rate("hubbub_commands_total", "pod, result", 'result!="ok"'), "{{pod}} {{result}}"),
                ),
            ),
        ),
        (
            "Queues and presence",
            (
                panel(
                    "Outbound queue bytes",
                    "Distribution of the bytes queued for each open connection (sampled every few seconds by "
                    "the node's ticker): p50, p90, p99 per pod. Past max_queue_bytes a connection closes 4008.",
                    "bytes",
                    q(quantile(0.5, "hubbub_outbound_queue_bytes", "pod"), "p50 {{pod}}"),
                    q(quantile(0.9, "hubbub_outbound_queue_bytes", "pod"), "p90 {{pod}}"),
                    q(quantile(0.99, "hubbub_outbound_queue_bytes", "pod"), "p99 {{pod}}"),
                ),
                panel(
                    "Slow consumers and rate limiting by pod",
                    "Per pod and second: 4008 closes (queue over max_queue_bytes), rate-limited requests by limit "
                    "and 4029 closes.",
                    "cps",
                    q(rate("hubbub_slow_consumer_disconnects_total", "pod"), "{{pod}} 4008"),
                    q(rate("hubbub_rate_limited_total", "pod, limit"), "{{pod}} limited {{limit}}"),
                    q(rate("hubbub_rate_limit_disconnects_total", "pod"), "{{pod}} 4029"),
                ),
                panel(
                    "Presence entries",
                    "Presence entries held by each pod's connections (hubbub_presence_entries, a gauge).",
                    "short",
                    q(f"sum by (pod) (hubbub_presence_entries{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Auth failures by pod",
                    "Rejected tokens per second, by pod and reason.",
                    "cps",
                    q(rate("hubbub_auth_failures_total", "pod, reason"), "{{pod}} {{reason}}"),
                ),
            ),
        ),
        (
            "Redis",
            (
                panel(
                    "Redis command latency by pod",
                    "p99 duration of Redis commands per pod and client (broker, presence, cluster).",
                    "s",
                    q(quantile(0.99, "hubbub_redis_command_duration_seconds", "pod, client"), "p99 {{pod}} {{client}}"),
                ),
                panel(
                    "Redis errors by pod",
                    "Failed Redis commands per second, by pod, client and kind; control-channel failures.",
                    "cps",
                    q(rate("hubbub_redis_errors_total", "pod, client, kind"), "{{pod}} {{client}} {{kind}}"),
                    q(rate("hubbub_redis_control_failures_total", "pod"), "{{pod}} control channel"),
                ),
                panel(
                    "Redis availability by pod",
                    "Whether each pod reaches Redis (hubbub_redis_available, a gauge; redis backend only).",
                    "bool_yes_no",
                    q(f"min by (pod) (hubbub_redis_available{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "Redis recovery by pod",
                    "Per pod and second: subscriber reconnects, backfills (ok, failed), position repairs and "
                    "4011 closes by cause.",
                    "cps",
                    q(rate("hubbub_redis_subscriber_reconnects_total", "pod"), "{{pod}} reconnects"),
                    q(rate("hubbub_redis_backfills_total", "pod, result"), "{{pod}} backfills {{result}}"),
                    q(rate("hubbub_redis_position_repairs_total", "pod"), "{{pod}} repairs"),
                    q(rate("hubbub_insufficient_state_disconnects_total", "pod, cause"), "{{pod}} 4011 {{cause}}"),
                ),
            ),
        ),
        (
            "Node state",
            (
                panel(
                    "Ready and draining",
                    "Per pod: 1 while it would answer /readyz ready (hubbub_ready), 1 while draining "
                    "(hubbub_draining).",
                    "short",
                    q(f"max by (pod) (hubbub_ready{{{SEL}}})", "{{pod}} ready"),
                    q(f"max by (pod) (hubbub_draining{{{SEL}}})", "{{pod}} draining"),
                ),
                panel(
                    "Rebalancing sheds by pod",
                    "Connections each pod closed per second (1012, reason rebalancing) when asked to shed "
                    "its excess after a scale-out (hubbub_shed_connections_total; the operator's Rebalanced "
                    "events say why). Their clients reconnect to the other pods, recovering.",
                    "cps",
                    q(rate("hubbub_shed_connections_total", "pod"), "{{pod}} shed"),
                ),
                panel(
                    "Event-loop lag by pod",
                    "p50 and p99 lateness of each pod's 0.5 s probe timer.",
                    "s",
                    q(quantile(0.5, "hubbub_event_loop_lag_seconds", "pod"), "p50 {{pod}}"),
                    q(quantile(0.99, "hubbub_event_loop_lag_seconds", "pod"), "p99 {{pod}}"),
                ),
            ),
        ),
        (
            "Process",
            (
                panel(
                    "CPU",
                    "CPU time used per second by each pod's process (1 = one core busy).",
                    "percentunit",
                    q(rate("process_cpu_seconds_total", "pod"), "{{pod}}"),
                ),
                panel(
                    "Memory",
                    "Resident memory of each pod's process (process_resident_memory_bytes).",
                    "bytes",
                    q(f"max by (pod) (process_resident_memory_bytes{{{SEL}}})", "{{pod}}"),
                ),
                panel(
                    "File descriptors",
                    "Open file descriptors of each pod's process, and its limit: each connection holds one.",
                    "short",
                    q(f"max by (pod) (process_open_fds{{{SEL}}})", "{{pod}} open"),
                    q(f"max by (pod) (process_max_fds{{{SEL}}})", "{{pod}} limit"),
                ),
                panel(
                    "Garbage collection",
                    "Python garbage collections per second, by pod and generation, and objects they collected.",
                    "cps",
                    q(rate("python_gc_collections_total", "pod, generation"), "{{pod}} gen {{generation}}"),
                    q(rate("python_gc_objects_collected_total", "pod"), "{{pod}} objects collected"),
                ),
            ),
        ),
    ),
)

DASHBOARDS: Final[tuple[DashboardSpec, ...]] = (OVERVIEW, NODE)


# -- the Grafana JSON model ------------------------------------------------------------------------


def _variables() -> list[Any]:
    datasource = (
        dashboard_builders.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes hubbub.")
    )
    namespace = (
        dashboard_builders.QueryVariable("namespace")
        .label("Namespace")
        .description("The Kubernetes namespace hubbub runs in.")
        .datasource(DATASOURCE)
        .query("label_values(hubbub_connections, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    pod = (
        dashboard_builders.QueryVariable("pod")
        .label("Pod")
        .description("hubbub pods of the namespace; All for every one.")
        .datasource(DATASOURCE)
        .query('label_values(hubbub_connections{namespace="$namespace"}, pod)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )
    return [datasource, namespace, pod]


def _target(ref_id: str, target: Target) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .ref_id(ref_id)
        .expr(target.expr)
        .legend_format(target.legend)
        .range()
        .datasource(DATASOURCE)
    )


def _panel(spec: PanelSpec, panel_id: int) -> Any:
    built: Any
    if spec.kind == "stat":
        built = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    else:
        built = (
            timeseries.Panel()
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
            .fill_opacity(10)
        )
        if spec.stacked:
            built = built.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    built = (
        built.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .span(spec.width)
        .height(8)
    )
    for index, target in enumerate(spec.targets):
        built = built.with_target(_target(chr(ord("A") + index), target))
    return built


def build(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict), ready to import or provision."""
    board = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["hubbub"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .refresh("1m")
        .timezone("browser")
        .variables(_variables())
        .annotation(
            # Rolling restarts and scale-downs on every time series: when each pod began draining.
            dashboard_builders.AnnotationQuery()
            .name("Draining pods")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("orange")
            .expr(f"max by (pod) (hubbub_draining{{{SELECTION}}}) == 1")
        )
        .link(
            dashboard_builders.DashboardLink("hubbub dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["hubbub"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    panel_id = 0
    for row_title, panels in spec.rows:
        panel_id += 1
        board = board.with_row(dashboard_builders.Row(row_title).id(panel_id))
        for panel_spec in panels:
            panel_id += 1
            board = board.with_panel(_panel(panel_spec, panel_id))
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return model


def render_json(spec: DashboardSpec) -> str:
    """The checked-in file: pretty-printed, keys sorted, so that regenerating it is byte-identical."""
    return json.dumps(build(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
