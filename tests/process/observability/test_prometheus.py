"""The dashboards and alert rules, proven on real data: a real Prometheus scraping two real nodes on a real Redis.

One scenario for the module (tests/support/monitored.py): Redis, `node0` and `node1`, a steady
load of room members publishing on both nodes, and a private Prometheus scraping each node every
second as pod `node0`/`node1` in namespace `hubbub-test`, with hubbub's alert rules loaded with
short windows (FAST). The tests run in file order:

1. Prometheus sees both nodes, loads every rule, and no fault's alert fires on the healthy fleet.
2. `sum by (pod) (hubbub_connections)`, the query autoscaling reads, counts each node's live
   connections.
3. Each fault makes its alert fire in that Prometheus: a burst of connections, a flood of bad
   tokens, a slow-consumer storm, a Redis outage (which then resolves).
4. Every dashboard panel's query and every alert expression is accepted by Prometheus and has
   data. Error panels only have series once the error has happened: the scenario makes each
   happen (`exercise()` at the start for the cheap ones, the faults above for the rest; run alone,
   these tests provoke any fault that has not run yet), never skipping a panel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hubbub.monitoring.alerts import ALERTS, AlertRule, Series, Thresholds, rule_groups
from hubbub.monitoring.catalog import DASHBOARD_UIDS, dashboard, queries
from tests.support.monitored import PODS, MonitoredFleet
from tests.support.prometheus import NAMESPACE, QueryError
from tests.support.wsclient import RawClient

pytestmark = [pytest.mark.prometheus, pytest.mark.redis, pytest.mark.timeout(300)]


#: The rules with windows a test can wait out: rates over 15 s (15 scrapes), the connection spike
#: against the average of the 30 s that ended 20 s ago, and every `for` 2 s (two evaluations: it
#: still has to hold, not just blink). The thresholds the faults cross are lowered to test-sized
#: crowds; the others keep their defaults, so that the healthy fleet fires nothing.
FAST = Thresholds(
    rate_window="15s",
    connection_spike_ratio=2.0,
    connection_spike_min_increase=20,
    connection_spike_baseline_window="30s",
    connection_spike_baseline_offset="20s",
    auth_failure_rate=0.5,
    slow_consumer_rate=0.1,
).with_all_for("2s")

#: What Grafana's $__rate_interval stands for here: 4 scrape intervals would do, 15 s smooths the load's jitter.
RATE_INTERVAL = "15s"

#: The alerts the faults below are about: none of them may fire before its fault.
FAULT_ALERTS = ("HubbubConnectionSpike", "HubbubAuthFailureSpike", "HubbubSlowConsumerStorm", "HubbubRedisUnavailable")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoredFleet]:
    group = MonitoredFleet(tmp_path_factory.mktemp("monitored"), rules=rule_groups(FAST)).start()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def started_at(fleet: MonitoredFleet) -> float:
    return time.time()


# --- the faults (each also runs, without waiting for its alert, when a data test needs its events) --------


async def connection_burst(fleet: MonitoredFleet) -> list[RawClient]:
    """40 connections at once on node0: beside the load's 6, more than twice the baseline and 20 above it."""
    clients = await fleet.connection_burst(40)
    fleet.provoked.add("connection_burst")
    return clients


async def bad_token_flood(fleet: MonitoredFleet) -> None:
    """30 forged tokens within seconds: 2 a second over the 15 s window, the alert says 0.5."""
    await fleet.bad_tokens(30)
    fleet.provoked.add("bad_token_flood")


async def slow_consumer_storm(fleet: MonitoredFleet) -> None:
    """6 members of a busy room that never read, closed 4008: 0.4 a second over 15 s, the alert says 0.1."""
    closed = await fleet.slow_consumer_storm(6)
    assert closed == 6, f"node0 closed {closed} of the 6 slow consumers"
    fleet.provoked.add("slow_consumer_storm")


