"""hubbub's dashboards and alert rules (hubbub.monitoring): generated, checked in, and correct.

- The checked-in files are exactly what `python -m hubbub.monitoring` writes (whatever the hash
  seed), and the wheel carries them.
- The dashboards: every panel has a unit, a description and the datasource variable; every query
  selects the namespace and pod variables, rates over `$__rate_interval`, takes quantiles over
  `sum by (le)` of bucket rates, and never rates a gauge.
- Both: every metric they read is in hubbub.metrics.METRICS (or is a standard process_/python_
  collector's), with the kind the query assumes and the labels it groups by.
- The alerts: severity, summary, description, a runbook_url whose anchor is a heading of
  docs/runbooks.md, which documents every threshold with its default; `promtool check rules`
  accepts the rendered file, and `promtool test rules` sees every alert fire and stay quiet.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from hubbub.metrics import METRICS
from hubbub.monitoring import alerts, catalog
from hubbub.monitoring.alerts import ALERTS, Thresholds
from tests.project.test_doc_paths import anchors
from tests.support import promtool

ROOT = Path(__file__).resolve().parents[3]
RUNBOOKS = ROOT / "docs" / "runbooks.md"
REGENERATE = "run `.venv/bin/python -m hubbub.monitoring` and commit the files it writes"

#: Labels Prometheus attaches to every scraped series (Kubernetes service discovery), and histograms' `le`.
TARGET_LABELS = {"namespace", "pod"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# -- what the queries read ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    kind: str  # counter, gauge, histogram (a _bucket, _sum or _count series), or info
    labels: frozenset[str]


def standard_collectors() -> dict[str, Series]:
    """Sample names of prometheus_client's process, platform and GC collectors, as the node registers them."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    found: dict[str, Series] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = frozenset(sample.labels)
            found[sample.name] = Series(family.type, labels | found.get(sample.name, Series("", frozenset())).labels)
    return found


def known_series() -> dict[str, Series]:
    """Every series name a query may read, with its kind and labels."""
    found = standard_collectors()
    for spec in METRICS:
        labels = frozenset(spec.labels)
        if spec.kind == "histogram":
            found[f"{spec.name}_bucket"] = Series("histogram", labels | {"le"})
            found[f"{spec.name}_sum"] = Series("histogram", labels)
            found[f"{spec.name}_count"] = Series("histogram", labels)
        else:
            found[spec.name] = Series(spec.kind, labels)
    return found


