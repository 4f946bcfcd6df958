"""docs/observability.md lists every alert of the rules table, with its severity, and the dashboards it describes."""

from __future__ import annotations

import re
from pathlib import Path

from hubbub.monitoring.alerts import ALERTS
from hubbub.monitoring.catalog import DASHBOARD_UIDS, dashboard_path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "observability.md"
ROW = re.compile(r"^\| \[(\w+)\]\(runbooks\.md#(\w+)\) \| (\w+) \|", re.MULTILINE)


def test_the_alert_table_lists_every_alert_in_order_with_its_severity_and_runbook() -> None:
    rows = ROW.findall(DOC.read_text())
    assert rows == [(a.name, a.anchor, a.severity) for a in ALERTS]


def test_the_dashboards_named_are_the_checked_in_ones() -> None:
    text = DOC.read_text()
    for uid in DASHBOARD_UIDS:
        assert str(dashboard_path(uid).relative_to(ROOT)) in text
        assert f"`{uid}`" in text