async def redis_outage(fleet: MonitoredFleet, *, until_firing: bool) -> None:
    """Redis stops until each node reports it unreachable (and, if asked, the alert fires), then comes back."""
    prom = fleet.prom
    fleet.stop_redis()
    try:
        await prom.wait_for(
            lambda: (
                prom.values('min by (pod) (hubbub_redis_available{namespace="hubbub-test"})')
                == {'{pod="node0"}': 0.0, '{pod="node1"}': 0.0}
            ),
            what="both nodes to report Redis unavailable",
        )
        if until_firing:
            await prom.wait_for(
                lambda: firing_pods(fleet, "HubbubRedisUnavailable") == set(PODS),
                what="HubbubRedisUnavailable firing for both pods",
            )
    finally:
        fleet.start_redis()
    fleet.provoked.add("redis_outage")


async def rolling_restart(fleet: MonitoredFleet) -> None:
    """node1 drains and restarts, as in a rolling update; Prometheus sees it draining on the way."""
    prom = fleet.prom
    await fleet.rolling_restart("node1")
    await prom.wait_for(
        lambda: prom.query('max_over_time(hubbub_draining{pod="node1"}[5m]) == 1'), what="node1 seen draining"
    )
    await prom.wait_for(lambda: prom.values('hubbub_ready{pod="node1"}') != {}, what="node1 scraped again")
    fleet.provoked.add("rolling_restart")


async def every_event_happened(fleet: MonitoredFleet) -> None:
    """The faults that have not run yet in this module (when a data test runs alone), without their alerts."""
    if "connection_burst" not in fleet.provoked:
        for client in await connection_burst(fleet):
            await client.close()
    if "bad_token_flood" not in fleet.provoked:
        await bad_token_flood(fleet)
    if "slow_consumer_storm" not in fleet.provoked:
        await slow_consumer_storm(fleet)
    if "rolling_restart" not in fleet.provoked:
        await rolling_restart(fleet)
    if "redis_outage" not in fleet.provoked:
        await redis_outage(fleet, until_firing=False)
        await redis_back(fleet)


async def redis_back(fleet: MonitoredFleet) -> None:
    prom = fleet.prom
    await prom.wait_for(
        lambda: (
            prom.values('min by (pod) (hubbub_redis_available{namespace="hubbub-test"})')
            == {'{pod="node0"}': 1.0, '{pod="node1"}': 1.0}
        ),
        what="both nodes to report Redis available again",
    )


def firing_pods(fleet: MonitoredFleet, alert: str) -> set[str]:
    """The pods (or namespaces, for alerts per namespace) an alert fires for now."""
    return {
        a["labels"].get("pod", a["labels"].get("namespace", "?"))
        for a in fleet.prom.alerts()
        if a["labels"]["alertname"] == alert and a["state"] == "firing"
    }


# --- 1. the setup ------------------------------------------------------------------------------------------


async def test_prometheus_scrapes_both_nodes_and_loads_every_alert_rule(fleet: MonitoredFleet) -> None:
    prom = fleet.prom
    await prom.wait_for(lambda: prom.targets_health() == {"node0": "up", "node1": "up"}, what="both targets up")
    loaded = {rule["name"]: rule for rule in prom.rules_loaded()}
    assert sorted(loaded) == sorted(a.name for a in ALERTS)
    await prom.wait_for(
        lambda: all(rule.get("health") == "ok" for rule in prom.rules_loaded()),
        what="every rule evaluated without error",
    )
    await fleet.exercise()


async def test_no_fault_alert_fires_on_the_healthy_fleet(fleet: MonitoredFleet) -> None:
    prom = fleet.prom
    # Once rates span their window (and each rule was evaluated over data from the load), nothing that the
    # faults below are about is pending or firing: they fire because of the faults, not of the setup.
    await prom.wait_for(
        lambda: prom.query('count(count_over_time(hubbub_connections{pod="node0"}[30s])) > 0'), what="30 s of data"
    )
    active = {name: state for name, state in prom.alert_states().items() if name in FAULT_ALERTS}
    assert active == {}


