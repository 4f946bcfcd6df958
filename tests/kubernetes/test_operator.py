"""The operator running for real against the project's control plane (tests/support/cluster.py):
`python -m hubbub_operator --all-namespaces` as a process, authenticated as its own ServiceAccount
with only the RBAC it ships (hubbub_operator/deploy/rbac.yaml), kwok nodes making its pods Ready,
the real kube-controller-manager's garbage collector and HPA, and the ecosystem's real CRDs
(scripts/fetch-crds: prometheus-operator, Gateway API experimental channel, KEDA).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub_operator import MANAGER, crd, deploy, kinds, redis
from hubbub_operator.kube import OPTIONAL_CRDS
from hubbub_operator.plan import api_key_ref, plan
from hubbub_operator.reconcile import secret_references
from hubbub_operator.resource import Instance
from hubbub_operator.workload import CHECKSUM_ANNOTATION
from tests.support import promtool
from tests.support.chart import crd_established, ecosystem_crds
from tests.support.cluster import Cluster, resource_path
from tests.support.operator_process import Operator, running_operator
from tests.support.polling import until

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
API = "/apis/hubbub.dev/v1alpha1"
#: Generous: a loaded 2-core machine runs the control plane, kwok and the operator at once.
DEADLINE = 60.0
JWT_SECRET = "0123456789abcdef0123456789abcdef"
PUBLIC_KEY = "\n".join(
    [
        "-----BEGIN PUBLIC KEY-----",
        "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        "-----END PUBLIC KEY-----",
        "",
    ]
)


def available(k8s: Cluster) -> frozenset[str]:
    """The optional kinds as the operator discovers them (kube.available_kinds), read as admin."""
    out = set()
    for kind, (name, _) in OPTIONAL_CRDS.items():
        if crd_established(k8s, name):
            out.add(kind)
            crd_obj = k8s.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
            if crd_obj["metadata"].get("annotations", {}).get("gateway.networking.k8s.io/channel") == "experimental":
                out.add(kinds.HTTP_ROUTE_SESSION_PERSISTENCE)
    return frozenset(out)


async def install_ecosystem_crds(k8s: Cluster) -> None:
    docs = ecosystem_crds()
    for doc in docs:
        k8s.apply(doc, manager="hubbub-tests", force=True)
    for doc in docs:
        name = doc["metadata"]["name"]
        await until(functools.partial(crd_established, k8s, name), timeout=DEADLINE, what=f"{name} Established")


async def remove_ecosystem_crds(k8s: Cluster) -> None:
    names = [name for name, _ in OPTIONAL_CRDS.values()]
    for name in names:
        k8s.api("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    for name in names:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        await until(functools.partial(gone, k8s, path), timeout=DEADLINE, what=f"{name} deleted")


def gone(k8s: Cluster, path: str) -> bool:
    return k8s.get(path) is None


def replaced(k8s: Cluster, path: str, uid: str) -> bool:
    """The object at `path` exists again, as a new object."""
    found = k8s.get(path)
    return found is not None and found["metadata"]["uid"] != uid


# -- the operator as a process -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(k8s: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """Our CRD, the shipped RBAC and the operator running as its ServiceAccount."""
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": deploy.NAMESPACE}})
    for obj in deploy.cluster_rbac():
        k8s.apply(obj, manager="hubbub-tests", force=True)
    kubeconfig = k8s.service_account_kubeconfig(deploy.NAMESPACE, deploy.NAME)
    with running_operator(["--all-namespaces"], kubeconfig, tmp_path_factory.mktemp("operator")) as running:
        yield running


@pytest.fixture
async def namespace(k8s: Cluster, operator: Operator) -> AsyncIterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    # ScaledObjects have no finalizer here (no KEDA running), so the namespace goes at once.
    k8s.api("DELETE", f"/api/v1/namespaces/{name}")


# -- helpers ------------------------------------------------------------------------------------------


def example(name: str, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((EXAMPLES / f"realtimeservice-{name}.yaml").read_text())
    obj["metadata"]["namespace"] = namespace
    return obj


def secret(k8s: Cluster, namespace: str, name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    k8s.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": encoded}
    )


def secret_data(k8s: Cluster, namespace: str, name: str) -> dict[str, str]:
    found = k8s.get(f"/api/v1/namespaces/{namespace}/secrets/{name}") or {}
    return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


def rts(k8s: Cluster, namespace: str, name: str = "chat") -> dict[str, Any]:
    return k8s.get(f"{API}/namespaces/{namespace}/realtimeservices/{name}") or {}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def child(k8s: Cluster, manifest: dict[str, Any]) -> dict[str, Any] | None:
    return k8s.get(resource_path(manifest))


_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def quantity(text: str) -> float | None:
    """A Kubernetes quantity's value ("1k" == "1000"), None if `text` is not one."""
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            with contextlib.suppress(ValueError):
                return float(text[: -len(suffix)]) * factor
    with contextlib.suppress(ValueError):
        return float(text)
    return None


