"""A preview of a Grafana dashboard without Grafana: its panels' queries, run against a real Prometheus, drawn.

Runs the scenario of tests/process/observability/test_prometheus.py (two nodes on Redis under a steady load,
scraped by a
private Prometheus), adds the events the panels are about (a connection burst, bad tokens, a storm
of slow consumers, a Redis outage), then runs each time-series panel's query over the whole run
with `query_range` (as Grafana would) and draws the panels in a grid, in Grafana's dark colours:
title, unit, one line per series named by the panel's legend format.

    .venv/bin/python -m tests.support.preview            # scripts/render-dashboard-preview runs this

These are renderings of the dashboard's queries against real data, not Grafana screenshots: the
layout is a plain grid, and only time-series panels are drawn (stat panels show their query's
latest value as a one-line panel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from hubbub.monitoring.alerts import rule_groups
from tests.support.monitored import PODS, MonitoredFleet
from tests.support.prometheus import NAMESPACE, Prometheus

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "service" / "hubbub" / "monitoring" / "dashboards" / "hubbub-overview.json"
OUTPUT = REPO / "docs" / "images" / "dashboard-overview.png"

#: Grafana's dark theme: page, panel, text, grid, and its classic palette for series.
PAGE, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e8e", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a", "#37872d")


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: str
    unit: str
    targets: tuple[Target, ...]


def panels(dashboard: dict[str, Any]) -> Iterator[PanelSpec]:
    """The dashboard's panels in order (rows opened), with their queries, legends and unit."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels({"panels": panel.get("panels", [])})
            continue
        targets = tuple(Target(t["expr"], t.get("legendFormat", "")) for t in panel.get("targets", []) if t.get("expr"))
        if targets:
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            yield PanelSpec(panel.get("title", ""), panel.get("type", "timeseries"), unit, targets)


def fill(expr: str, interval: str) -> str:
    """Grafana's variables as the preview's user picks them: this namespace, every pod."""
    expr = re.sub(r'(=~|=)\s*"\$\{?namespace(?::\w+)?\}?"', rf'\1"{NAMESPACE}"', expr)
    expr = re.sub(r'=~\s*"\$\{?pod(?::\w+)?\}?"', '=~".*"', expr)
    expr = re.sub(r'=\s*"\$\{?pod(?::\w+)?\}?"', '=~".*"', expr)
    return re.sub(r"\$\{?__(rate_)?interval\}?", interval, expr)


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        shown = {k: v for k, v in labels.items() if k not in ("__name__", "instance", "job", "namespace")}
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or labels.get("__name__", "value")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


# -- units, as Grafana shows them ------------------------------------------------------------------------

UNIT_LABELS = {
    "s": "seconds",
    "ms": "milliseconds",
    "reqps": "requests/s",
    "ops": "ops/s",
    "short": "",
    "none": "",
    "percentunit": "percent",
    "percent": "percent",
    "bytes": "bytes",
    "decbytes": "bytes",
    "bool": "0/1",
    "cps": "per second",
    "eps": "events/s",
}


def tick(unit: str) -> FuncFormatter:
    def seconds(value: float) -> str:
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value * 1e6:g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"

    def short(value: float) -> str:
        for size, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
            if abs(value) >= size:
                return f"{value / size:.3g}{suffix}"
        return f"{value:.3g}"

    def formatter(value: float, _pos: object) -> str:
        if unit == "s":
            return seconds(value)
        if unit == "ms":
            return seconds(value / 1000)
        if unit == "percentunit":
            return f"{value * 100:.3g}%"
        return short(value)

    return FuncFormatter(formatter)


# -- drawing -----------------------------------------------------------------------------------------------