# --- 2. the autoscaling query ---------------------------------------------------------------------------


async def test_connections_by_pod_query_counts_each_nodes_live_connections(fleet: MonitoredFleet) -> None:
    assert fleet.load is not None
    load = fleet.load
    prom = fleet.prom
    extra = await fleet.connection_burst(4, pod="node1")  # the two nodes then differ: 3 and 7

    def agree() -> dict[str, float]:
        seen = {s["metric"]["pod"]: float(s["value"][1]) for s in prom.query("sum by (pod) (hubbub_connections)")}
        own = {pod: fleet.node_metric(pod, "hubbub_connections") for pod in PODS}
        opened = {pod: float(load.live[pod] + (4 if pod == "node1" else 0)) for pod in PODS}
        assert seen == own == opened, f"Prometheus {seen}, each node's /metrics {own}, clients open {opened}"
        return seen

    assert await prom.wait_for(agree, what="Prometheus' count per pod to match each node") == {
        "node0": 3.0,
        "node1": 7.0,
    }
    for client in extra:
        await client.close()
    await prom.wait_for(
        lambda: prom.values("sum by (pod) (hubbub_connections)") == {'{pod="node0"}': 3.0, '{pod="node1"}': 3.0},
        what="node1's count to fall back to the load's 3 once the 4 extra clients closed",
    )


# --- 3. faults fire their alerts ---------------------------------------------------------------------------


async def test_a_burst_of_connections_fires_connection_spike(fleet: MonitoredFleet) -> None:
    clients = await connection_burst(fleet)
    try:
        await fleet.prom.wait_for(
            lambda: firing_pods(fleet, "HubbubConnectionSpike") == {NAMESPACE},
            what="HubbubConnectionSpike firing for namespace hubbub-test",
        )
    finally:
        for client in clients:
            await client.close()


async def test_a_flood_of_bad_tokens_fires_auth_failure_spike(fleet: MonitoredFleet) -> None:
    await bad_token_flood(fleet)
    await fleet.prom.wait_for(
        lambda: firing_pods(fleet, "HubbubAuthFailureSpike") == {NAMESPACE},
        what="HubbubAuthFailureSpike firing for namespace hubbub-test",
    )


async def test_a_storm_of_slow_consumers_fires_slow_consumer_storm(fleet: MonitoredFleet) -> None:
    await slow_consumer_storm(fleet)
    await fleet.prom.wait_for(
        lambda: firing_pods(fleet, "HubbubSlowConsumerStorm") == {NAMESPACE},
        what="HubbubSlowConsumerStorm firing for namespace hubbub-test",
    )


async def test_a_redis_outage_fires_redis_unavailable_which_resolves_when_redis_is_back(
    fleet: MonitoredFleet,
) -> None:
    await redis_outage(fleet, until_firing=True)
    await redis_back(fleet)
    await fleet.prom.wait_for(
        lambda: "HubbubRedisUnavailable" not in fleet.prom.alert_states(),
        what="HubbubRedisUnavailable to resolve",
    )
    # The load's members come back on their own (the outage may have closed them).
    assert fleet.load is not None
    load = fleet.load
    await fleet.prom.wait_for(lambda: sum(load.live.values()) == load.members, what="the load to reconnect")


# --- 4. every panel and every alert expression has data ----------------------------------------------------


@dataclass(frozen=True)
class Panel:
    dashboard: str
    title: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.title}"


def panel_queries() -> list[Panel]:
    """Every panel query of every dashboard, with Grafana's variables filled in as a dashboard user would."""
    panels = []
    for uid in DASHBOARD_UIDS:
        for title, expr in queries(dashboard(uid)):
            panels.append(Panel(uid, title, substitute(expr)))
    return panels


