"""The local control plane can do everything the operator and chart tests will rely on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, ClusterError
from tests.support.polling import wait_until

pytestmark = pytest.mark.k8s

CHART = Path(__file__).parents[1] / "fixtures" / "charts" / "mini"


@pytest.fixture
def namespace(k8s: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    k8s.api("DELETE", f"/api/v1/namespaces/{name}")


def deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
        },
    }


def ready_replicas(k8s: Cluster, namespace: str, name: str) -> int:
    found = k8s.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return int((found or {}).get("status", {}).get("readyReplicas", 0))


def test_versions_are_stamped(k8s: Cluster) -> None:
    version = k8s.api("GET", "/version").json()
    assert version["gitVersion"] == "v1.34.4" and version["minor"] == "34"
    assert "v1.34.4" in k8s.kubectl("version", "--client")


def test_crd_with_a_cel_rule_rejects_a_bad_object(k8s: Cluster, namespace: str) -> None:
    group = "tests.hubbub.dev"
    k8s.apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {
                                            "minReplicas": {"type": "integer"},
                                            "maxReplicas": {"type": "integer"},
                                        },
                                        "x-kubernetes-validations": [
                                            {
                                                "rule": "self.minReplicas <= self.maxReplicas",
                                                "message": "minReplicas must not exceed maxReplicas",
                                            }
                                        ],
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    wait_until(
        lambda: k8s.api("GET", f"/apis/{group}/v1/namespaces/{namespace}/widgets").is_success, timeout=60, what="CRD"
    )
    good = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "good", "namespace": namespace}}
    k8s.apply({**good, "spec": {"minReplicas": 1, "maxReplicas": 3}})
    bad = {**good, "metadata": {"name": "bad", "namespace": namespace}, "spec": {"minReplicas": 5, "maxReplicas": 3}}
    with pytest.raises(ClusterError, match="minReplicas must not exceed maxReplicas"):
        k8s.apply(bad)
    assert k8s.get(f"/apis/{group}/v1/namespaces/{namespace}/widgets/bad") is None


def test_server_side_apply_tracks_field_managers_and_reports_conflicts(k8s: Cluster, namespace: str) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "namespace": namespace}}
    stored = k8s.apply({**config, "data": {"a": "1"}}, manager="hubbub-operator")
    managers = {entry["manager"] for entry in stored["metadata"]["managedFields"]}
    assert "hubbub-operator" in managers
    with pytest.raises(ClusterError, match="[Cc]onflict"):
        k8s.apply({**config, "data": {"a": "2"}}, manager="someone-else")
    forced = k8s.apply({**config, "data": {"a": "2"}}, manager="someone-else", force=True)
    assert forced["data"]["a"] == "2"
    # The first manager dropping its field leaves the other manager's field in place.
    after = k8s.apply({**config, "data": {}}, manager="hubbub-operator")
    assert after["data"] == {"a": "2"}


def test_deployment_reaches_ready_replicas_on_kwok_nodes(k8s: Cluster, namespace: str) -> None:
    k8s.apply(deployment("web", namespace, 3))
    wait_until(lambda: ready_replicas(k8s, namespace, "web") == 3, timeout=60, what="3 ready replicas")
    pods = k8s.api("GET", f"/api/v1/namespaces/{namespace}/pods").json()["items"]
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("kwok-node") for p in pods)
    assert len({p["spec"]["nodeName"] for p in pods}) >= 1


def test_deleting_an_owner_garbage_collects_its_children(k8s: Cluster, namespace: str) -> None:
    owner = k8s.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "child", "namespace": namespace, "ownerReferences": [reference]},
        }
    )
    k8s.apply(deployment("gc", namespace, 1))
    wait_until(lambda: ready_replicas(k8s, namespace, "gc") == 1, timeout=60, what="gc deployment ready")
    k8s.api("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/owner")
    wait_until(
        lambda: k8s.get(f"/api/v1/namespaces/{namespace}/configmaps/child") is None, timeout=60, what="child collected"
    )
    k8s.api("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/gc")
    wait_until(
        lambda: not k8s.api("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets").json()["items"],
        timeout=60,
        what="ReplicaSets collected",
    )
    wait_until(
        lambda: not k8s.api("GET", f"/api/v1/namespaces/{namespace}/pods").json()["items"],
        timeout=60,
        what="Pods collected",
    )


def test_hpa_on_a_pods_custom_metric_scales_a_deployment(k8s: Cluster, namespace: str) -> None:
    k8s.apply(deployment("scaled", namespace, 1))
    wait_until(lambda: ready_replicas(k8s, namespace, "scaled") == 1, timeout=60, what="1 ready replica")
    k8s.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "scaled", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
                "minReplicas": 1,
                "maxReplicas": 4,
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": "hubbub_connections"},
                            "target": {"type": "AverageValue", "averageValue": "100"},
                        },
                    }
                ],
            },
        }
    )

    def set_load(per_pod: str) -> list[str]:
        pods = [p["metadata"]["name"] for p in k8s.api("GET", f"/api/v1/namespaces/{namespace}/pods").json()["items"]]
        for pod in pods:
            k8s.set_pod_metric(namespace, pod, "hubbub_connections", per_pod)
        return pods

    def scaled_to(replicas: int, per_pod: str) -> bool:
        set_load(per_pod)
        found = k8s.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/scaled") or {}
        return int(found.get("spec", {}).get("replicas", 0)) == replicas

    # 1 pod at 300 connections against a target of 100 per pod: the HPA wants 3 replicas.
    wait_until(lambda: scaled_to(3, "300"), timeout=90, what="scale up to 3")
    # Load per pod drops to 10: the HPA scales back to its minimum.
    wait_until(lambda: scaled_to(1, "10"), timeout=90, what="scale down to 1")


def test_service_account_without_permission_gets_403_and_with_it_succeeds(k8s: Cluster, namespace: str) -> None:
    kubeconfig = k8s.service_account_kubeconfig(namespace, "limited")
    denied = k8s.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied == ""
    result = k8s.api("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=_token_of(kubeconfig))
    assert result.status_code == 403
    k8s.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-configmaps", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        }
    )
    k8s.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "limited-reads", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}],
        }
    )
    token = _token_of(kubeconfig)
    wait_until(
        lambda: k8s.api("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=token).status_code == 200,
        timeout=60,
        what="RBAC grant",
    )
    assert k8s.api("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/x", token=token).status_code == 403


def _token_of(kubeconfig: Path) -> str:
    import json

    token: str = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    return token


def test_helm_installs_upgrades_and_uninstalls_a_chart(k8s: Cluster, namespace: str) -> None:
    k8s.helm("install", "demo", str(CHART), "-n", namespace, "--wait", "--timeout", "90s")
    config = k8s.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-config")
    assert config is not None and config["data"]["greeting"] == "hello"
    assert config["data"]["kubeVersion"] == "v1.34.4"  # helm saw the real, stamped server version
    assert ready_replicas(k8s, namespace, "demo") == 1
    k8s.helm("upgrade", "demo", str(CHART), "-n", namespace, "--set", "greeting=hi,replicas=2", "--wait")
    config = k8s.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-config")
    assert config is not None and config["data"]["greeting"] == "hi"
    assert ready_replicas(k8s, namespace, "demo") == 2
    history = k8s.helm("history", "demo", "-n", namespace, "-o", "json").stdout
    assert '"revision":2' in history.replace(" ", "")
    k8s.helm("uninstall", "demo", "-n", namespace, "--wait")
    wait_until(
        lambda: k8s.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo") is None, timeout=60, what="uninstall"
    )
    assert k8s.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-config") is None


def test_a_second_cluster_starts_warm_in_under_a_minute_and_stops_without_leaking(k8s: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    with Cluster(tmp_path / "second", nodes=1, with_metrics=False) as second:
        elapsed = time.monotonic() - started
        pids = [p.proc.pid for p in second.processes]
        assert len(pids) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
        assert second.server != k8s.server
        assert len(second.api("GET", "/api/v1/nodes").json()["items"]) == 1
    assert elapsed < 60, f"warm start took {elapsed:.1f}s"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_missing_binaries_are_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"missing binaries in .*: etcd, kube-apiserver.*scripts/build-k8s"):
        Cluster(tmp_path / "c", bin_dir=tmp_path / "empty").start()


def test_a_taken_adapter_port_is_a_clear_error(k8s: Cluster, tmp_path: Path) -> None:
    # The session cluster's adapter holds the port.
    with pytest.raises(ClusterError, match="port 8080 is taken"):
        Cluster(tmp_path / "c").start()