METRIC_NAME = re.compile(r"\b(?:hubbub|process|python)_[a-z0-9_]+\b")
RATED = re.compile(r"\b(rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)")
RATE_WINDOW = re.compile(r"\b(?:rate|irate|increase)\([^()\[]*\[([^\]]+)\]")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^{}]*)\}")
QUANTILE = re.compile(r"histogram_quantile\(")
QUANTILE_SHAPE = re.compile(
    r"histogram_quantile\([\d.]+, sum by \(((?:\w+, )*le)\) \(rate\((\w+_bucket)(?:\{[^{}]*\})?\[([^\]]+)\]\)\)\)"
)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expression) for every query of both dashboards."""
    return [
        (uid, title, expr) for uid in catalog.DASHBOARD_UIDS for title, expr in catalog.queries(catalog.dashboard(uid))
    ]


def alert_queries() -> list[tuple[str, str]]:
    return [(str(r["alert"]), str(r["expr"])) for group in alerts.rule_groups()["groups"] for r in group["rules"]]


def all_queries() -> list[Any]:
    """(where, expression) for every query of the dashboards and the alerts, as test parameters."""
    found = [(f"{uid}: {title}", expr) for uid, title, expr in dashboard_queries()]
    found += [(f"alert {name}", expr) for name, expr in alert_queries()]
    return [pytest.param(where, expr, id=f"{where} #{i}") for i, (where, expr) in enumerate(found)]


def selector_labels(matchers: str) -> set[str]:
    return {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if m.strip()}


# -- the files -----------------------------------------------------------------------------------------


def test_checked_in_files_are_what_the_generator_writes() -> None:
    try:
        from hubbub.monitoring.__main__ import outputs
    except ImportError as exc:
        pytest.fail(f"the generator needs grafana-foundation-sdk (the dev extra: scripts/install dev): {exc}")
    generated = outputs()
    assert {p.relative_to(catalog.HERE) for p in generated} == {
        Path("dashboards/hubbub-overview.json"),
        Path("dashboards/hubbub-node.json"),
        Path("rules/hubbub-alerts.yaml"),
    }
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generated.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"checked-in monitoring files differ from what the code generates: {stale}; {REGENERATE}"


@pytest.mark.parametrize("seed", ["0", "4242"])
def test_generation_is_the_same_whatever_the_hash_seed(seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    ran = subprocess.run(
        [sys.executable, "-m", "hubbub.monitoring", "--check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, (
        f"PYTHONHASHSEED={seed}: generated files differ:\n{ran.stdout}{ran.stderr}\n{REGENERATE}"
    )


def test_rendered_rule_file_is_the_rule_groups_structure() -> None:
    text = catalog.RULES_FILE.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == alerts.rule_groups()


def test_wheel_carries_the_dashboards_and_rules(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("hubbub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"hubbub/monitoring/dashboards/{uid}.json" for uid in catalog.DASHBOARD_UIDS}
    wanted |= {"hubbub/monitoring/rules/hubbub-alerts.yaml", "hubbub/monitoring/alerts.py"}
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"


# -- the dashboards --------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", catalog.DASHBOARD_UIDS)
def test_dashboard_has_its_uid_and_the_datasource_namespace_and_pod_variables(uid: str) -> None:
    model = catalog.dashboard(uid)
    assert model["uid"] == uid
    assert model["title"] == {"hubbub-overview": "hubbub / overview", "hubbub-node": "hubbub / node"}[uid]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "pod"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(hubbub_connections(\{{.*\}})?, {name}\)", variable["query"])
    assert variables["pod"]["multi"] and variables["pod"]["includeAll"]


@pytest.mark.parametrize("uid", catalog.DASHBOARD_UIDS)
def test_every_panel_has_a_unit_a_description_and_the_datasource_variable(uid: str) -> None:
    panels = catalog.panels(catalog.dashboard(uid))
    assert len(panels) >= 15
    problems = []
    for panel in panels:
        title = panel.get("title")
        if not (panel.get("fieldConfig", {}).get("defaults", {}).get("unit")):
            problems.append(f"{title}: no unit")
        if not (panel.get("description") or "").strip():
            problems.append(f"{title}: no description")
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{title}: datasource {panel.get('datasource')}")
        if not panel.get("targets"):
            problems.append(f"{title}: no query")
        problems += [
            f"{title}: target datasource {t.get('datasource')}"
            for t in panel["targets"]
            if t.get("datasource") != DATASOURCE
        ]
    ids = [p["id"] for p in catalog.dashboard(uid)["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("uid", "title", "expr"), [pytest.param(*q, id=f"{q[0]}: {q[1]} #{i}") for i, q in enumerate(dashboard_queries())]
)
def test_dashboard_query_selects_the_namespace_and_pods_and_rates_over_rate_interval(
    uid: str, title: str, expr: str
) -> None:
    for matchers in MATCHERS.findall(expr):
        assert 'namespace="$namespace"' in matchers and 'pod=~"$pod"' in matchers, f"{title}: {{{matchers}}}"
    windows = RATE_WINDOW.findall(expr)
    assert len(windows) == len(RATED.findall(expr)), f"{title}: a rate without a range: {expr}"
    assert all(w == "$__rate_interval" for w in windows), f"{title}: rate windows {windows}: use $__rate_interval"


@pytest.mark.parametrize(("where", "expr"), all_queries())
def test_quantiles_are_over_summed_rates_of_buckets(where: str, expr: str) -> None:
    assert len(QUANTILE.findall(expr)) == len(QUANTILE_SHAPE.findall(expr)), (
        f"{where}: histogram_quantile(φ, sum by (..., le) (rate(<histogram>_bucket{{...}}[...]))) expected: {expr}"
    )
    for _by, bucket, _window in QUANTILE_SHAPE.findall(expr):
        assert known_series().get(bucket, Series("", frozenset())).kind == "histogram", f"{where}: {bucket}"


@pytest.mark.parametrize(("where", "expr"), all_queries())
def test_queries_read_known_metrics_rate_only_counters_and_group_by_their_labels(where: str, expr: str) -> None:
    known = known_series()
    names = set(METRIC_NAME.findall(expr))
    assert names, f"{where}: reads no metric: {expr}"
    unknown = sorted(n for n in names if n not in known)
    assert not unknown, f"{where}: not in hubbub.metrics.METRICS nor a standard collector's: {unknown}"
    for function, name in RATED.findall(expr):
        assert known[name].kind in ("counter", "histogram"), f"{where}: {function}() of {name}, a {known[name].kind}"
    labels = TARGET_LABELS.union(*(known[n].labels for n in names))
    for grouping in GROUPING.findall(expr):
        extra = {label.strip() for label in grouping.split(",")} - labels
        assert not extra, f"{where}: groups by {sorted(extra)}, which none of {sorted(names)} has"
    for matchers in MATCHERS.findall(expr):
        extra = selector_labels(matchers) - labels
        assert not extra, f"{where}: selects on {sorted(extra)}, which none of {sorted(names)} has"


def test_dashboards_show_every_metric_hubbub_exports() -> None:
    shown = {m for _uid, _title, expr in dashboard_queries() for m in METRIC_NAME.findall(expr)}
    shown = {re.sub(r"_(bucket|sum|count)$", "", m) for m in shown}
    missing = sorted(spec.name for spec in METRICS if spec.name not in shown)
    assert not missing, f"on no dashboard: {missing}"


# -- the alert rules -------------------------------------------------------------------------------------


def runbook_text() -> str:
    return re.sub(r"\s+", " ", RUNBOOKS.read_text(encoding="utf-8"))


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_has_severity_summary_description_and_a_runbook_section(alert: alerts.AlertRule) -> None:
    rule = alerts.rule(alert)
    assert rule["labels"] == {"severity": alert.severity} and alert.severity in ("critical", "warning")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert "%(" not in annotations["summary"] + annotations["description"], "a threshold placeholder left unrendered"
    base, _, anchor = annotations["runbook_url"].partition("#")
    assert base == alerts.DEFAULT_RUNBOOK_BASE_URL and anchor == alert.name.lower()
    assert anchor in anchors("docs/runbooks.md"), f"docs/runbooks.md has no section `## {alert.name}`"
    assert rule["for"] == getattr(Thresholds(), alert.for_field)


def test_alert_names_are_unique_and_every_for_field_is_a_threshold() -> None:
    names = [a.name for a in ALERTS]
    assert len(names) == len(set(names))
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    assert all(a.for_field in fields and a.for_field.endswith("_for") for a in ALERTS)
    assert {f for f in fields if f.endswith("_for")} == {a.for_field for a in ALERTS}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Thresholds)])
def test_every_threshold_is_documented_in_the_runbooks_with_its_default(name: str) -> None:
    shown = alerts.threshold_values(Thresholds())[name]
    text = runbook_text()
    assert f"`{name}` (default `{shown}`" in text or f"| `{name}` | `{shown}` |" in text, (
        f"docs/runbooks.md should say: `{name}` (default `{shown}`)"
    )


def test_thresholds_selector_and_labels_parameterise_every_rule() -> None:
    custom = Thresholds(capacity_ratio=0.5, rate_window="10m", stuck_draining_for="1h")
    groups = alerts.rule_groups(
        custom, selector='namespace="chat"', runbook_base_url="https://wiki.example/rb", extra_labels={"team": "rt"}
    )["groups"]
    rules = {r["alert"]: r for r in groups[0]["rules"]}
    assert "> 0.5" in rules["HubbubNearConnectionCapacity"]["expr"]
    assert rules["HubbubStuckDraining"]["for"] == "1h"
    assert 'absent(hubbub_ready{namespace="chat"})' in rules["HubbubNoReadyNodes"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["team"] == "rt"
        assert rule["annotations"]["runbook_url"].startswith("https://wiki.example/rb#")
        assert "[5m]" not in rule["expr"]
        for matchers in MATCHERS.findall(rule["expr"]):
            assert 'namespace="chat"' in matchers, f"{rule['alert']}: {{{matchers}}} lacks the selector"


@pytest.fixture(scope="module")
def promtool_path() -> Path:
    return promtool.require("promtool")


def test_promtool_accepts_the_checked_in_rules(promtool_path: Path, tmp_path: Path) -> None:
    checked = promtool.run(promtool_path, "check", "rules", str(catalog.RULES_FILE), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


# -- promtool unit tests: every alert fires, and stays quiet ----------------------------------------------

#: Short windows for the unit tests, and `for: 0s` (but HubbubStuckDraining keeps a duration, to show it).
TEST_THRESHOLDS = dataclasses.replace(
    Thresholds(connection_spike_baseline_window="10m", connection_spike_baseline_offset="5m").with_all_for("0s"),
    stuck_draining_for="5m",
)
TEST_LABELS = {"team": "realtime"}
NS = "chat"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"namespace": NS, "pod": "hubbub-0", **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def histogram(name: str, per_minute: dict[str, int], **labels: str) -> list[dict[str, str]]:
    """A histogram's bucket series, each growing by its cumulative count every minute for 20 minutes."""
    return [series(f"{name}_bucket", f"0+{n}x20", le=le, **labels) for le, n in per_minute.items()]


