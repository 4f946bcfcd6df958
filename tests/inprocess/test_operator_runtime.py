"""The operator's runtime without a cluster: the reconciler against an in-memory `Kube`, the shipped
RBAC and install manifests, and the command line. tests/kubernetes/test_operator.py runs it for real."""

from __future__ import annotations

import base64
import copy
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub_operator import MANAGER, deploy, kinds, rbac
from hubbub_operator.handlers import WATCHED
from hubbub_operator.kube import INITIAL_MANAGER, KubeError, encoded, plural
from hubbub_operator.reconcile import Reconciler, secret_references

ROOT = Path(__file__).resolve().parents[2]
Key = tuple[str, str, str, str]


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class FakeKube:
    """Objects in a dict; apply merges like a forced server-side apply of whole fields."""

    def __init__(self, available: frozenset[str] = frozenset()) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.available = available
        self.applied: list[tuple[str, str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        self.uid = 0

    @staticmethod
    def key(api_version: str, kind: str, namespace: str, name: str) -> Key:
        return (api_version, kind, namespace, name)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        k = self.key(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
        self.uid += 1
        meta.setdefault("uid", f"uid-{self.uid}")
        meta["resourceVersion"] = str(self.uid)
        self.objects[k] = obj
        return obj

    async def apply(self, manifest: Mapping[str, Any], *, manager: str = MANAGER) -> dict[str, Any]:
        obj = encoded(copy.deepcopy(dict(manifest)))
        if obj["kind"] in self.refuse:
            raise KubeError(f"apply {obj['kind']} refused: 422 Invalid", 422)
        self.applied.append((obj["kind"], obj["metadata"]["name"], manager))
        meta = obj["metadata"]
        k = self.key(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
        existing = self.objects.get(k)
        if existing is not None:
            # Fields another manager set and this apply leaves out stay (replicas after the first apply).
            obj = merge(existing, obj)
        return copy.deepcopy(self.put(obj))

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(self.key(api_version, kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        out = []
        for (av, k, ns, _), obj in self.objects.items():
            obj_labels = obj["metadata"].get("labels") or {}
            matches = all(obj_labels.get(a) == b for a, b in labels.items())
            if (av, k) == (api_version, kind) and namespace in (None, ns) and matches:
                out.append(copy.deepcopy(obj))
        return out

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, name))
        self.objects.pop(self.key(api_version, kind, namespace, name), None)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(dict(status))
        found = self.objects[self.key("hubbub.dev/v1alpha1", "RealtimeService", namespace, name)]
        # A JSON merge patch, as the real API applies it: a null removes the field.
        merged = {**(found.get("status") or {}), **copy.deepcopy(dict(status))}
        found["status"] = {k: v for k, v in merged.items() if v is not None}

    async def available_kinds(self) -> frozenset[str]:
        return self.available

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.objects.get(self.key("v1", "Secret", namespace, name))
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


def minimal(kube: FakeKube, namespace: str = "ns") -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "realtimeservice-minimal.yaml").read_text())
    obj["metadata"].update(namespace=namespace, uid="rts-uid", generation=1)
    return kube.put(obj)


def jwt_secret(kube: FakeKube, data: dict[str, str] | None = None) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat-jwt", "namespace": "ns"}}
    kube.put(encoded({**secret, "stringData": data if data is not None else {"jwt-secret": "x" * 32}}))


events: list[tuple[str, str, str]] = []


def notify(resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    events.append((type_, reason, message))


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    events.clear()


def ready_condition(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_a_missing_secret_applies_nothing_and_is_named_in_the_ready_condition() -> None:
    kube = FakeKube()
    minimal(kube)
    outcome = await Reconciler(kube, notify).request("ns", "chat")
    assert outcome is not None and outcome.retry
    assert kube.applied == []
    ready = ready_condition(kube.statuses[-1])
    assert ready["status"] == "False" and ready["reason"] == "ReconcileError"
    assert "Secret 'chat-jwt' does not exist in namespace ns" in ready["message"]
    assert ("Warning", "ReconcileError", ready["message"]) in events


async def test_a_secret_without_the_key_is_named_with_the_key() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube, {"other": "x"})
    await Reconciler(kube, notify).request("ns", "chat")
    assert "Secret 'chat-jwt' has no key 'jwt-secret'" in ready_condition(kube.statuses[-1])["message"]


async def test_every_planned_child_is_applied_and_the_first_replica_count_under_its_own_manager() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube)
    outcome = await Reconciler(kube, notify).request("ns", "chat")
    assert outcome is not None and not outcome.errors
    applied = [(kind, name) for kind, name, manager in kube.applied if manager == MANAGER]
    assert applied == [(c["kind"], c["metadata"]["name"]) for c in outcome.plan.children]
    assert [(k, m) for k, _, m in kube.applied if m != MANAGER] == [("Deployment", INITIAL_MANAGER)]
    deployment = await kube.get("apps/v1", "Deployment", "ns", "chat")
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert events[0][:2] == ("Normal", "Created")


async def test_the_generated_redis_password_and_api_key_are_read_back_not_regenerated() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube)
    reconciler = Reconciler(kube, notify)
    await reconciler.request("ns", "chat")
    first = await kube.secret_data("ns", "chat-redis"), await kube.secret_data("ns", "chat-api-key")
    await reconciler.request("ns", "chat")
    assert (await kube.secret_data("ns", "chat-redis"), await kube.secret_data("ns", "chat-api-key")) == first
    assert first[0] is not None and len(first[0]["password"]) >= 16


async def test_children_no_longer_planned_are_pruned() -> None:
    kube = FakeKube()
    obj = minimal(kube)
    jwt_secret(kube)
    reconciler = Reconciler(kube, notify)
    await reconciler.request("ns", "chat")
    assert await kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "ns", "chat") is not None
    obj["spec"]["autoscaling"] = {"provider": "none"}
    obj["metadata"]["generation"] = 2
    await reconciler.request("ns", "chat")
    assert ("HorizontalPodAutoscaler", "chat") in kube.deleted
    assert await kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "ns", "chat") is None
    assert ("Normal", "Pruned", "deleted no longer wanted HorizontalPodAutoscaler chat") in events