def substitute(expr: str) -> str:
    """$namespace is this scenario's namespace, $pod every pod (a regex matcher) or node0 (an equality one),
    $__rate_interval RATE_INTERVAL; `${x}` and `${x:format}` are the same variables."""

    def variable(match: re.Match[str]) -> str:
        operator, name = match.group(1), match.group(2)
        if name == "namespace":
            return f'{operator}"{NAMESPACE}"'
        if name == "pod":
            return '=~".*"' if operator == "=~" else '="node0"'
        return match.group(0)

    expr = re.sub(r'(=~|=)\s*"\$\{?(\w+)(?::\w+)?\}?"', variable, expr)
    expr = re.sub(r"\$\{?__rate_interval\}?", RATE_INTERVAL, expr)
    expr = re.sub(r"\$\{?__interval\}?", RATE_INTERVAL, expr)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"a Grafana variable this test does not know: {leftover} in {expr}"
    return expr


def _panel_ids() -> list[Panel]:
    try:
        return panel_queries()
    except Exception:
        return []  # reported by the test below, which then has no panel to check


PANELS = _panel_ids()


def test_the_dashboards_have_panel_queries() -> None:
    panels = panel_queries()
    assert {p.dashboard for p in panels} >= {"hubbub-overview", "hubbub-node"}, panels
    assert panels == PANELS


def has_data(fleet: MonitoredFleet, expr: str, since: float) -> list[dict[str, Any]]:
    """The series a range query (what Grafana runs for a graph) returns since the scenario began."""
    now = time.time()
    return [s for s in fleet.prom.query_range(expr, since, now, 2.0) if s["values"]]


def _panel_id(panel: Panel) -> str:
    same = [p for p in PANELS if (p.dashboard, p.title) == (panel.dashboard, panel.title)]
    suffix = f" #{same.index(panel) + 1}" if len(same) > 1 else ""
    return f"{panel.dashboard}: {panel.title}{suffix}"


@pytest.mark.parametrize("panel", PANELS, ids=_panel_id)
async def test_every_dashboard_panel_query_returns_data(fleet: MonitoredFleet, started_at: float, panel: Panel) -> None:
    try:
        fleet.prom.query(panel.expr)
    except QueryError as exc:
        raise AssertionError(f"Prometheus refuses panel {panel}: {panel.expr}\n{exc}") from None
    await every_event_happened(fleet)
    await fleet.prom.wait_for(
        lambda: has_data(fleet, panel.expr, started_at),
        what=f"data for panel {panel}, query: {panel.expr}",
    )


#: A series selector in an alert expression: a hubbub metric name and its matchers, if any.
SELECTOR = re.compile(r"\b(hubbub_[a-z_]+)(\{[^{}]*\})?")


def selectors(expr: str) -> list[str]:
    """Every series selector in `expr`. Sound here: each metric an alert reads is named hubbub_* and written
    by alerts.Series as `name{matchers}` (or a bare name), and no label value holds a brace."""
    return sorted({name + (matchers or "") for name, matchers in SELECTOR.findall(expr)})


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
async def test_every_alert_expression_is_accepted_and_each_selector_in_it_has_data(
    fleet: MonitoredFleet, started_at: float, alert: AlertRule
) -> None:
    expr = alert.expr(FAST, Series())
    try:
        fleet.prom.query(expr)
    except QueryError as exc:
        raise AssertionError(f"Prometheus refuses {alert.name}: {expr}\n{exc}") from None
    found = selectors(expr)
    assert found, f"no selector found in {alert.name}: {expr}"
    await every_event_happened(fleet)
    for selector in found:
        await fleet.prom.wait_for(_has_data(fleet, selector, started_at), what=f"data for {selector} (in {alert.name})")


def _has_data(fleet: MonitoredFleet, expr: str, since: float) -> Callable[[], list[dict[str, Any]]]:
    return lambda: has_data(fleet, expr, since)