@dataclass(frozen=True)
class Case:
    what: str
    input_series: list[dict[str, str]]
    #: Label sets of the alerts firing at eval_time (besides alertname, severity and TEST_LABELS); empty: quiet.
    fires: list[dict[str, str]] = field(default_factory=list)
    eval_time: str = "15m"


CASES: dict[str, list[Case]] = {
    "HubbubConnectionSpike": [
        Case(
            "connections jump from 1000 to 5000",
            [series("hubbub_connections", "1000x14 5000x10"), series("hubbub_connections", "800x24", namespace="calm")],
            [{"namespace": NS}],
            "20m",
        ),
        Case("a small namespace triples (200 more only)", [series("hubbub_connections", "100x14 300x10")], [], "20m"),
        Case("steady 5000", [series("hubbub_connections", "5000x24")], [], "20m"),
    ],
    "HubbubHighErrorRate": [
        Case(
            "one command in eleven fails",
            [
                series("hubbub_commands_total", "0+600x20", op="publish", result="ok"),
                series("hubbub_commands_total", "0+60x20", op="publish", result="403"),
                series("hubbub_commands_total", "0+600x20", op="publish", result="ok", namespace="calm"),
            ],
            [{"namespace": NS}],
        ),
        Case(
            "half the closes are 1006",
            [
                series("hubbub_disconnects_total", "0+60x20", code="1006"),
                series("hubbub_disconnects_total", "0+60x20", code="1000"),
            ],
            [{"namespace": NS}],
        ),
        Case(
            "one command in a hundred fails; closes are normal (1000, 1001, 1012, 4009)",
            [
                series("hubbub_commands_total", "0+600x20", op="publish", result="ok"),
                series("hubbub_commands_total", "0+6x20", op="join", result="403"),
            ]
            + [series("hubbub_disconnects_total", "0+60x20", code=code) for code in ("1000", "1001", "1012", "4009")],
        ),
        Case(
            "half of very few commands fail (under error_min_rate)",
            [
                series("hubbub_commands_total", "0+3x20", op="publish", result="ok"),
                series("hubbub_commands_total", "0+3x20", op="publish", result="503"),
            ],
        ),
    ],
    "HubbubAuthFailureSpike": [
        Case(
            "2 rejected tokens a second",
            [series("hubbub_auth_failures_total", "0+120x20", reason="expired")],
            [{"namespace": NS}],
        ),
        Case("one every two seconds", [series("hubbub_auth_failures_total", "0+30x20", reason="expired")]),
    ],
    "HubbubRedisUnavailable": [
        Case(
            "one pod loses Redis",
            [series("hubbub_redis_available", "1 1 1 0x10"), series("hubbub_redis_available", "1x12", pod="hubbub-1")],
            [{"namespace": NS, "pod": "hubbub-0"}],
            "6m",
        ),
        Case("Redis reachable", [series("hubbub_redis_available", "1x12")], [], "6m"),
    ],
    "HubbubRedisLatencyHigh": [
        Case(
            "broker commands take 50-100 ms",
            histogram("hubbub_redis_command_duration_seconds", {"0.05": 0, "0.1": 100, "+Inf": 100}, client="broker")
            + histogram(
                "hubbub_redis_command_duration_seconds", {"0.005": 100, "0.1": 100, "+Inf": 100}, client="presence"
            ),
            [{"namespace": NS, "client": "broker"}],
        ),
        Case(
            "commands under 5 ms",
            histogram(
                "hubbub_redis_command_duration_seconds", {"0.005": 100, "0.1": 100, "+Inf": 100}, client="broker"
            ),
        ),
    ],
    "HubbubFanoutLatencyHigh": [
        Case(
            "fan-out takes 250-500 ms on one pod",
            histogram("hubbub_fanout_latency_seconds", {"0.25": 0, "0.5": 100, "+Inf": 100})
            + histogram("hubbub_fanout_latency_seconds", {"0.01": 100, "0.5": 100, "+Inf": 100}, pod="hubbub-1"),
            [{"namespace": NS, "pod": "hubbub-0"}],
        ),
        Case("fan-out under 10 ms", histogram("hubbub_fanout_latency_seconds", {"0.01": 100, "0.5": 100, "+Inf": 100})),
    ],
    "HubbubSlowConsumerStorm": [
        Case(
            "2 closes 4008 a second",
            [series("hubbub_slow_consumer_disconnects_total", "0+120x20")],
            [{"namespace": NS}],
        ),
        Case("one every two seconds", [series("hubbub_slow_consumer_disconnects_total", "0+30x20")]),
    ],
    "HubbubInsufficientStateCloses": [
        Case(
            "history lost: 0.2 closes 4011 a second",
            [
                series("hubbub_insufficient_state_disconnects_total", "0+12x20", cause="history_lost"),
                series("hubbub_insufficient_state_disconnects_total", "0+1x20", cause="history_trimmed"),
            ],
            [{"namespace": NS, "cause": "history_lost"}],
        ),
        Case("a few", [series("hubbub_insufficient_state_disconnects_total", "0+3x20", cause="history_trimmed")]),
    ],
    "HubbubNearConnectionCapacity": [
        Case(
            "18000 of 20000",
            [series("hubbub_connections", "18000x20"), series("hubbub_connection_limit", "20000x20")],
            [{"namespace": NS, "pod": "hubbub-0"}],
        ),
        Case(
            "10000 of 20000", [series("hubbub_connections", "10000x20"), series("hubbub_connection_limit", "20000x20")]
        ),
    ],
    "HubbubEventLoopLag": [
        Case(
            "the probe runs 100-250 ms late",
            histogram("hubbub_event_loop_lag_seconds", {"0.1": 0, "0.25": 100, "+Inf": 100}),
            [{"namespace": NS, "pod": "hubbub-0"}],
        ),
        Case(
            "the probe runs on time",
            histogram("hubbub_event_loop_lag_seconds", {"0.001": 100, "0.25": 100, "+Inf": 100}),
        ),
    ],
    "HubbubNoReadyNodes": [
        Case(
            "both pods unready",
            [series("hubbub_ready", "0x10"), series("hubbub_ready", "0x10", pod="hubbub-1")],
            [{"namespace": NS}],
            "5m",
        ),
        Case("no pod reports at all", [series("hubbub_connections", "0x10")], [{}], "5m"),
        Case(
            "one pod of two ready",
            [series("hubbub_ready", "1x10"), series("hubbub_ready", "0x10", pod="hubbub-1")],
            [],
            "5m",
        ),
    ],
    "HubbubStuckDraining": [
        Case(
            "draining for 10 minutes",
            [series("hubbub_draining", "0 1x15")],
            [{"namespace": NS, "pod": "hubbub-0"}],
            "11m",
        ),
        Case("draining for 3 minutes (as a drain does)", [series("hubbub_draining", "0 1 1 1")], [], "3m"),
        Case("not draining", [series("hubbub_draining", "0x15")], [], "11m"),
    ],
}