def same(stored: Any, planned: Any) -> bool:
    """Equal, or the same number (2 vs "2") or quantity ("1000" vs "1k", as the API server normalizes)."""
    if stored == planned:
        return True
    if isinstance(stored, str | int | float) and isinstance(planned, str | int | float):
        a, b = quantity(str(stored)), quantity(str(planned))
        return a is not None and a == b
    return False


def contains(stored: Any, planned: Any, where: str = "") -> list[str]:
    """Where `stored` differs from `planned`, ignoring what the API server added (defaults)."""
    if isinstance(planned, dict):
        if not isinstance(stored, dict):
            return [f"{where}: {stored!r} is not an object"]
        return [d for k, v in planned.items() for d in contains(stored.get(k), v, f"{where}.{k}")]
    if isinstance(planned, list):
        if not isinstance(stored, list) or len(stored) != len(planned):
            return [f"{where}: {stored!r} != {planned!r}"]
        return [
            d for i, (s, p) in enumerate(zip(stored, planned, strict=True)) for d in contains(s, p, f"{where}[{i}]")
        ]
    if not same(stored, planned):
        return [f"{where}: {stored!r} != {planned!r}"]
    return []


def the_plan(k8s: Cluster, obj: dict[str, Any]) -> Any:
    """What the operator plans for the resource as stored, with the secrets it generated."""
    instance = Instance.from_object(obj)
    ns = instance.namespace
    password = secret_data(k8s, ns, redis.name(instance)).get("password")
    api_key = secret_data(k8s, ns, api_key_ref(instance)["name"]).get("api-key")
    return plan(obj, available_kinds=available(k8s), redis_password=password, api_key=api_key)


def planned_children_match(k8s: Cluster, namespace: str, name: str = "chat") -> list[dict[str, Any]]:
    obj = rts(k8s, namespace, name)
    children: list[dict[str, Any]] = the_plan(k8s, obj).children
    assert children, "nothing planned"
    for manifest in children:
        stored = child(k8s, manifest)
        what = f"{manifest['kind']} {manifest['metadata']['name']}"
        assert stored is not None, f"{what} does not exist"
        body = {k: v for k, v in manifest.items() if k not in ("metadata", "apiVersion", "kind")}
        if manifest["kind"] == "Secret":
            body = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in body["stringData"].items()}}
        differences = contains(stored, body) + contains(stored["metadata"], {"labels": manifest["metadata"]["labels"]})
        assert not differences, f"{what}: {differences}"
        owners = stored["metadata"].get("ownerReferences", [])
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
            ("RealtimeService", obj["metadata"]["uid"], True)
        ], what
    return children


def identity(api_version: str, kind: str, namespace: str, name: str = "chat") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}}


def event_reasons(k8s: Cluster, namespace: str) -> set[str]:
    """The reasons of the Events posted on RealtimeServices in the namespace."""
    events = k8s.api("GET", f"/api/v1/namespaces/{namespace}/events").json()["items"]
    return {e["reason"] for e in events if e["involvedObject"]["kind"] == "RealtimeService"}


def deployment(k8s: Cluster, namespace: str, name: str = "chat") -> dict[str, Any]:
    return k8s.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}


def ready(k8s: Cluster, namespace: str, name: str = "chat") -> dict[str, Any] | None:
    """The resource once its status says Ready about its current spec (a Ready of an older generation is not)."""
    obj = rts(k8s, namespace, name)
    generation = obj.get("metadata", {}).get("generation")
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == generation and all(
        c.get("observedGeneration") == generation for c in status.get("conditions") or ()
    )
    return obj if current and condition(obj, "Ready").get("status") == "True" else None


