"""The plan of a bench run and its execution: every repeat of every target and scenario, with the
results document (the JSON schema of bench/results/) rewritten after each run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import LOADGEN_CPU, SERVER_CPU
from .console import log
from .metrics import fmt
from .processes import pinning_available
from .scenarios import NOT_APPLICABLE, SCENARIO_TITLES, SHARD_MASTERS, Scenario, run_once, scale_connections
from .summary import flatten, notes, problems, summarize, walk_phases
from .targets import Redis, Target


@dataclass
class Plan:
    targets: list[Target]
    scenarios: list[Scenario]
    repeat: int
    smoke: bool
    out: Path
    stamp: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def results_document(plan: Plan, env: dict[str, Any], started: float, finished: bool) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    for target in plan.targets:
        for scenario in plan.scenarios:
            ok = [
                r["result"]
                for r in plan.runs
                if r["target"] == target.name and r["scenario"] == scenario.key and r["result"] is not None
            ]
            if ok:
                summary.setdefault(target.name, {})[scenario.key] = summarize(ok)
    return {
        "mode": "smoke" if plan.smoke else "full",
        "scale_limit": scale_connections(plan.smoke)[1],
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "finished": finished,
        "repeat": plan.repeat,
        "environment": env,
        "targets": {t.name: {"label": t.label, "description": t.description} for t in plan.targets},
        "scenarios": {
            s.key: {
                "command": s.command,
                "flags": s.flags,
                "title": SCENARIO_TITLES[s.key],
                "hubbub_namespace": s.hubbub_namespace,
            }
            for s in plan.scenarios
        },
        "not_applicable": [
            {"target": t.name, "scenario": s.key, "reason": NOT_APPLICABLE[(t.name, s.key)]}
            for t in plan.targets
            for s in plan.scenarios
            if (t.name, s.key) in NOT_APPLICABLE
        ],
        "runs": plan.runs,
        "summary": summary,
        "problems": problems(plan.runs),
        "notes": notes(plan.runs),
    }


def write_results(plan: Plan, document: dict[str, Any]) -> Path:
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / f"{plan.stamp}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    partial.replace(path)
    return path


def one_line(scenario: str, result: dict[str, Any]) -> str:
    """A progress line for one run."""
    flat = flatten(result)

    def pick(key: str) -> str:
        return fmt(float(flat[key])) if key in flat else "?"

    lost = sum(int(p.get("lost") or 0) for _, p in walk_phases(result))
    if scenario == "fanout":
        return (
            f"p99 {pick('phases.fixed.p99_ms')} ms at the fixed rate, max {pick('phases.max.deliveries_per_s')}/s"
            f" at {pick('phases.max.server_cpu_us_per_delivery')} µs/delivery, flood"
            f" {pick('phases.flood.received')}/{pick('phases.flood.expected')}, lost {lost}"
        )
    if scenario in ("idle", "idle_presence"):
        return (
            f"{pick('idle.rss_kib_per_connection')} KiB/connection,"
            f" {pick('idle.server_cpu_us_per_connection_s')} µs/s CPU per connection, failed {pick('idle.failed')}"
        )
    if scenario == "scale":
        return (
            f"{pick('idle.connected')} held at {pick('idle.rss_kib_per_connection')} KiB and"
            f" {pick('idle.server_cpu_us_per_connection_s')} µs/s each; p99 {pick('phases.held.p99_ms')} ms at"
            f" {pick('phases.held.deliveries_per_s')} deliveries/s, lost {lost}"
        )
    if scenario == "soak":
        return (
            f"{pick('phases.soak.received')}/{pick('phases.soak.expected')} received, lost {lost},"
            f" p99 {pick('phases.soak.p99_ms')} ms; {pick('soak.reconnects')} reconnects,"
            f" {pick('soak.reconnect_failures')} failed; RSS {pick('soak.rss_growth_kib')} KiB"
        )
    if scenario == "shards":
        return ", ".join(
            f"{n} master(s) {pick(f'masters_{n}.publications_per_s')}/s,"
            f" ceiling {pick(f'masters_{n}.busiest_master_ceiling_per_s')}/s"
            for n in SHARD_MASTERS
        )
    if scenario.startswith("connect"):
        return (
            f"{pick('connect.connects_per_s')}/s, {pick('connect.server_cpu_ms_per_connect')} ms CPU/connect,"
            f" failed {pick('connect.failures')}"
        )
    return (
        f"{pick('phases.fixed.deliveries_per_s')} deliveries/s, p99 {pick('phases.fixed.p99_ms')} ms,"
        f" {pick('phases.fixed.server_cpu_us_per_delivery')} µs/delivery, lost {lost}"
    )


def execute(plan: Plan, loadgen: Path, env: dict[str, Any], started: float) -> Path:
    cpu_servers = SERVER_CPU if pinning_available() else None
    cpu_loadgen = LOADGEN_CPU if pinning_available() else None
    if cpu_servers is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {LOADGEN_CPU})  # the runner itself stays off the servers' core
    logs = plan.out / "logs" / plan.stamp
    redis: Redis | None = None
    if any(t.uses_redis for t in plan.targets):
        redis = Redis(logs / "redis", cpu_servers).start()
    pairs = [(t, s) for t in plan.targets for s in plan.scenarios if (t.name, s.key) not in NOT_APPLICABLE]
    total = sum(1 if s.once else plan.repeat for _, s in pairs)
    done = 0
    path = write_results(plan, results_document(plan, env, started, False))
    try:
        # Repeats outermost, targets inside: a drift of the machine touches every target alike.
        for repeat in range(1, plan.repeat + 1):
            for target, scenario in pairs:
                if scenario.once and repeat > 1:
                    continue
                done += 1
                run = run_once(target, scenario, repeat, loadgen, redis, logs, cpu_servers, cpu_loadgen)
                plan.runs.append(run)
                summary = one_line(scenario.key, run["result"]) if run["result"] else run["error"]
                crashed = f" CRASHED: {', '.join(run['crashed'])}" if run["crashed"] else ""
                log(f"[{done}/{total}] {target.name} {scenario.key} #{repeat}: {summary}{crashed} ({run['seconds']} s)")
                path = write_results(plan, results_document(plan, env, started, False))
                if redis is not None and not (redis.proc and redis.proc.alive):
                    log("redis-server died: restarting it")
                    redis = Redis(logs / f"redis-{done}", cpu_servers).start()
    finally:
        if redis is not None:
            redis.stop()
    return path
