"""The benchmark's smoke run (bench/run.py --smoke): every target and scenario, end to end.

No performance target is asserted here: the smoke only proves the bench still works and catches
what must never happen, whatever the machine: a target crashing, or hubbub losing a message in
any phase. It starts its own Redis, servers and load generator (built from bench/loadgen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.bench import run_bench

TARGETS = ("hubbub", "socketio", "pysocketio", "ws")
SCENARIOS = ("fanout", "idle", "idle_presence", "scale", "connect_1", "connect_50", "rooms", "soak", "shards")
RUN_TIMEOUT = 600


def phases(result: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every object of a generator result that accounts for messages (has `lost`)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(result, dict):
        if "lost" in result:
            found.append((path, result))
        for key, value in result.items():
            found += phases(value, f"{path}.{key}" if path else key)
    return found


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_bench_smoke(tmp_path: Path) -> None:
    document = run_bench(["--smoke"], tmp_path, RUN_TIMEOUT)
    assert document["mode"] == "smoke"
    assert document["problems"] == []

    skipped = {(entry["target"], entry["scenario"]) for entry in document["not_applicable"]}
    for target in TARGETS:
        for scenario in SCENARIOS:
            if (target, scenario) in skipped:
                continue
            runs = [r for r in document["runs"] if r["target"] == target and r["scenario"] == scenario]
            assert runs, f"no {scenario} run of {target}"
            for run in runs:
                assert run["error"] is None, f"{target} {scenario}: {run['error']}"
                assert run["crashed"] == [], f"{target} {scenario}: crashed {run['crashed']}"
                assert run["result"] is not None
                if scenario in ("fanout", "rooms", "scale", "soak"):
                    found = phases(run["result"])
                    assert found, f"{target} {scenario}: no phase in {run['result']}"
                    for path, phase in found:
                        assert phase["received"] > 0, f"{target} {scenario} {path}: nothing received"
                        if target == "hubbub":
                            assert phase["lost"] == 0, f"hubbub lost {phase['lost']} in {scenario} {path}"
            assert scenario in document["summary"][target]
    assert sum(1 for run in document["runs"] if run["target"] == "hubbub") == len(SCENARIOS)
    # Only hubbub has presence, and it ran that scenario with presence on.
    assert document["scenarios"]["idle_presence"]["hubbub_namespace"] == {"presence": True}
    # The scale scenario put every connection on the first process, from more than one source address.
    assert document["scenarios"]["scale"]["flags"]["sources"] >= 2
    for run in document["runs"]:
        if run["scenario"] == "scale":
            assert run["result"]["idle"]["connected"] == document["scenarios"]["scale"]["flags"]["connections"]
            assert len(run["result"]["params"]["urls"].split(",")) == 1
    # The soak ran (hubbub only) with every reconnect succeeding and no connection closed by a server.
    soak = [run["result"]["soak"] for run in document["runs"] if run["scenario"] == "soak"]
    assert len(soak) == 1 and soak[0]["reconnects"] > 0
    assert (soak[0]["reconnect_failures"], soak[0]["steady_connections_lost"]) == (0, 0)
    # Publishing on Redis Clusters of 1, 2 and 3 masters (hubbub only): every publication delivered.
    (shards,) = [run["result"] for run in document["runs"] if run["scenario"] == "shards"]
    assert sorted(shards) == ["masters_1", "masters_2", "masters_3"]
    for figures in shards.values():
        assert figures["delivered"] == figures["published"] > 0 and figures["errors"] == figures["lost"] == 0, figures
    presence_runs = {run["target"] for run in document["runs"] if run["scenario"] == "idle_presence"}
    assert presence_runs == {"hubbub"}
    for run in document["runs"]:
        if run["scenario"].startswith("idle"):
            # The smoke's 3 s window may hold no heartbeat at all: zero CPU is a possible figure there.
            assert run["result"]["idle"]["window_seconds"] >= 3
            assert run["result"]["idle"]["server_cpu_us_per_connection_s"] >= 0
