"""The charts of docs/benchmarks.md: one PNG per figure compared, drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics import Metric, fmt, lookup, metrics


def chart_specs(document: dict[str, Any]) -> list[tuple[str, str, str, list[tuple[str, Metric]], float | None]]:
    """(file stem, title, y label, [(series name, metric)], hubbub goal)."""
    m = {(x.scenario, x.key): x for x in metrics({k: v["flags"] for k, v in document["scenarios"].items()})}
    rate = document["scenarios"].get("fanout", {}).get("flags", {}).get("rate", 5000)
    return [
        (
            "bench-cpu-per-delivery",
            "Fan-out: server CPU per delivery (lower is better)",
            "µs per delivery",
            [
                (f"at {rate:,}/s", m[("fanout", "phases.fixed.server_cpu_us_per_delivery")]),
                ("at max", m[("fanout", "phases.max.server_cpu_us_per_delivery")]),
            ],
            10.0,
        ),
        (
            "bench-p99",
            f"Fan-out: delivery latency at {rate:,} deliveries/s (lower is better)",
            "ms",
            [
                ("p50", m[("fanout", "phases.fixed.p50_ms")]),
                ("p99", m[("fanout", "phases.fixed.p99_ms")]),
            ],
            25.0,
        ),
        (
            "bench-max-deliveries",
            "Fan-out: max sustained deliveries/s (higher is better)",
            "deliveries/s",
            [("max", m[("fanout", "phases.max.deliveries_per_s")])],
            None,
        ),
        (
            "bench-kib-per-connection",
            "Idle: RSS per authenticated connection (lower is better)",
            "KiB per connection",
            [("idle", m[("idle", "idle.rss_kib_per_connection")])],
            12.0,
        ),
        (
            "bench-cpu-per-connect",
            "Connect: server CPU per JWT-authenticated connect (lower is better)",
            "ms per connect",
            [
                ("one at a time", m[("connect_1", "connect.server_cpu_ms_per_connect")]),
                ("50 in flight", m[("connect_50", "connect.server_cpu_ms_per_connect")]),
            ],
            0.45,
        ),
    ]


HUBBUB_COLOURS = ("#1f6feb", "#7aa7f0")
PEER_COLOURS = ("#6e7781", "#b6bcc3")


def draw_charts(document: dict[str, Any], image_dir: Path) -> list[tuple[str, str]]:
    """One PNG per chart spec in `image_dir`: bars per target, hubbub in blue, peers in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    image_dir.mkdir(parents=True, exist_ok=True)
    targets = list(document["targets"])
    labels = [document["targets"][t]["label"] for t in targets]
    drawn: list[tuple[str, str]] = []
    for stem, title, ylabel, series, goal in chart_specs(document):
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
        width = 0.8 / len(series)
        any_value = any_saturated = False
        for index, (_, metric) in enumerate(series):
            xs = [i - 0.4 + width * (index + 0.5) for i in range(len(targets))]
            for x, target in zip(xs, targets, strict=True):
                value, saturated = lookup(document["summary"], target, metric)
                if value is None:
                    continue
                any_value = True
                any_saturated |= saturated
                colour = (HUBBUB_COLOURS if target == "hubbub" else PEER_COLOURS)[index % 2]
                ax.bar(x, value, width * 0.92, color=colour, hatch="//" if saturated else None, edgecolor="white")
                ax.annotate(
                    fmt(value) + (" †" if saturated else ""),
                    (x, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        if not any_value:
            plt.close(fig)
            continue
        handles: list[Any] = []
        if len(series) > 1:
            handles += [
                Patch(color=HUBBUB_COLOURS[i % 2], label=f"{name}, hubbub") for i, (name, _) in enumerate(series)
            ]
            handles += [Patch(color=PEER_COLOURS[i % 2], label=f"{name}, peers") for i, (name, _) in enumerate(series)]
        if goal is not None and "hubbub" in targets:
            ax.axhline(goal, color="#d1242f", linestyle="--", linewidth=1)
            handles.append(Line2D([], [], color="#d1242f", linestyle="--", label=f"hubbub's goal: {fmt(goal)}"))
        if any_saturated:
            handles.append(Patch(facecolor="white", edgecolor="#6e7781", hatch="//", label="† generator saturated"))
        if handles:
            ax.legend(handles=handles, fontsize=7, frameon=False, ncols=2 if len(handles) > 3 else 1)
        ax.set_xticks(range(len(targets)), labels)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}"))
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.25)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        fig.savefig(image_dir / f"{stem}.png")
        plt.close(fig)
        drawn.append((stem, title))
    return drawn
