"""hubbub's Prometheus alert rules: one table, rendered with thresholds a deployment chooses.

Pure (standard library only): a Kubernetes operator templates the rules from this module, the
checked-in `rules/hubbub-alerts.yaml` is `render_yaml()` with the defaults, and the tests render
them with short windows and `for: 0s` to run `promtool test rules` on every alert.

Every series Prometheus scrapes from a hubbub pod carries `namespace` and `pod` (Kubernetes service
discovery attaches them); alerts group by those, never by anything finer (hubbub has no per-room
or per-user label). Rates are taken of counters and histogram buckets only; gauges are compared as
they are, or averaged over time. Each alert's runbook is a section of docs/runbooks.md whose anchor
is the alert's name in lower case.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Severity = Literal["critical", "warning"]

#: Where the runbooks are read; a deployment points it at its own copy (an internal wiki, a fork).
DEFAULT_RUNBOOK_BASE_URL: Final = "https://github.com/hubbub-dev/hubbub/blob/main/docs/runbooks.md"

#: The rule group's name in the rendered file.
GROUP_NAME: Final = "hubbub"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number the alerts compare against, and every window and `for` duration.

    Durations are Prometheus duration strings ("5m", "30s"). docs/runbooks.md documents each field
    with its default (a test checks it), under the alert it tunes.
    """

    #: The window of every rate() (and of the histogram quantiles): long enough to span several
    #: scrapes (4 at the usual 15 s interval), short enough to page within minutes.
    rate_window: str = "5m"

    # HubbubConnectionSpike: connections per namespace against their average over a baseline window
    # that ended `baseline_offset` ago: a crowd arriving at once (a reconnect storm, a launch, abuse).
    connection_spike_ratio: float = 2.0
    connection_spike_min_increase: int = 1000  # and at least this many more: small namespaces double easily
    connection_spike_baseline_window: str = "1h"
    connection_spike_baseline_offset: str = "15m"
    connection_spike_for: str = "5m"

    # HubbubHighErrorRate: failed commands among all commands, or abnormal closes among all closes.
    command_error_ratio: float = 0.05
    abnormal_close_ratio: float = 0.05
    #: Close codes that mean the service or the network failed the client, not that the client left:
    #: 1006 dropped without a close frame (a crashed or killed pod, a proxy timeout, network loss),
    #: 1011 internal error (a bug), 4008 slow consumer, 4011 insufficient state (continuity lost),
    #: 4029 rate limited. Normal: 1000, 1001, 4000 (API), 4009 (token expired), 1012 (draining);
    #: 4001/4003 have HubbubAuthFailureSpike, 1013 HubbubNearConnectionCapacity, and 1003, 1009,
    #: 4004 and 4010 are a client's bug or network.
    abnormal_close_codes: tuple[str, ...] = ("1006", "1011", "4008", "4011", "4029")
    #: Below this many commands (or closes) per second a namespace's ratios are not judged: three
    #: failures among ten are noise, not an outage.
    error_min_rate: float = 1.0
    error_for: str = "10m"

    # HubbubAuthFailureSpike: rejected tokens per second in a namespace.
    auth_failure_rate: float = 1.0
    auth_failure_for: str = "10m"

    # HubbubRedisUnavailable: a node cannot reach Redis (its redis link says so).
    redis_unavailable_for: str = "1m"

    # HubbubRedisLatencyHigh: p99 duration of Redis commands per client (broker, presence, cluster).
    redis_latency_p99_seconds: float = 0.05
    redis_latency_for: str = "10m"

    # HubbubFanoutLatencyHigh: p99 from a publication's acceptance to its pushes being queued, per node.
    fanout_latency_p99_seconds: float = 0.25
    fanout_latency_for: str = "10m"

    # HubbubSlowConsumerStorm: connections closed 4008 per second in a namespace.
    slow_consumer_rate: float = 1.0
    slow_consumer_for: str = "5m"

    # HubbubInsufficientStateCloses: connections closed 4011 per second in a namespace, per cause.
    insufficient_state_rate: float = 0.1
    insufficient_state_for: str = "5m"

    # HubbubNearConnectionCapacity: a node's connections as a fraction of its max_connections.
    capacity_ratio: float = 0.85
    capacity_for: str = "5m"

    # HubbubEventLoopLag: p99 lateness of the node's 0.5 s probe timer.
    event_loop_lag_p99_seconds: float = 0.1
    event_loop_lag_for: str = "10m"

    # HubbubNoReadyNodes: no pod of a namespace would answer /readyz ready (or none reports at all).
    no_ready_for: str = "2m"

    # HubbubStuckDraining: a node still draining long after its drain should have ended (the default
    # drain takes drain_delay + drain_period = 25 s, and Kubernetes kills a pod after its grace period).
    stuck_draining_for: str = "5m"

    def with_all_for(self, duration: str) -> Thresholds:
        """The same thresholds with every `for` duration replaced (the tests use "0s")."""
        changes: dict[str, Any] = {f.name: duration for f in dataclasses.fields(self) if f.name.endswith("_for")}
        return dataclasses.replace(self, **changes)