def test_every_alert_has_unit_tests_firing_and_quiet() -> None:
    assert set(CASES) == {a.name for a in ALERTS}
    for name, cases in CASES.items():
        assert any(c.fires for c in cases), f"{name}: no case where it fires"
        assert any(not c.fires for c in cases), f"{name}: no case where it stays quiet"


def expected_summary(alert: alerts.AlertRule, labels: dict[str, str]) -> str:
    """The summary template with its `{{ $labels.x }}` filled in (summaries use nothing else)."""
    summary = alert.summary % alerts.threshold_values(TEST_THRESHOLDS)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), summary)


def unit_test_files(directory: Path, thresholds: Thresholds = TEST_THRESHOLDS) -> Path:
    """The rules (with `thresholds`) and a promtool test file with every case; returns the test file.

    Descriptions are left out of the rules under test: promtool compares annotations exactly, and
    theirs format $value with Go's humanize functions (`promtool check rules` parses them all).
    """
    groups = alerts.rule_groups(thresholds, extra_labels=TEST_LABELS)
    for group in groups["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]["description"]
    (directory / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    by_name = {a.name: a for a in ALERTS}
    tests: list[dict[str, Any]] = []
    for name, cases in CASES.items():
        alert = by_name[name]
        for case in cases:
            exp_alerts = []
            for labels in case.fires:
                exp_alerts.append(
                    {
                        "exp_labels": {**TEST_LABELS, "severity": alert.severity, **labels},
                        "exp_annotations": {
                            "summary": expected_summary(alert, labels),
                            "runbook_url": f"{alerts.DEFAULT_RUNBOOK_BASE_URL}#{alert.anchor}",
                        },
                    }
                )
            tests.append(
                {
                    "name": f"{name}: {case.what}",
                    "interval": "1m",
                    "input_series": case.input_series,
                    "alert_rule_test": [{"eval_time": case.eval_time, "alertname": name, "exp_alerts": exp_alerts}],
                }
            )
    path = directory / "alerts_test.yaml"
    path.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    return path


def test_promtool_sees_every_alert_fire_and_stay_quiet(promtool_path: Path, tmp_path: Path) -> None:
    test_file = unit_test_files(tmp_path)
    checked = promtool.run(promtool_path, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = promtool.run(promtool_path, "test", "rules", test_file.name, cwd=tmp_path)
    assert ran.returncode == 0, f"promtool test rules failed:\n{ran.stdout}{ran.stderr}"
    assert "SUCCESS" in ran.stdout + ran.stderr


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool_path: Path, tmp_path: Path) -> None:
    """The unit tests can fail: with HubbubSlowConsumerStorm's threshold ten times higher, its firing case fails."""
    test_file = unit_test_files(tmp_path, dataclasses.replace(TEST_THRESHOLDS, slow_consumer_rate=10.0))
    ran = promtool.run(promtool_path, "test", "rules", test_file.name, cwd=tmp_path)
    assert ran.returncode != 0
    failed = [line for line in (ran.stdout + ran.stderr).splitlines() if "alertname:" in line]
    assert failed and all("HubbubSlowConsumerStorm" in line for line in failed), ran.stdout + ran.stderr


def _iter_rules() -> Iterator[dict[str, Any]]:
    for group in alerts.rule_groups()["groups"]:
        yield from group["rules"]


def test_no_alert_groups_by_anything_finer_than_namespace_and_pod() -> None:
    for rule in _iter_rules():
        for grouping in GROUPING.findall(rule["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels <= {"namespace", "pod", "le", "client", "cause"}, f"{rule['alert']}: by ({grouping})"
