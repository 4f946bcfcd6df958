"""The generated monitoring files, where they live, and what they query: standard library only.

For the tests and for a live check against a real Prometheus: `dashboard("hubbub-overview")` loads
a checked-in dashboard, `queries(it)` lists every (panel title, PromQL expression) it runs.
The files themselves are written by `python -m hubbub.monitoring`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
DASHBOARDS_DIR: Final = HERE / "dashboards"
RULES_FILE: Final = HERE / "rules" / "hubbub-alerts.yaml"
#: Each dashboard's uid; its file is DASHBOARDS_DIR / f"{uid}.json".
DASHBOARD_UIDS: Final = ("hubbub-overview", "hubbub-node")


def dashboard_path(uid: str) -> Path:
    return DASHBOARDS_DIR / f"{uid}.json"


def dashboard(uid: str) -> dict[str, Any]:
    """A checked-in dashboard's JSON model."""
    loaded: dict[str, Any] = json.loads(dashboard_path(uid).read_text(encoding="utf-8"))
    return loaded


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows too; rows themselves left out."""
    found: list[dict[str, Any]] = []
    for item in model.get("panels") or []:
        if item.get("type") == "row":
            found.extend(p for p in item.get("panels") or [] if p.get("type") != "row")
        else:
            found.append(item)
    return found


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of a dashboard, in panel order, then
    its annotations' queries (titled `annotation: <name>`)."""
    found = [
        (str(p.get("title", "")), str(t["expr"]))
        for p in panels(model)
        for t in p.get("targets") or []
        if t.get("expr")
    ]
    annotations = (model.get("annotations") or {}).get("list") or []
    found += [(f"annotation: {a.get('name', '')}", str(a["expr"])) for a in annotations if a.get("expr")]
    return found