class Series:
    """Writes series selectors, each with the deployment's extra matchers (`namespace="chat"`) appended."""

    def __init__(self, selector: str = "") -> None:
        self.selector = selector.strip().strip("{}").strip().rstrip(",")

    def __call__(self, name: str, *matchers: str) -> str:
        parts = [*matchers, self.selector] if self.selector else list(matchers)
        return f"{name}{{{','.join(parts)}}}" if parts else name


Expr = Callable[[Thresholds, Series], str]


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    severity: Severity
    expr: Expr
    #: The Thresholds field holding this alert's `for` duration.
    for_field: str
    #: Annotations as Prometheus templates ($labels, $value), with `%(field)s` for a Thresholds field.
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        """Its section of docs/runbooks.md (GitHub's anchor for a heading that is the alert's name)."""
        return self.name.lower()


def num(value: float) -> str:
    """A number as PromQL and the annotations show it: 2, 0.05, 1000."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _connection_spike(t: Thresholds, s: Series) -> str:
    now = f"sum by (namespace) ({s('hubbub_connections')})"
    baseline = (
        f"sum by (namespace) (avg_over_time({s('hubbub_connections')}[{t.connection_spike_baseline_window}] "
        f"offset {t.connection_spike_baseline_offset}))"
    )
    return (
        f"{now} > {num(t.connection_spike_ratio)} * {baseline}\n"
        f"and\n{now} - {baseline} >= {num(t.connection_spike_min_increase)}"
    )


def _high_error_rate(t: Thresholds, s: Series) -> str:
    w = t.rate_window
    not_ok = 'result!="ok"'
    abnormal_codes = 'code=~"' + "|".join(t.abnormal_close_codes) + '"'
    commands = f"sum by (namespace) (rate({s('hubbub_commands_total')}[{w}]))"
    failed = f"sum by (namespace) (rate({s('hubbub_commands_total', not_ok)}[{w}]))"
    closes = f"sum by (namespace) (rate({s('hubbub_disconnects_total')}[{w}]))"
    abnormal = f"sum by (namespace) (rate({s('hubbub_disconnects_total', abnormal_codes)}[{w}]))"
    floor = num(t.error_min_rate)
    return (
        f"({failed} / {commands} > {num(t.command_error_ratio)} and {commands} >= {floor})\n"
        f"or\n({abnormal} / {closes} > {num(t.abnormal_close_ratio)} and {closes} >= {floor})"
    )


def _auth_failure_spike(t: Thresholds, s: Series) -> str:
    return f"sum by (namespace) (rate({s('hubbub_auth_failures_total')}[{t.rate_window}])) > {num(t.auth_failure_rate)}"


def _redis_unavailable(t: Thresholds, s: Series) -> str:
    return f"min by (namespace, pod) ({s('hubbub_redis_available')}) == 0"


def _quantile(metric: str, by: str, window: str, s: Series) -> str:
    return f"histogram_quantile(0.99, sum by ({by}, le) (rate({s(metric)}[{window}])))"


def _redis_latency(t: Thresholds, s: Series) -> str:
    p99 = _quantile("hubbub_redis_command_duration_seconds_bucket", "namespace, client", t.rate_window, s)
    return f"{p99} > {num(t.redis_latency_p99_seconds)}"


def _fanout_latency(t: Thresholds, s: Series) -> str:
    p99 = _quantile("hubbub_fanout_latency_seconds_bucket", "namespace, pod", t.rate_window, s)
    return f"{p99} > {num(t.fanout_latency_p99_seconds)}"


def _slow_consumers(t: Thresholds, s: Series) -> str:
    rate = f"rate({s('hubbub_slow_consumer_disconnects_total')}[{t.rate_window}])"
    return f"sum by (namespace) ({rate}) > {num(t.slow_consumer_rate)}"


def _insufficient_state(t: Thresholds, s: Series) -> str:
    rate = f"rate({s('hubbub_insufficient_state_disconnects_total')}[{t.rate_window}])"
    return f"sum by (namespace, cause) ({rate}) > {num(t.insufficient_state_rate)}"


def _near_capacity(t: Thresholds, s: Series) -> str:
    used = f"{s('hubbub_connections')} / {s('hubbub_connection_limit')}"
    return f"max by (namespace, pod) ({used}) > {num(t.capacity_ratio)}"


def _event_loop_lag(t: Thresholds, s: Series) -> str:
    p99 = _quantile("hubbub_event_loop_lag_seconds_bucket", "namespace, pod", t.rate_window, s)
    return f"{p99} > {num(t.event_loop_lag_p99_seconds)}"


def _no_ready_nodes(t: Thresholds, s: Series) -> str:
    # The sum catches a namespace whose pods all report not ready; absent() one where none reports
    # at all (all crashed, scaled to zero, or not scraped): it carries the selector's equality labels.
    return f"sum by (namespace) ({s('hubbub_ready')}) == 0\nor\nabsent({s('hubbub_ready')})"


def _stuck_draining(t: Thresholds, s: Series) -> str:
    return f"max by (namespace, pod) ({s('hubbub_draining')}) == 1"


ALERTS: Final[tuple[AlertRule, ...]] = (
    AlertRule(
        "HubbubConnectionSpike",
        "warning",
        _connection_spike,
        "connection_spike_for",
        "Connections to hubbub in {{ $labels.namespace }} jumped",
        "{{ $labels.namespace }} holds {{ $value | humanize }} connections: more than %(connection_spike_ratio)s "
        "times (and %(connection_spike_min_increase)s above) its average over %(connection_spike_baseline_window)s "
        "until %(connection_spike_baseline_offset)s ago. A reconnect storm after an outage, a launch, or abuse.",
    ),
    AlertRule(
        "HubbubHighErrorRate",
        "warning",
        _high_error_rate,
        "error_for",
        "hubbub in {{ $labels.namespace }} fails many commands or closes many connections abnormally",
        "In {{ $labels.namespace }}, {{ $value | humanizePercentage }} of commands failed (threshold "
        "%(command_error_ratio)s) or of connections closed with an abnormal code (%(abnormal_close_codes)s; "
        "threshold %(abnormal_close_ratio)s) over the last %(rate_window)s.",
    ),
    AlertRule(
        "HubbubAuthFailureSpike",
        "warning",
        _auth_failure_spike,
        "auth_failure_for",
        "hubbub in {{ $labels.namespace }} rejects many tokens",
        "{{ $labels.namespace }} rejects {{ $value | humanize }} tokens per second (threshold "
        "%(auth_failure_rate)s) over the last %(rate_window)s: a signing key rotated on one side only, clock "
        "skew, a misconfigured audience or issuer, or someone trying tokens.",
    ),
    AlertRule(
        "HubbubRedisUnavailable",
        "critical",
        _redis_unavailable,
        "redis_unavailable_for",
        "hubbub pod {{ $labels.pod }} cannot reach Redis",
        "{{ $labels.namespace }}/{{ $labels.pod }} has reported Redis unreachable for %(redis_unavailable_for)s: "
        "it answers publish and join with 503 and /readyz with 503 until it reconnects (by itself).",
    ),
    AlertRule(
        "HubbubRedisLatencyHigh",
        "warning",
        _redis_latency,
        "redis_latency_for",
        "Redis commands from hubbub in {{ $labels.namespace }} are slow ({{ $labels.client }})",
        "p99 duration of the {{ $labels.client }} client's Redis commands in {{ $labels.namespace }} is "
        "{{ $value | humanizeDuration }} (threshold %(redis_latency_p99_seconds)s s) over the last "
        "%(rate_window)s.",
    ),
    AlertRule(
        "HubbubFanoutLatencyHigh",
        "warning",
        _fanout_latency,
        "fanout_latency_for",
        "Fan-out on hubbub pod {{ $labels.pod }} is slow",
        "p99 fan-out latency on {{ $labels.namespace }}/{{ $labels.pod }} is {{ $value | humanizeDuration }} "
        "(threshold %(fanout_latency_p99_seconds)s s) over the last %(rate_window)s: publications reach "
        "that node's members late.",
    ),
    AlertRule(
        "HubbubSlowConsumerStorm",
        "warning",
        _slow_consumers,
        "slow_consumer_for",
        "hubbub in {{ $labels.namespace }} closes many slow consumers (4008)",
        "{{ $labels.namespace }} closes {{ $value | humanize }} connections per second for an over-full "
        "outbound queue (threshold %(slow_consumer_rate)s) over the last %(rate_window)s: clients cannot keep "
        "up with their rooms' traffic, or a node cannot write fast enough.",
    ),
    AlertRule(
        "HubbubInsufficientStateCloses",
        "warning",
        _insufficient_state,
        "insufficient_state_for",
        "hubbub in {{ $labels.namespace }} closes connections 4011 ({{ $labels.cause }})",
        "{{ $labels.namespace }} closes {{ $value | humanize }} connections per second with 4011 insufficient "
        "state, cause {{ $labels.cause }} (threshold %(insufficient_state_rate)s) over the last %(rate_window)s: "
        "clients lose the continuity of their rooms and must resynchronise.",
    ),
    AlertRule(
        "HubbubNearConnectionCapacity",
        "warning",
        _near_capacity,
        "capacity_for",
        "hubbub pod {{ $labels.pod }} is near its connection limit",
        "{{ $labels.namespace }}/{{ $labels.pod }} holds {{ $value | humanizePercentage }} of its "
        "max_connections (threshold %(capacity_ratio)s); past it new connections close 1013 and the pod "
        "reports not ready.",
    ),
    AlertRule(
        "HubbubEventLoopLag",
        "warning",
        _event_loop_lag,
        "event_loop_lag_for",
        "hubbub pod {{ $labels.pod }}'s event loop lags",
        "p99 event-loop lag on {{ $labels.namespace }}/{{ $labels.pod }} is {{ $value | humanizeDuration }} "
        "(threshold %(event_loop_lag_p99_seconds)s s) over the last %(rate_window)s: everything on that node "
        "(heartbeats, fan-out, replies) waits that long.",
    ),
    AlertRule(
        "HubbubNoReadyNodes",
        "critical",
        _no_ready_nodes,
        "no_ready_for",
        "No hubbub pod is ready in {{ $labels.namespace }}",
        "No hubbub pod in {{ $labels.namespace }} has been ready (or none has reported) for %(no_ready_for)s: "
        "the Service has no endpoint and every client is cut off.",
    ),
    AlertRule(
        "HubbubStuckDraining",
        "warning",
        _stuck_draining,
        "stuck_draining_for",
        "hubbub pod {{ $labels.pod }} has been draining for too long",
        "{{ $labels.namespace }}/{{ $labels.pod }} has been draining for more than %(stuck_draining_for)s; "
        "a drain should end within drain_delay + drain_period (25 s by default) and the pod exit.",
    ),
)


def threshold_values(thresholds: Thresholds) -> dict[str, str]:
    """Each Thresholds field as the annotations and docs show it."""
    shown: dict[str, str] = {}
    for field in dataclasses.fields(thresholds):
        value = getattr(thresholds, field.name)
        if isinstance(value, tuple):
            shown[field.name] = ", ".join(value)
        else:
            shown[field.name] = value if isinstance(value, str) else num(value)
    return shown


def rule(
    alert: AlertRule,
    thresholds: Thresholds = Thresholds(),
    *,
    selector: str = "",
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One alert as a Prometheus alerting rule (the mapping a rule file holds)."""
    values = threshold_values(thresholds)
    return {
        "alert": alert.name,
        "expr": alert.expr(thresholds, Series(selector)),
        "for": getattr(thresholds, alert.for_field),
        "labels": {**dict(sorted((extra_labels or {}).items())), "severity": alert.severity},
        "annotations": {
            "summary": alert.summary % values,
            "description": alert.description % values,
            "runbook_url": f"{runbook_base_url}#{alert.anchor}",
        },
    }


