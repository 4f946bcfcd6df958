"""The metrics shown in docs/benchmarks.md: which figure of which scenario, how a target's figure
is looked up in a summary, and how figures and ratios are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .scenarios import SHARD_MASTERS


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str  # dotted path into a result (see flatten)
    label: str
    unit: str
    lower_is_better: bool
    saturation: str | None = None  # dotted path of the `saturated` flag that qualifies the figure
    total: bool = False  # a count summed over repeats rather than a median


def metrics(flags: dict[str, dict[str, Any]]) -> list[Metric]:
    """The figures shown, by the load generator's key names (see bench/loadgen/README.md)."""
    fan = flags.get("fanout", {})
    rate = fan.get("rate", 5000)
    window = fan.get("window", 64)
    flood = fan.get("flood", 2000)
    rooms = flags.get("rooms", {})
    scale = flags.get("scale", {})
    fixed, top, fld, rm = "phases.fixed", "phases.max", "phases.flood", "phases.fixed"
    return [
        Metric("fanout", f"{fixed}.p50_ms", f"p50 latency at {rate:,} deliveries/s", "ms", True),
        Metric("fanout", f"{fixed}.p99_ms", f"p99 latency at {rate:,} deliveries/s", "ms", True),
        Metric("fanout", f"{fixed}.server_cpu_us_per_delivery", f"server CPU per delivery at {rate:,}/s", "µs", True),
        Metric(
            "fanout", f"{top}.deliveries_per_s", f"max deliveries/s (window {window})", "/s", False, f"{top}.saturated"
        ),
        Metric("fanout", f"{top}.p99_ms", "p99 latency at max", "ms", True, f"{top}.saturated"),
        Metric(
            "fanout",
            f"{top}.server_cpu_us_per_delivery",
            "server CPU per delivery at max",
            "µs",
            True,
            f"{top}.saturated",
        ),
        Metric(
            "fanout",
            f"{fld}.deliveries_per_s",
            f"flood of {flood:,} publications: deliveries/s",
            "/s",
            False,
            f"{fld}.saturated",
        ),
        Metric("fanout", f"{fld}.p99_ms", "p99 latency in the flood", "ms", True, f"{fld}.saturated"),
        Metric("fanout", f"{fixed}.lost", "lost at the fixed rate (all runs)", "", True, total=True),
        Metric("fanout", f"{top}.lost", "lost at max (all runs)", "", True, total=True),
        Metric("fanout", f"{fld}.lost", "lost in the flood (all runs)", "", True, total=True),
        Metric("idle", "idle.rss_kib_per_connection", "RSS per idle connection", "KiB", True),
        Metric("idle", "idle.server_cpu_us_per_connection_s", "server CPU per idle connection", "µs/s", True),
        Metric("idle", "idle.server_cpu_pct_idle", "server CPU while idle (all nodes)", "% of a core", True),
        Metric("idle", "idle.failed", "failed connects (all runs)", "", True, total=True),
        Metric("idle_presence", "idle.rss_kib_per_connection", "RSS per idle connection", "KiB", True),
        Metric("idle_presence", "idle.server_cpu_us_per_connection_s", "server CPU per idle connection", "µs/s", True),
        Metric("idle_presence", "idle.server_cpu_pct_idle", "server CPU while idle (all nodes)", "% of a core", True),
        Metric("idle_presence", "idle.failed", "failed connects (all runs)", "", True, total=True),
        Metric("connect_1", "connect.connects_per_s", "connects/s", "/s", False, "connect.saturated"),
        Metric("connect_1", "connect.server_cpu_ms_per_connect", "server CPU per connect", "ms", True),
        Metric("connect_1", "connect.p50_ms", "connect latency p50", "ms", True),
        Metric("connect_1", "connect.failures", "failed connects (all runs)", "", True, total=True),
        Metric("connect_50", "connect.connects_per_s", "connects/s", "/s", False, "connect.saturated"),
        Metric("connect_50", "connect.server_cpu_ms_per_connect", "server CPU per connect", "ms", True),
        Metric("connect_50", "connect.p99_ms", "connect latency p99", "ms", True),
        Metric("connect_50", "connect.failures", "failed connects (all runs)", "", True, total=True),
        Metric(
            "rooms",
            f"{rm}.deliveries_per_s",
            f"deliveries/s ({rooms.get('rate', 2000):,} publications/s offered)",
            "/s",
            False,
            f"{rm}.saturated",
        ),
        Metric("rooms", f"{rm}.p50_ms", "p50 latency", "ms", True),
        Metric("rooms", f"{rm}.p99_ms", "p99 latency", "ms", True),
        Metric("rooms", f"{rm}.server_cpu_us_per_delivery", "server CPU per delivery", "µs", True),
        Metric("rooms", f"{rm}.lost", "lost (all runs)", "", True, total=True),
        Metric("scale", "idle.connected", f"connections held (of {scale.get('connections', 0):,})", "", False),
        Metric("scale", "idle.connects_per_s", "connect rate getting there", "/s", False),
        Metric("scale", "idle.rss_kib_per_connection", "RSS per connection", "KiB", True),
        Metric("scale", "idle.server_cpu_us_per_connection_s", "server CPU per idle connection", "µs/s", True),
        Metric("scale", "idle.server_cpu_pct_idle", "server CPU while idle", "% of a core", True),
        Metric("scale", "phases.held.p99_ms", f"p99 latency at {scale.get('rate', 5000):,} deliveries/s", "ms", True),
        Metric("scale", "phases.held.server_cpu_us_per_delivery", "server CPU per delivery", "µs", True),
        Metric("scale", "phases.held.lost", "lost (all runs)", "", True, total=True),
        Metric("scale", "idle.failed", "failed connects (all runs)", "", True, total=True),
        Metric("soak", "phases.soak.sent", "publications", "", False),
        Metric("soak", "phases.soak.lost", "lost by connections that stayed", "", True, total=True),
        Metric("soak", "phases.soak.p99_ms", "p99 latency", "ms", True),
        Metric("soak", "soak.reconnects", "reconnects (connect, authenticate, join)", "", False),
        Metric("soak", "soak.reconnect_failures", "failed reconnects", "", True, total=True),
        Metric("soak", "soak.steady_connections_lost", "connections the server closed", "", True, total=True),
        Metric(
            "soak",
            "soak.rss_growth_kib_per_connection",
            "RSS growth, first sample to last, per connection",
            "KiB",
            True,
        ),
        *(
            metric
            for n in SHARD_MASTERS
            for metric in (
                Metric("shards", f"masters_{n}.publications_per_s", f"{n} master(s): publications", "/s", False),
                Metric("shards", f"masters_{n}.redis_cpu_us_per_publication", "Redis CPU per publication", "µs", True),
                Metric("shards", f"masters_{n}.busiest_master_utilisation", "busiest master", "of a core", True),
                Metric("shards", f"masters_{n}.busiest_master_ceiling_per_s", "busiest master's ceiling", "/s", False),
                Metric("shards", f"masters_{n}.lost", "lost (all runs)", "", True, total=True),
            )
        ),
    ]


def lookup(summary: dict[str, Any], target: str, metric: Metric) -> tuple[float | None, bool]:
    """A target's figure for a metric (median, or total over runs) and whether the generator saturated."""
    scenario = summary.get(target, {}).get(metric.scenario)
    if scenario is None:
        return None, False
    table = scenario["total"] if metric.total else scenario["median"]
    value = float(table[metric.key]) if metric.key in table else None
    saturated = bool(metric.saturation and scenario["any"].get(metric.saturation))
    return value, saturated


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio_text(hub: float | None, peer: float | None) -> str | None:
    if hub is None or peer is None or peer == 0:
        return None
    ratio = hub / peer
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.0f}×"
