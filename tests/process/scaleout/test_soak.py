"""The soak (bench/run.py --scenarios soak): ten minutes of two nodes on Redis under traffic and churn.

The benchmark carries the figures (docs/benchmarks.md); these tests hold the run to what must be true
of it on any machine: nothing lost by the connections that stayed, every reconnect succeeded, no
connection closed by a server, no error reply, and memory flat once warm.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.bench import run_bench

#: The soak's 600 s, its set-up, and the runner's start and stop.
RUN_TIMEOUT = 1200
#: RSS a server process may gain over the second half of the soak (warm: every room has traffic, every
#: churning connection has reconnected 30 times): 1 MB, less than 70 bytes per reconnect of that half.
MAX_NODE_GROWTH_KIB = 1024
#: Redis keeps filling the rooms' streams (up to history_size entries each) for the whole soak.
MAX_REDIS_GROWTH_KIB = 10 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    document = run_bench(
        ["--targets", "hubbub", "--scenarios", "soak", "--no-docs"], tmp_path_factory.mktemp("soak"), RUN_TIMEOUT
    )
    (run,) = [r for r in document["runs"] if r["scenario"] == "soak"]
    assert run["error"] is None and run["crashed"] == [], run
    yield run["result"]


@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_ten_minutes_of_traffic_and_reconnects_lose_nothing_and_every_reconnect_succeeds(
    soak: dict[str, Any],
) -> None:
    phase, report = soak["phases"]["soak"], soak["soak"]
    assert phase["publish_seconds"] >= 599 and report["connections"] == 10_000
    assert phase["received"] == phase["expected"] > 0, phase
    assert (phase["lost"], phase["duplicates"], phase["out_of_order"], phase["publish_errors"]) == (0, 0, 0, 0), phase
    assert report["reconnects"] >= 0.9 * 100 * 600, report  # 1 % of 10,000 a second, for 600 s
    assert (report["reconnect_failures"], report["steady_connections_lost"]) == (0, 0), report
    assert soak["errors"]["total"] == 0, soak["errors"]
    assert soak["disconnects"]["total"] == 0, soak["disconnects"]


@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_the_servers_memory_is_flat_once_warm(soak: dict[str, Any]) -> None:
    samples = soak["soak"]["rss"]
    # The runner lists Redis last among the measured processes (bench/harness/scenarios.py, run_generator).
    *nodes, redis = soak["params"]["pids"].split(",")
    middle, last = samples[len(samples) // 2]["rss_kib_by_pid"], samples[-1]["rss_kib_by_pid"]
    growth = {pid: last[pid] - middle[pid] for pid in [*nodes, redis]}
    assert growth[redis] <= MAX_REDIS_GROWTH_KIB, growth
    assert all(growth[pid] <= MAX_NODE_GROWTH_KIB for pid in nodes), growth
