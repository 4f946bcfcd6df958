"""The report: docs/benchmarks.md rendered from a results document (tables, ratios, hubbub's
goals, the machine, the method), with its charts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .charts import draw_charts
from .config import DOCS, LOADGEN_CPU, SERVER_CPU
from .metrics import Metric, fmt, lookup, metrics, ratio_text
from .summary import walk_phases


def scenario_tables(document: dict[str, Any]) -> str:
    summary = document["summary"]
    targets = list(document["targets"])
    labels = {name: info["label"] for name, info in document["targets"].items()}
    flags = {key: info["flags"] for key, info in document["scenarios"].items()}
    peers = [t for t in targets if t != "hubbub"]
    skipped = {(s["target"], s["scenario"]): s["reason"] for s in document.get("not_applicable", [])}
    out: list[str] = []
    for scenario_key, info in document["scenarios"].items():
        rows = [m for m in metrics(flags) if m.scenario == scenario_key]
        out.append(f"### {info['title']}\n")
        header = ["", *(labels[t] for t in targets)]
        if "hubbub" in targets and peers:
            header.append("hubbub ÷ peer")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" + "---:|" * len(targets) + ("---|" if len(header) > len(targets) + 1 else ""))
        for metric in rows:
            cells = [f"{metric.label}" + (f" ({metric.unit})" if metric.unit else "")]
            values: dict[str, float | None] = {}
            for target in targets:
                value, saturated = lookup(summary, target, metric)
                values[target] = value
                cell = (f"{value:,.0f}" if metric.total and value is not None else fmt(value)) + (
                    " †" if saturated else ""
                )
                if (target, scenario_key) in skipped:
                    cell = "n/a"
                cells.append(f"**{cell}**" if target == "hubbub" and value is not None else cell)
            if len(header) > len(targets) + 1:
                ratios = []
                if not metric.total:
                    for peer in peers:
                        text = ratio_text(values.get("hubbub"), values.get(peer))
                        if text:
                            ratios.append(f"{text} {labels[peer]}")
                cells.append(", ".join(ratios) if ratios else "")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


HUBBUB_GOALS = [
    # (label, scenario, dotted key, limit, unit)
    ("server CPU per delivery (fan-out at max)", "fanout", "phases.max.server_cpu_us_per_delivery", 10.0, "µs"),
    ("p99 latency at the fixed rate, two nodes", "fanout", "phases.fixed.p99_ms", 25.0, "ms"),
    ("RSS per idle authenticated connection", "idle", "idle.rss_kib_per_connection", 12.0, "KiB"),
    ("server CPU per connect, one at a time", "connect_1", "connect.server_cpu_ms_per_connect", 0.45, "ms"),
    ("server CPU per connect, 50 in flight", "connect_50", "connect.server_cpu_ms_per_connect", 0.45, "ms"),
]


def goals(document: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, the goal, hubbub's figure, met?) for each of hubbub's targets."""
    summary = document["summary"]
    rows: list[tuple[str, str, str, bool | None]] = []
    for label, scenario, key, limit, unit in HUBBUB_GOALS:
        value, _ = lookup(summary, "hubbub", Metric(scenario, key, label, unit, True))
        met = None if value is None else value <= limit
        rows.append((label, f"≤ {fmt(limit)} {unit}", f"{fmt(value)} {unit}" if value is not None else "—", met))
    lost = 0.0
    seen = False
    for run in document["runs"]:
        if run["target"] == "hubbub" and run["result"] is not None:
            for _, phase in walk_phases(run["result"]):
                seen = True
                lost += float(phase.get("lost") or 0)
    rows.append(
        ("messages lost, every phase of every run", "0", fmt(lost) if seen else "—", (lost == 0) if seen else None)
    )
    return rows