def draw(panel: PanelSpec, data: list[tuple[str, list[tuple[float, float]]]], ax: Axes) -> None:
    ax.set_facecolor(PANEL)
    for side in ax.spines.values():
        side.set_color(GRID)
    ax.set_title(panel.title, loc="left", color=TEXT, fontsize=9, fontweight="bold", pad=4)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.yaxis.set_major_formatter(tick(panel.unit))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))  # type: ignore[no-untyped-call]
    unit = UNIT_LABELS.get(panel.unit, panel.unit)
    if unit:
        ax.set_ylabel(unit, color=MUTED, fontsize=7)
    if not data:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    for i, (name, points) in enumerate(data[: len(PALETTE)]):
        times = [datetime.fromtimestamp(t) for t, _ in points]
        ax.plot(times, [v for _, v in points], color=PALETTE[i], linewidth=1.2, label=name)  # type: ignore[arg-type]
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=6.5, frameon=False, labelcolor=TEXT, ncols=min(4, len(data)))


def render(prom: Prometheus, dashboard: dict[str, Any], start: float, end: float, output: Path) -> list[str]:
    """Every panel with a query, in a grid of two columns, to `output`; returns the panels that had no data."""
    specs = list(panels(dashboard))
    step = max(1.0, (end - start) / 300)
    columns = 2
    rows = (len(specs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(13, 2.3 * rows), facecolor=PAGE, squeeze=False)
    title = dashboard.get("title", "hubbub")
    fig.suptitle(
        f"{title} — the dashboard's queries against a real Prometheus (test scenario, not a Grafana screenshot)",
        color=TEXT,
        fontsize=10,
        x=0.01,
        ha="left",
    )
    empty = []
    for ax, spec in zip(axes.flat, specs, strict=False):
        data: list[tuple[str, list[tuple[float, float]]]] = []
        for target in spec.targets:
            for series in prom.query_range(fill(target.expr, "15s"), start, end, step):
                points = [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    data.append((legend(target.legend, series["metric"]), points))
        data.sort(key=lambda item: item[0])
        if not data:
            empty.append(spec.title)
        draw(spec, data, ax)
    for ax in list(axes.flat)[len(specs) :]:
        ax.set_visible(False)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if rows > 3 else 0.93), h_pad=1.2)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=64, facecolor=PAGE)  # about 170 KB: flat panels, thin lines
    plt.close(fig)
    return empty


# -- the scenario ----------------------------------------------------------------------------------------


async def scenario(fleet: MonitoredFleet, *, calm: float) -> None:
    """The events the overview's panels are about, spaced so each shows on its own in the graphs."""
    prom = fleet.prom

    async def pause(seconds: float) -> None:
        # The graphs need time to pass between events (nothing is awaited but the clock).
        await asyncio.sleep(seconds)

    # A baseline first: an event counted before Prometheus's first scrapes of a node has no increase to show.
    await pause(calm / 2)
    await fleet.exercise()
    await pause(calm)
    burst = await fleet.connection_burst(40)
    await pause(calm / 2)
    for client in burst:
        await client.close()
    await pause(calm / 2)
    await fleet.bad_tokens(30)
    await pause(calm / 2)
    await fleet.slow_consumer_storm(6)
    await pause(calm / 2)
    fleet.stop_redis()
    try:
        await prom.wait_for(
            lambda: prom.values("min(hubbub_redis_available)") == {"{}": 0.0}, what="Redis reported unavailable"
        )
        await pause(calm / 2)
    finally:
        fleet.start_redis()
    await pause(calm / 2)
    # A rolling restart: one node drains (the draining and 1012 panels), then comes back and takes load again.
    await fleet.rolling_restart(PODS[1])
    await pause(calm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--calm", type=float, default=30.0, help="seconds of steady load between events")
    args = parser.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    with tempfile.TemporaryDirectory(prefix="hubbub-preview-") as workdir:
        fleet = MonitoredFleet(Path(workdir), rules=rule_groups()).start()
        try:
            start = time.time()
            asyncio.run(scenario(fleet, calm=args.calm))
            empty = render(fleet.prom, dashboard, start, time.time(), args.output)
        finally:
            fleet.stop()
    size = args.output.stat().st_size
    print(f"{args.output}: {size // 1024} KiB" + (f"; panels without data: {', '.join(empty)}" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