async def running_minimal(k8s: Cluster, namespace: str) -> dict[str, Any]:
    secret(k8s, namespace, "chat-jwt", {"jwt-secret": JWT_SECRET})
    k8s.apply(example("minimal", namespace), manager="hubbub-tests")

    def settled() -> dict[str, Any] | None:
        # Ready means clients can connect, which one pod is enough for: await both of the example's pods.
        obj = ready(k8s, namespace)
        return obj if obj is not None and obj["status"].get("readyReplicas") == 2 else None

    try:
        found = await until(settled, timeout=2 * DEADLINE, what="Ready=True with both pods ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {rts(k8s, namespace).get('status')}") from None
    assert found is not None
    return found


# -- the tests ---------------------------------------------------------------------------------------


async def test_without_the_ecosystem_crds_optional_children_are_skipped_with_a_reason(
    k8s: Cluster, namespace: str
) -> None:
    await remove_ecosystem_crds(k8s)
    secret(k8s, namespace, "chat-idp-key", {"public-key.pem": PUBLIC_KEY})
    secret(k8s, namespace, "chat-api", {"api-key": "k" * 32})
    k8s.apply(example("production", namespace), manager="hubbub-tests")

    def skipped() -> list[str]:
        obj = rts(k8s, namespace)
        assert obj.get("status", {}).get("skipped"), obj.get("status")
        return list(obj["status"]["skipped"])

    reasons = await until(skipped, timeout=DEADLINE, what="status.skipped")
    assert any(r.startswith("ServiceMonitor not created: the ServiceMonitor CRD") for r in reasons), reasons
    assert any(r.startswith("PrometheusRule not created") for r in reasons), reasons
    await until(lambda: planned_children_match(k8s, namespace), timeout=DEADLINE, what="the built-in children")
    degraded = condition(rts(k8s, namespace), "Degraded")
    assert degraded["status"] == "True" and "ServiceMonitor not created" in degraded["message"]
    monitors = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors"
    assert k8s.api("GET", monitors).status_code == 404

    # Installed later: the next resync creates them and the reason goes.
    await install_ecosystem_crds(k8s)
    await until(lambda: not rts(k8s, namespace)["status"]["skipped"], timeout=DEADLINE, what="nothing skipped")
    children = await until(lambda: planned_children_match(k8s, namespace), timeout=DEADLINE, what="every child")
    assert {"ServiceMonitor", "PrometheusRule", "Ingress"} <= {c["kind"] for c in children}


async def test_keda_and_gateway_children_are_created_when_their_crds_exist(k8s: Cluster, namespace: str) -> None:
    await install_ecosystem_crds(k8s)
    obj = example("external-redis-keda-gateway", namespace)
    for name, key in secret_references(plan(obj, available_kinds=kinds.OPTIONAL, api_key="k" * 32).children):
        secret(k8s, namespace, name, {key or "value": "redis://redis.example:6379/0"})
    k8s.apply(obj, manager="hubbub-tests")
    children = await until(
        lambda: planned_children_match(k8s, namespace, "events"), timeout=DEADLINE, what="every child"
    )
    kinds_made = {c["kind"] for c in children}
    assert {"ScaledObject", "HTTPRoute", "ServiceMonitor", "PrometheusRule"} <= kinds_made, kinds_made
    assert "HorizontalPodAutoscaler" not in kinds_made and "StatefulSet" not in kinds_made
    route = k8s.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes/events") or {}
    assert all("sessionPersistence" in rule for rule in route["spec"]["rules"]), route["spec"]
    await until(lambda: ready(k8s, namespace, "events"), timeout=DEADLINE, what="Ready=True")
    assert rts(k8s, namespace, "events")["status"]["skipped"] == []