async def test_a_refused_apply_is_reported_and_nothing_is_pruned() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube)
    kube.refuse.add("PodDisruptionBudget")
    outcome = await Reconciler(kube, notify).request("ns", "chat")
    assert outcome is not None and outcome.retry
    assert "apply PodDisruptionBudget refused" in ready_condition(kube.statuses[-1])["message"]
    assert kube.deleted == []


async def test_a_deleted_child_is_restored_with_a_warning() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube)
    reconciler = Reconciler(kube, notify)
    await reconciler.request("ns", "chat")
    await kube.delete("v1", "Service", "ns", "chat")
    outcome = await reconciler.request("ns", "chat")
    assert outcome is not None and outcome.restored == ["Service chat"]
    assert ("Warning", "Restored", "recreated deleted Service chat") in events


class DeletedBeforeApply(FakeKube):
    """Someone deletes a child after the reconciler listed the children and before it applies them."""

    def __init__(self) -> None:
        super().__init__()
        self.doomed: set[tuple[str, str]] = set()

    async def apply(self, manifest: Mapping[str, Any], *, manager: str = MANAGER) -> dict[str, Any]:
        if (manifest["kind"], manifest["metadata"]["name"]) in self.doomed:
            self.doomed.discard((manifest["kind"], manifest["metadata"]["name"]))
            await self.delete(manifest["apiVersion"], manifest["kind"], "ns", manifest["metadata"]["name"])
        return await super().apply(manifest, manager=manager)


