"""Monitoring children: a ServiceMonitor, a PrometheusRule and the Grafana dashboards' ConfigMap.

Nothing is copied: the rules are `hubbub.monitoring.alerts.rule_groups()` with the spec's
thresholds, and the dashboards are the checked-in JSON of `hubbub.monitoring` (read through its
catalog).

**Dashboard uids.** Grafana's dashboard sidecar loads every ConfigMap labelled `grafana_dashboard`
in the cluster into one Grafana, each data key as a file: two RealtimeServices shipping the same
files would overwrite each other's (the same file names) and collide on uids, and deleting one
would remove the other's. So each RealtimeService gets its own copies: uid `<uid>-<8 hex digits>`
(a hash of namespace/name: stable for the life of the resource, within Grafana's 40-character
limit), title suffixed with `namespace/name`, the namespace variable preset to its namespace, and
the dashboards' links to each other kept within the copy by a tag of its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Final

from hubbub.monitoring import alerts, catalog
from hubbub_operator.autoscaling import pods_selector
from hubbub_operator.resource import Instance, manifest
from hubbub_operator.workload import COMPONENT

DASHBOARD_LABEL: Final = "grafana_dashboard"


def service_monitor(instance: Instance) -> dict[str, Any]:
    section = instance.section("monitoring.serviceMonitor")
    meta = instance.metadata(instance.name, COMPONENT, labels=section.get("labels"))
    return manifest(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        meta,
        spec={
            "selector": {"matchLabels": instance.selector(COMPONENT)},
            "namespaceSelector": {"matchNames": [instance.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": section["interval"]}],
        },
    )


def thresholds(instance: Instance) -> alerts.Thresholds:
    given = dict(instance.section("monitoring.prometheusRule").get("thresholds") or {})
    if "abnormal_close_codes" in given:
        given["abnormal_close_codes"] = tuple(given["abnormal_close_codes"])
    return alerts.Thresholds(**given)


def prometheus_rule(instance: Instance) -> dict[str, Any]:
    section = instance.section("monitoring.prometheusRule")
    groups = alerts.rule_groups(
        thresholds(instance),
        selector=pods_selector(instance),
        runbook_base_url=section.get("runbookBaseURL", alerts.DEFAULT_RUNBOOK_BASE_URL),
        # Two RealtimeServices in one namespace: their alerts stay apart, and route by it.
        extra_labels={**(section.get("alertLabels") or {}), "realtimeservice": instance.name},
    )
    meta = instance.metadata(instance.name, COMPONENT, labels=section.get("labels"))
    return manifest("monitoring.coreos.com/v1", "PrometheusRule", meta, spec=groups)


def dashboard_suffix(instance: Instance) -> str:
    return hashlib.sha256(f"{instance.namespace}/{instance.name}".encode()).hexdigest()[:8]


def dashboard(instance: Instance, uid: str) -> dict[str, Any]:
    """A checked-in dashboard made this instance's own (see the module's doc)."""
    model = copy.deepcopy(catalog.dashboard(uid))
    tag = f"hubbub:{instance.namespace}/{instance.name}"
    model["uid"] = f"{uid}-{dashboard_suffix(instance)}"
    model["title"] = f"{model['title']} ({instance.namespace}/{instance.name})"
    model["tags"] = [*model.get("tags", []), tag]
    model.pop("id", None)
    for link in model.get("links") or []:
        if link.get("type") == "dashboards":
            link["tags"] = [tag]
    for variable in (model.get("templating") or {}).get("list") or []:
        if variable.get("name") == "namespace":
            variable["current"] = {"selected": True, "text": instance.namespace, "value": instance.namespace}
    return model


def dashboards_config_map(instance: Instance) -> dict[str, Any]:
    section = instance.section("monitoring.dashboards")
    data = {}
    for uid in catalog.DASHBOARD_UIDS:
        model = dashboard(instance, uid)
        data[f"{model['uid']}.json"] = json.dumps(model, indent=1, sort_keys=True) + "\n"
    labels = {**(section.get("labels") or {}), DASHBOARD_LABEL: "1"}
    meta = instance.metadata(
        f"{instance.name}-dashboards", "monitoring", labels=labels, annotations=section.get("annotations")
    )
    return manifest("v1", "ConfigMap", meta, data=data)