def test_the_namespaced_rbac_variant_is_accepted_by_the_api_server(k8s: Cluster, operator: Operator) -> None:
    for obj in deploy.namespaced_rbac():
        response = k8s.api(
            "PATCH",
            resource_path(obj),
            params={"fieldManager": "hubbub-tests", "dryRun": "All", "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            content=json.dumps(obj),
        )
        assert response.status_code < 400, response.text


async def test_the_rendered_prometheus_rule_passes_promtool(k8s: Cluster, namespace: str, tmp_path: Path) -> None:
    tool = promtool.require("promtool")
    await install_ecosystem_crds(k8s)
    await running_minimal(k8s, namespace)
    obj = example("minimal", namespace)
    obj["spec"]["monitoring"] = {"prometheusRule": {"thresholds": {"capacity_ratio": 0.7}}}
    k8s.apply(obj, manager="hubbub-tests")
    path = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/prometheusrules/chat"
    rule = await until(functools.partial(k8s.get, path), timeout=DEADLINE, what="the PrometheusRule")
    assert rule is not None
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = promtool.run(tool, "check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0.7" in rules.read_text()


async def test_minimal_example_runs_every_planned_child_and_turns_ready(k8s: Cluster, namespace: str) -> None:
    obj = await running_minimal(k8s, namespace)
    children = planned_children_match(k8s, namespace)
    assert {c["kind"] for c in children} >= {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"}
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["readyReplicas"] == 2 and obj["status"]["endpoint"]
    assert {c["type"] for c in obj["status"]["conditions"]} == {"Ready", "RedisReady", "AutoscalingReady", "Degraded"}
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in obj["status"]["conditions"])
    # The managed Redis password was generated once, and reconciles keep it.
    password = secret_data(k8s, namespace, "chat-redis")["password"]
    assert len(password) >= 16
    await until(lambda: condition(rts(k8s, namespace), "RedisReady").get("status") == "True", what="RedisReady")
    assert secret_data(k8s, namespace, "chat-redis")["password"] == password

    listing = k8s.kubectl("get", "rts", "-n", namespace).splitlines()
    assert listing[0].split()[:5] == ["NAME", "READY", "REPLICAS", "CONNECTIONS", "ENDPOINT"]
    row = listing[1].split()
    assert row[:3] == ["chat", "True", "2"] and obj["status"]["endpoint"] in row
    await until(
        lambda: {"Created", "Ready"} <= event_reasons(k8s, namespace), timeout=DEADLINE, what="Created and Ready events"
    )
    assert "Updated" not in event_reasons(k8s, namespace), "a reconcile with nothing to change rewrote a child"


async def test_a_settings_change_rewrites_the_config_and_rolls_the_pods(k8s: Cluster, namespace: str) -> None:
    await running_minimal(k8s, namespace)
    config_path = f"/api/v1/namespaces/{namespace}/configmaps/chat-config"
    before = k8s.get(config_path) or {}
    checksum = deployment(k8s, namespace)["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    obj = example("minimal", namespace)
    obj["spec"]["settings"]["namespaces"]["chat"]["history_size"] = 321
    k8s.apply(obj, manager="hubbub-tests")

    def rewritten() -> dict[str, Any] | None:
        found = k8s.get(config_path)
        return found if found is not None and found.get("data") != before.get("data") else None

    after = await until(rewritten, timeout=DEADLINE, what="the ConfigMap rewritten")
    assert after is not None
    assert "321" in "".join(after["data"].values())

    def rolled() -> bool:
        found = deployment(k8s, namespace)
        new = found["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        status = found.get("status", {})
        return bool(
            new != checksum
            and status.get("observedGeneration") == found["metadata"]["generation"]
            and status.get("updatedReplicas") == status.get("replicas") == status.get("readyReplicas")
        )

    await until(rolled, timeout=DEADLINE, what="the pods rolled onto the new checksum")
    await until(lambda: planned_children_match(k8s, namespace), timeout=DEADLINE, what="children as planned")


async def test_deleted_or_hand_edited_children_are_restored(k8s: Cluster, namespace: str) -> None:
    await running_minimal(k8s, namespace)
    service_path = f"/api/v1/namespaces/{namespace}/services/chat"
    config_path = f"/api/v1/namespaces/{namespace}/configmaps/chat-config"
    uids = {path: (k8s.get(path) or {})["metadata"]["uid"] for path in (service_path, config_path)}
    for path in uids:
        assert k8s.api("DELETE", path).is_success
    for path, uid in uids.items():
        await until(functools.partial(replaced, k8s, path, uid), timeout=DEADLINE, what=f"{path} recreated")

    # A hand edit under another field manager, forced: the operator's next apply takes it back.
    config = k8s.get(config_path) or {}
    key = next(iter(config["data"]))
    edited = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "chat-config", "namespace": namespace}}
    k8s.apply({**edited, "data": {key: "{}"}}, manager="someone-by-hand", force=True)
    await until(lambda: (k8s.get(config_path) or {})["data"][key] == config["data"][key], timeout=DEADLINE)
    # The Deployment's pod spec too: another image, forced by hand, is put back.
    deploy_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/chat"
    image = deployment(k8s, namespace)["spec"]["template"]["spec"]["containers"][0]["image"]
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "hubbub", "image": "example/other:1"}]}}}}
    k8s.apply({**identity("apps/v1", "Deployment", namespace), **patch}, manager="someone-by-hand", force=True)

    def image_back() -> bool:
        return bool(deployment(k8s, namespace)["spec"]["template"]["spec"]["containers"][0]["image"] == image)

    await until(image_back, timeout=DEADLINE, what=f"{deploy_path} back on {image}")
    await until(lambda: planned_children_match(k8s, namespace), timeout=DEADLINE, what="children as planned")
    await until(lambda: "Restored" in event_reasons(k8s, namespace), timeout=DEADLINE, what="a Restored event")