def rule_groups(
    thresholds: Thresholds = Thresholds(),
    *,
    selector: str = "",
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The Prometheus rule file's structure: `{"groups": [{"name": "hubbub", "rules": [...]}]}`.

    `selector` holds label matchers added to every series the rules read (`namespace="chat"` to
    watch one namespace; its equality matchers also label HubbubNoReadyNodes' absent() alert).
    `extra_labels` go on every alert (routing: `team`, `cluster`), beside `severity`.
    """
    rules = [
        rule(a, thresholds, selector=selector, runbook_base_url=runbook_base_url, extra_labels=extra_labels)
        for a in ALERTS
    ]
    return {"groups": [{"name": GROUP_NAME, "rules": rules}]}


def render_yaml(
    thresholds: Thresholds = Thresholds(),
    *,
    selector: str = "",
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    extra_labels: Mapping[str, str] | None = None,
) -> str:
    """The rule file as YAML (what `promtool check rules` and Prometheus's rule_files read)."""
    groups = rule_groups(thresholds, selector=selector, runbook_base_url=runbook_base_url, extra_labels=extra_labels)
    return HEADER + to_yaml(groups)


HEADER: Final = (
    "# hubbub's Prometheus alert rules, with the default thresholds.\n"
    "# Generated by `python -m hubbub.monitoring` from service/hubbub/monitoring/alerts.py: do not edit;\n"
    "# runbooks: docs/runbooks.md.\n"
)


def to_yaml(value: object, indent: int = 0) -> str:
    """A small YAML emitter for the rule file's shapes (mappings, lists, strings, numbers), standard library only.

    Strings are double-quoted JSON strings (valid YAML), except multi-line ones, which are literal
    blocks so that the expressions read as written.
    """
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return "{}\n"
        lines = []
        for key, item in value.items():
            lines.append(f"{pad}{key}:{_yaml_value(item, indent)}")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]\n"
        lines = []
        for item in value:
            body = to_yaml(item, indent + 2) if isinstance(item, (Mapping, list)) and item else None
            if body is None:
                lines.append(f"{pad}-{_yaml_value(item, indent)}")
            else:
                lines.append(f"{pad}- {body[indent + 2 :]}")
        return "".join(lines)
    return f"{_scalar(value)}\n"


def _yaml_value(item: object, indent: int) -> str:
    if isinstance(item, (Mapping, list)) and item:
        return "\n" + to_yaml(item, indent + 2)
    if isinstance(item, str) and "\n" in item:
        body = "".join(f"{' ' * (indent + 2)}{line}\n" for line in item.split("\n"))
        return " |-\n" + body
    return " " + to_yaml(item, indent)


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return num(value)
    if isinstance(value, Mapping | list):
        return "{}" if isinstance(value, Mapping) else "[]"
    raise TypeError(f"cannot render {type(value).__name__} as YAML")