async def test_a_child_deleted_while_a_reconcile_runs_is_reported_restored() -> None:
    kube = DeletedBeforeApply()
    minimal(kube)
    jwt_secret(kube)
    reconciler = Reconciler(kube, notify)
    await reconciler.request("ns", "chat")
    kube.doomed.add(("Service", "chat"))
    outcome = await reconciler.request("ns", "chat")
    assert outcome is not None and outcome.restored == ["Service chat"]
    assert ("Warning", "Restored", "recreated deleted Service chat") in events


async def test_a_reconcile_with_nothing_to_change_writes_nothing_but_applies() -> None:
    kube = FakeKube()
    minimal(kube)
    jwt_secret(kube)
    reconciler = Reconciler(kube, notify)
    await reconciler.request("ns", "chat")
    statuses = len(kube.statuses)
    outcome = await reconciler.request("ns", "chat")
    assert outcome is not None and not (outcome.created or outcome.corrected or outcome.deleted)
    assert len(kube.statuses) == statuses, "an unchanged status was written again"


async def test_a_gone_resource_is_not_reconciled() -> None:
    assert await Reconciler(FakeKube(), notify).request("ns", "missing") is None


def test_secret_references_are_the_pods_env_and_volumes() -> None:
    pod = {
        "containers": [{"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k1"}}}]}],
        "volumes": [
            {"secret": {"secretName": "s2", "items": [{"key": "k2", "path": "p"}]}},
            {"secret": {"secretName": "s3"}},
        ],
    }
    child = {"kind": "Deployment", "spec": {"template": {"spec": pod}}}
    assert secret_references([child]) == [("s1", "k1"), ("s2", "k2"), ("s3", None)]


# -- what the operator ships --------------------------------------------------------------------------


def test_checked_in_deploy_manifests_are_what_the_generator_renders() -> None:
    assert deploy.main(["--check"]) == 0, "run python -m hubbub_operator.deploy"


def test_rbac_covers_every_child_kind_with_no_wildcards_and_no_watch_on_secrets() -> None:
    rules = rbac.cluster_rules()
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert all("*" not in verbs and ("*", "*") not in granted for verbs in granted.values())
    for api_version, kind in kinds.CHILD_KINDS:
        group = api_version.rpartition("/")[0]
        verbs = granted[(group, plural(kind))]
        assert {"get", "list", "create", "patch", "delete"} <= verbs, kind
        assert ("watch" in verbs) == ((api_version, kind) in WATCHED), kind
    assert granted[("", "secrets")] == {"get", "list", "create", "patch", "delete"}
    assert granted[("hubbub.dev", "realtimeservices/status")] == {"get", "patch"}
    assert granted[("", "events")] == {"create"}


def test_the_operator_deployment_is_locked_down_and_probed_on_its_health_endpoint() -> None:
    deployment = next(o for o in deploy.operator() if o["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["serviceAccountName"] == deploy.NAME
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert f"--liveness=http://0.0.0.0:{deploy.HEALTH_PORT}/healthz" in container["command"]


def test_the_command_line_needs_a_scope_and_says_so_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hubbub_operator"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "one of the arguments -A/--all-namespaces -n/--namespace is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_api_server_is_one_line_and_exit_code_1_not_a_traceback(tmp_path: Path) -> None:
    # Nothing listens on a port this test just closed; kopf retries each request for about 18 s.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "hubbub_operator", "--all-namespaces", "--liveness="],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 1
    assert f"hubbub-operator: cannot reach the Kubernetes API server: Cannot connect to host 127.0.0.1:{port}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_the_namespaced_variant_grants_nothing_cluster_wide_but_reads() -> None:
    cluster_scoped = [o for o in deploy.namespaced_rbac() if o["kind"] == "ClusterRole"]
    verbs = {v for role in cluster_scoped for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert all(
        o["kind"] != "ClusterRoleBinding" or o["roleRef"]["name"].endswith("-cluster-reads")
        for o in deploy.namespaced_rbac()
    )