async def test_deleting_the_resource_garbage_collects_its_children(k8s: Cluster, namespace: str) -> None:
    await running_minimal(k8s, namespace)
    children = planned_children_match(k8s, namespace)
    assert k8s.api("DELETE", f"{API}/namespaces/{namespace}/realtimeservices/chat").is_success

    def collected() -> bool:
        left = [f"{c['kind']} {c['metadata']['name']}" for c in children if child(k8s, c) is not None]
        assert not left, left
        return True

    await until(collected, timeout=DEADLINE, what="every child garbage-collected")
    assert k8s.get(f"{API}/namespaces/{namespace}/realtimeservices/chat") is None


async def test_a_missing_secret_is_named_in_status_and_recovers_once_created(
    k8s: Cluster, namespace: str, operator: Operator
) -> None:
    k8s.apply(example("minimal", namespace), manager="hubbub-tests")

    def refused() -> dict[str, Any]:
        ready_condition = condition(rts(k8s, namespace), "Ready")
        assert ready_condition.get("status") == "False" and "chat-jwt" in ready_condition["message"], ready_condition
        return ready_condition

    found = await until(refused, timeout=DEADLINE, what="Ready=False naming the Secret")
    assert "does not exist" in found["message"]
    assert deployment(k8s, namespace) == {}, "pods rolled onto a missing Secret"
    assert operator.healthy()

    secret(k8s, namespace, "chat-jwt", {"wrong-key": JWT_SECRET})
    await until(
        lambda: "no key 'jwt-secret'" in condition(rts(k8s, namespace), "Ready").get("message", ""),
        timeout=DEADLINE,
        what="Ready=False naming the key",
    )
    secret(k8s, namespace, "chat-jwt", {"jwt-secret": JWT_SECRET})
    await until(lambda: ready(k8s, namespace), timeout=DEADLINE, what="Ready=True once the Secret exists")
    assert operator.healthy()


async def test_the_hpa_scales_on_connections_and_the_operator_leaves_replicas_to_it(
    k8s: Cluster, namespace: str
) -> None:
    await running_minimal(k8s, namespace)
    hpa_path = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/chat"
    hpa = k8s.get(hpa_path) or {}
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "hubbub_connections"
    target = int(quantity(metric["target"]["averageValue"]) or 0)
    pods = k8s.api(
        "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app.kubernetes.io/component=server"}
    )
    names = [p["metadata"]["name"] for p in pods.json()["items"]]
    assert len(names) == 2
    for pod in names:
        k8s.set_pod_metric(namespace, pod, "hubbub_connections", str(target * 3))

    def scaled() -> int:
        desired = int((k8s.get(hpa_path) or {}).get("status", {}).get("desiredReplicas", 0))
        replicas = int(deployment(k8s, namespace)["spec"]["replicas"])
        return replicas if desired > 2 and replicas == desired else 0

    replicas = await until(scaled, timeout=DEADLINE, what="the HPA scaling the Deployment up")
    owners = {
        entry["manager"]
        for entry in deployment(k8s, namespace)["metadata"]["managedFields"]
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }
    assert MANAGER not in owners, owners
    # A reconcile after the scale-up (the PodDisruptionBudget deleted and restored) applies the
    # Deployment again; replicas stay the HPA's.
    pdb = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/chat"
    uid = (k8s.get(pdb) or {})["metadata"]["uid"]
    k8s.api("DELETE", pdb)
    await until(functools.partial(replaced, k8s, pdb, uid), timeout=DEADLINE, what="the PDB restored")
    assert int(deployment(k8s, namespace)["spec"]["replicas"]) >= replicas


def test_the_operator_never_crashed_nor_printed_a_traceback(operator: Operator) -> None:
    assert operator.healthy()
    assert "Traceback" not in operator.log(), operator.log()[-5000:]
