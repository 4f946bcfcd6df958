"""Autoscaling on open connections per pod: a HorizontalPodAutoscaler (autoscaling/v2) on the Pods
metric `hubbub_connections`, or a KEDA ScaledObject whose Prometheus trigger sums it.

Both scale up briskly and down slowly. A new pod only receives new connections (a WebSocket stays
where it is), connection counts fall only as clients leave, and every removed pod makes its
clients reconnect at once: so scale-down waits for `scaleDownStabilizationSeconds` of lower
recommendations and then removes at most one pod (or 10%) per two minutes.
"""

from __future__ import annotations

from typing import Any, Final

from hubbub_operator.resource import Instance, manifest
from hubbub_operator.workload import COMPONENT

#: The per-pod gauge of open WebSocket connections (hubbub.metrics' table).
METRIC: Final = "hubbub_connections"


def behavior(instance: Instance) -> dict[str, Any]:
    section = instance.section("autoscaling")
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 30},
                {"type": "Pods", "value": 4, "periodSeconds": 30},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": section["scaleDownStabilizationSeconds"],
            "selectPolicy": "Min",
            "policies": [
                {"type": "Pods", "value": 1, "periodSeconds": 120},
                {"type": "Percent", "value": 10, "periodSeconds": 120},
            ],
        },
    }


def _target(instance: Instance) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": instance.name}


def hpa(instance: Instance) -> dict[str, Any]:
    section = instance.section("autoscaling")
    replicas = instance.section("replicas")
    metrics: list[dict[str, Any]] = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": METRIC},
                "target": {"type": "AverageValue", "averageValue": str(section["targetConnectionsPerPod"])},
            },
        }
    ]
    if "targetCPUUtilization" in section:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": section["targetCPUUtilization"]},
                },
            }
        )
    return manifest(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        instance.metadata(instance.name, COMPONENT),
        spec={
            "scaleTargetRef": _target(instance),
            "minReplicas": replicas["min"],
            "maxReplicas": replicas["max"],
            "metrics": metrics,
            "behavior": behavior(instance),
        },
    )


def pods_selector(instance: Instance) -> str:
    """PromQL matchers for this instance's pods: its namespace, and pod names of its Deployment
    (`<name>-<template hash>-<suffix>`, which another RealtimeService's pods cannot match: a name
    `<name>-x` gives `<name>-x-<hash>-<suffix>`, one dash too many)."""
    return f'namespace="{instance.namespace}",pod=~"{instance.name}-[a-z0-9]+-[a-z0-9]+"'


def connections_query(instance: Instance) -> str:
    """The sum over the pods: KEDA divides it by the replica count (metricType AverageValue)."""
    return f"sum({METRIC}{{{pods_selector(instance)}}})"


def scaled_object(instance: Instance) -> dict[str, Any]:
    section = instance.section("autoscaling")
    replicas = instance.section("replicas")
    triggers: list[dict[str, Any]] = [
        {
            "type": "prometheus",
            "name": "connections",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": section["keda"]["serverAddress"],
                "query": connections_query(instance),
                "threshold": str(section["targetConnectionsPerPod"]),
                # An error, not 0, when Prometheus loses the series: then `fallback` holds the replicas.
                "ignoreNullValues": "false",
            },
        }
    ]
    if "targetCPUUtilization" in section:
        triggers.append(
            {"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(section["targetCPUUtilization"])}}
        )
    body: dict[str, Any] = {
        "scaleTargetRef": _target(instance),
        "minReplicaCount": replicas["min"],
        "maxReplicaCount": replicas["max"],
        "pollingInterval": 15,
    }
    if len(triggers) == 1:
        # Prometheus unreachable: keep the pods there are (at least min). KEDA refuses a fallback
        # beside a cpu trigger, so with one the HPA simply holds its last decision.
        body["fallback"] = {"failureThreshold": 3, "replicas": replicas["min"], "behavior": "currentReplicasIfHigher"}
    body["advanced"] = {
        "restoreToOriginalReplicaCount": False,
        "horizontalPodAutoscalerConfig": {"name": f"{instance.name}-keda", "behavior": behavior(instance)},
    }
    body["triggers"] = triggers
    return manifest("keda.sh/v1alpha1", "ScaledObject", instance.metadata(instance.name, COMPONENT), spec=body)
