"""The hubbub pods: the Deployment `<name>` and its PodDisruptionBudget.

Choices a reader of the manifest should know the reasons for:

- `enableServiceLinks: false`. The kubelet gives every pod `<SERVICE>_PORT=tcp://…` and friends for
  each Service in its namespace; the Service `hubbub` (or any named like the product) yields
  `HUBBUB_PORT=tcp://10.0.0.153:80`, which collides with hubbub's `HUBBUB_PORT` setting. Found with
  a real kubelet: the pods crash-looped on it.
- `terminationGracePeriodSeconds` = drain_delay + drain_period + a margin. On SIGTERM hubbub reports
  unready at once, keeps serving for drain_delay (while endpoints are withdrawn), then closes its
  connections with 1012 spread over drain_period so clients reconnect elsewhere a few at a time.
  No preStop hook: a preStop sleep would only delay SIGTERM, and the drain_delay already covers the
  endpoint-propagation race with the readiness probe failing; the grace period must cover the drain
  or the kubelet cuts the remaining connections at once.
- The pod template's `hubbub.dev/config-checksum` annotation changes with config.json and with the
  Secrets referenced, so a settings change rolls the pods (one at a time: maxSurge 1,
  maxUnavailable 0, each old pod draining as above).
- `replicas` is left out when an autoscaler owns it: a server-side apply that sets it would fight
  the HPA on every reconcile (and one that stops setting it would reset it). `initial_replicas()`
  is the count to create it with, under a field manager of its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Final

from hubbub.settings import Settings
from hubbub_operator.config import CONFIG_DIR, CONFIG_FILE, PORT, PUBLIC_KEY_DIR, REDIS_CA_DIR
from hubbub_operator.resource import Instance, manifest

COMPONENT: Final = "server"
CONTAINER: Final = "hubbub"
CHECKSUM_ANNOTATION: Final = "hubbub.dev/config-checksum"
#: Seconds beyond the drain for uvicorn to close the stragglers and the process to exit.
GRACE_MARGIN: Final = 10
#: A pod that does not answer /readyz is taken out of the Service within this many seconds; kept
#: below the default drain_delay (5 s) so endpoints go before the closes start.
READINESS_PERIOD: Final = 2
#: uid/gid the pods run as (any non-root id: the image's files need only be world-readable).
RUN_AS: Final = 10001


def grace_period(settings: Settings) -> int:
    return math.ceil(settings.drain_delay + settings.drain_period) + GRACE_MARGIN


def secret_key_env(variable: str, ref: dict[str, Any]) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}}}


def checksum(config_text: str, secret_refs: Sequence[dict[str, Any]]) -> str:
    """sha256 of config.json and the (Secret, key) pairs the pods read: what a rollout follows."""
    refs = sorted({(r["name"], r["key"]) for r in secret_refs})
    return hashlib.sha256(json.dumps([config_text, refs]).encode()).hexdigest()


def deployment(
    instance: Instance,
    settings: Settings,
    *,
    env: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    config_checksum: str,
    autoscaled: bool,
) -> dict[str, Any]:
    spec = instance.spec
    image = instance.section("image")
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": f"{image['repository']}:{image['tag']}",
        "imagePullPolicy": image["pullPolicy"],
        "command": ["hubbub"],
        "args": ["serve", "--config", CONFIG_FILE, "--host", "0.0.0.0", "--port", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "HUBBUB_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, *env],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": READINESS_PERIOD,
            "failureThreshold": 1,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod: dict[str, Any] = {
        # A Service named like the product would inject HUBBUB_PORT=tcp://… (see the module's doc).
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_period(settings),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{instance.name}-config"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            *volumes,
        ],
    }
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        if spec.get(key):
            pod[key] = spec[key]
    template_labels = {**(spec.get("podLabels") or {}), **instance.labels(COMPONENT)}
    annotations = {**(spec.get("podAnnotations") or {}), CHECKSUM_ANNOTATION: config_checksum}
    body: dict[str, Any] = {
        "selector": {"matchLabels": instance.selector(COMPONENT)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 5,
        "template": {"metadata": {"labels": template_labels, "annotations": annotations}, "spec": pod},
    }
    if not autoscaled:
        body = {"replicas": instance.section("replicas")["min"], **body}
    return manifest("apps/v1", "Deployment", instance.metadata(instance.name, COMPONENT), spec=body)


def initial_replicas(instance: Instance) -> int:
    """The replica count to create an autoscaled Deployment with (then the autoscaler's)."""
    return int(instance.section("replicas")["min"])


def secret_volume(name: str, secret: str, key: str, mount_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": name, "secret": {"secretName": secret, "items": [{"key": key, "path": key}]}}
    return volume, {"name": name, "mountPath": mount_dir, "readOnly": True}


def public_key_volume(ref: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return secret_volume("jwt-public-key", ref["name"], ref["key"], PUBLIC_KEY_DIR)


def redis_ca_volume(ref: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return secret_volume("redis-ca", ref["name"], ref["key"], REDIS_CA_DIR)


def disruption_budget(instance: Instance) -> dict[str, Any]:
    """One pod down at a time for voluntary disruptions (node drains): each drain moves one pod's
    clients. AlwaysAllow: an unready pod never blocks a node drain."""
    return manifest(
        "policy/v1",
        "PodDisruptionBudget",
        instance.metadata(instance.name, COMPONENT),
        spec={
            "maxUnavailable": 1,
            "selector": {"matchLabels": instance.selector(COMPONENT)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    )