def environment_table(env: dict[str, Any]) -> str:
    hub = env.get("hubbub", {})
    sha = (hub.get("git_sha") or "unknown")[:12] + (" (with uncommitted changes)" if hub.get("git_dirty") else "")
    py = env.get("python_packages", {})
    npm = env.get("npm_packages", {})
    rows = [
        ("machine", f"{env.get('cpu_model')}, {env.get('cpus')} CPUs, {env.get('memory_gib')} GiB"),
        ("system", f"{env.get('os')}, Linux {env.get('kernel')}"),
        ("pinning", env.get("pinning")),
        ("hubbub", f"{hub.get('version')} at {sha}"),
        (
            "Python",
            f"{env.get('python')}: uvicorn {py.get('uvicorn')}, websockets {py.get('websockets')},"
            f" uvloop {py.get('uvloop')}, httptools {py.get('httptools')}",
        ),
        (
            "python-socketio",
            f"{py.get('python-socketio')} (python-engineio {py.get('python-engineio')}, redis-py {py.get('redis')})",
        ),
        (
            "Node",
            f"{env.get('node')}: socket.io {npm.get('socket.io')} (engine.io {npm.get('engine.io')}), "
            f"@socket.io/redis-adapter {npm.get('@socket.io/redis-adapter')}, redis {npm.get('redis')}, "
            f"ws {npm.get('ws')}, jsonwebtoken {npm.get('jsonwebtoken')}",
        ),
        ("Redis", f"redis-server {env.get('redis_server')}"),
        ("load generator", f"bench/loadgen {env.get('loadgen_source')}, {env.get('go')}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def render_markdown(document: dict[str, Any], charts: Sequence[tuple[str, str]], results_name: str) -> str:
    env = document["environment"]
    fan = document["scenarios"].get("fanout", {}).get("flags", {})
    idle = document["scenarios"].get("idle", {}).get("flags", {})
    con = document["scenarios"].get("connect_1", {}).get("flags", {})
    rooms = document["scenarios"].get("rooms", {}).get("flags", {})
    scale = document["scenarios"].get("scale", {}).get("flags", {})
    soak = document["scenarios"].get("soak", {}).get("flags", {})
    scale_limit = document.get("scale_limit")
    target_lines = "\n".join(f"- **{info['label']}**: {info['description']}." for info in document["targets"].values())
    goal_rows = "\n".join(
        f"| {label} | {goal} | {value} | {'yes' if met else 'no' if met is not None else 'not measured'} |"
        for label, goal, value, met in goals(document)
    )
    chart_md = "\n\n".join(f"![{title}](images/{stem}.png)" for stem, title in charts)
    problems_md = "\n".join(f"- {p}" for p in document["problems"]) or (
        "None: no target crashed, every run finished, hubbub lost nothing."
    )
    if document.get("notes"):
        problems_md += (
            "\n\nAlso seen by the load generator (error replies, failed connects, connections the server\nclosed):\n\n"
        )
        problems_md += "\n".join(f"- {n}" for n in document["notes"])
    started = document["started"].replace("T", " ").replace("+00:00", " UTC")
    if env.get("pinning", "none") != "none":
        pinning = (
            f"The servers and Redis run on CPU {SERVER_CPU}, the load generator on CPU {LOADGEN_CPU}"
            " (`sched_setaffinity`, as `taskset -c`)."
        )
    else:
        pinning = "None: this machine has fewer than two CPUs, so the servers and the generator shared them."
    method = [
        f"**Pinning.** {pinning} Every server figure is therefore **per core**: the server CPU counted is"
        " that of every server process plus Redis, read from `/proc` by the generator at the start and the"
        " end of each phase (10 ms ticks). The ws ceiling has no Redis to pay for.",
        f"**Fan-out.** {fan.get('subscribers', 1000):,} subscribers in one room, split across the two"
        f" processes, one publisher. *Fixed*: {fan.get('rate', 5000):,} deliveries/s for"
        f" {fan.get('rate-seconds', 10)} s; latency is publish → receive, per delivery. *Max*: as fast as"
        f" the target delivers with at most {fan.get('window', 64)} publications not yet received by every"
        f" subscriber, for {fan.get('max-seconds', 10)} s. *Flood*: {fan.get('flood', 2000):,} publications"
        " sent open loop, all at once. Server CPU per delivery = server CPU time ÷ deliveries. Lost ="
        " expected − received when the phase's wait ends (5 s after the last publication;"
        f" {fan.get('flood-wait', 10)} s for the flood).",
        f"**Idle connections.** {idle.get('connections', 5000):,} authenticated connections, each joined to one"
        f" of {idle.get('rooms', 100)} rooms; the growth of the servers' summed RSS ÷ connections after"
        f" {idle.get('settle', 5)} s of settling; then the servers' CPU over {idle.get('window', 30)} s in"
        " which nothing happens but heartbeats and timers, ÷ seconds ÷ connections held (µs/s: millionths"
        " of a core per connection). *Presence on*: the same with presence on in hubbub's namespace (the"
        " development-mode default), so every joined connection also has an entry in Redis that its node"
        " keeps alive; the peers have no presence.",
        f"**Connect rate.** {con.get('count', 2000):,} JWT-authenticated connects (WebSocket upgrade, token"
        " check and the protocol's handshake, no join), one at a time and 50 in flight; connects/s and"
        " server CPU time per connect.",
        f"**Many rooms.** {rooms.get('rooms', 10000):,} rooms of 1–5 members over"
        f" {rooms.get('connections', 2000):,} connections; {rooms.get('rate', 2000):,} publications/s for"
        f" {rooms.get('seconds', 10)} s, each to a random room.",
        f"**One node holding many connections.** {scale.get('connections', 0):,} authenticated connections,"
        f" all to the first process, in {scale.get('rooms', 0):,} rooms, opened {scale.get('inflight', 50)} at"
        f" a time from {scale.get('sources', 1)} loopback source addresses (one address has about 28,000"
        f" ephemeral ports towards a port); RSS growth ÷ connections after {scale.get('settle', 5)} s, the"
        f" CPU of that process and Redis over {scale.get('window', 30)} s of heartbeats only, then"
        f" {scale.get('rate', 5000):,} deliveries/s for {scale.get('rate-seconds', 10)} s, publications to the"
        " rooms in turn, while every connection is held." + (f" Not 100,000: {scale_limit}." if scale_limit else ""),
        f"**Soak.** hubbub only, two nodes on Redis, presence on: {soak.get('connections', 10000):,}"
        f" connections in {soak.get('rooms', 1000):,} rooms; {soak.get('rate', 1000):,} deliveries/s for"
        f" {soak.get('seconds', 600):g} s while {soak.get('churn', 0.01):.0%} of the connections reconnect every"
        " second (a tenth of them churn, each reconnecting about every 10 s: connect, authenticate, join)."
        " Loss is counted on the connections that stay; every reconnect must succeed; the servers' RSS is"
        f" sampled every {soak.get('sample', 10):g} s. Run once, not repeated.",
        "**Publishing on a Redis Cluster** (`bench/shards.py`). hubbub only: for 1, 2 and 3 masters (cluster"
        " mode, no replicas, the slots split evenly), two publisher processes with hubbub's Redis broker publish"
        " as fast as their publishes in flight allow, round robin over the rooms, with history and an"
        " idempotency key; one subscriber process receives every publication. Redis CPU per publication is the"
        " masters' CPU over the publications; the busiest master's ceiling is the rate divided by its share of"
        " a core: where it would be busy all the time. Run once, not repeated.",
        "**Publications** are acknowledged in every scenario: hubbub's always are (the reply carries the"
        " offset), and the generator emits Socket.IO's with an ack callback, which the servers answer.",
    ]
    repeat = document["repeat"]
    runs_text = f"{len(document['runs'])} runs, " + ("one repeat" if repeat == 1 else f"median of {repeat} repeats")
    method_md = "\n".join(textwrap.fill(item, 100, initial_indent="- ", subsequent_indent="  ") for item in method)
    return f"""# Benchmarks

hubbub and three peers, measured side by side on one machine by one load generator, with
`.venv/bin/python bench/run.py` (see [bench/README.md](../bench/README.md)). This page is written
by that command; the raw figures of every run are in `bench/results/{results_name}` on the machine
that ran it. Run {started}: {runs_text}, {document["duration_s"] / 60:.0f} minutes in all.
[performance.md](performance.md) explains the figures: where a node's CPU goes, and what is left.

**Every figure is the median of the repeats**; counts of lost messages and failed connections are
summed over all runs. "hubbub ÷ peer" is hubbub's figure divided by the peer's: below 1× hubbub
uses less (CPU, memory, latency), above 1× it does more (deliveries/s, connects/s). † marks a
figure where the load generator reported itself saturated: the server may do better than shown.

## hubbub's targets

| target | goal | hubbub | met |
|---|---|---|---|
{goal_rows}

## Machine and versions

{environment_table(env)}

## Targets

{target_lines}

Every target is started fresh for every scenario run (Redis is flushed before), listens on
127.0.0.1 and authenticates every connection with an HS256 JWT. The two-process targets get
half of the connections on each process, so every delivery of a room crosses the broker.

## Method

{method_md}

## Results

{scenario_tables(document)}
## Charts

{chart_md}

## Problems

What failed this run (a crash, a failed run, a hubbub loss):

{problems_md}
"""


def write_docs(document: dict[str, Any], results_path: Path) -> Path:
    charts = draw_charts(document, DOCS / "images")
    path = DOCS / "benchmarks.md"
    path.write_text(render_markdown(document, charts, results_path.name))
    return path
