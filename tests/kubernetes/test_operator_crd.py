"""The RealtimeService CRD on the real API server (the project's control plane, scripts/build-k8s):
it installs, the examples are accepted and stored with the defaults the builders assume, invalid
specs are refused with the messages the CEL rules and bounds give, `kubectl explain` prints the
field descriptions, and the children plan() builds of the built-in kinds are valid objects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub_operator import CRD_NAME, MANAGER, crd, schema
from hubbub_operator.plan import plan
from tests.support.cluster import Cluster, ClusterError, resource_path
from tests.support.polling import until

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("realtimeservice-*.yaml"))
AUTH = {"jwtSecretRef": {"name": "jwt"}}


def established(k8s: Cluster) -> bool:
    found = k8s.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}") or {}
    conditions = (found.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture
async def namespace(k8s: Cluster) -> AsyncIterator[str]:
    """A fresh namespace, with the CRD as generated installed (server-side apply, the operator's manager)."""
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    await until(lambda: established(k8s), what=f"{CRD_NAME} Established")
    name = f"rts-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    k8s.api("DELETE", f"/api/v1/namespaces/{name}")


def example(path: Path, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(path.read_text())
    obj["metadata"]["namespace"] = namespace
    return obj


def rts(namespace: str, spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {
        "apiVersion": "hubbub.dev/v1alpha1",
        "kind": "RealtimeService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_examples_are_accepted_and_stored_with_the_defaults_the_builders_assume(
    k8s: Cluster, namespace: str, path: Path
) -> None:
    obj = example(path, namespace)
    stored = k8s.apply(obj, manager="hubbub-tests")
    assert stored["spec"] == schema.with_defaults(obj["spec"], schema.at(""))
    assert stored["spec"]["replicas"]["min"] >= 1 and stored["spec"]["redis"]["mode"]
    listing = k8s.kubectl("get", "rts", "-n", namespace)
    assert listing.split()[:6] == ["NAME", "READY", "REPLICAS", "CONNECTIONS", "ENDPOINT", "AGE"]


INVALID = [
    pytest.param({"replicas": {"min": 5, "max": 2}}, "replicas.min must not exceed replicas.max", id="min-above-max"),
    pytest.param(
        {"redis": {"mode": "managed", "external": {"urlSecretRef": {"name": "r"}}}},
        "redis.external is set but redis.mode is not external: pick one Redis mode",
        id="two-redis-modes",
    ),
    pytest.param({"redis": {"mode": "external"}}, "redis.mode external needs redis.external", id="external-without-it"),
    pytest.param(
        {"redis": {"mode": "none"}},
        "redis.mode none (the embedded in-memory broker) serves a single pod: set replicas.max to 1",
        id="embedded-broker-with-many-pods",
    ),
    pytest.param(
        {"redis": {"mode": "external", "external": {}}},
        "redis.external needs urlSecretRef (a Secret holding the redis:// URL), sentinels or cluster",
        id="external-without-url",
    ),
    pytest.param(
        {
            "redis": {
                "mode": "external",
                "external": {"sentinels": {"addresses": ["s:26379"]}, "cluster": {"nodes": ["r:6379"]}},
            }
        },
        "redis.external takes sentinels or cluster, not both",
        id="sentinels-and-cluster",
    ),
    pytest.param(
        {"redis": {"mode": "external", "external": {"cluster": {"nodes": []}}}},
        "spec.redis.external.cluster.nodes: Invalid value",
        id="cluster-without-nodes",
    ),
    pytest.param(
        {"redis": {"mode": "external", "external": {"urlSecretRef": {"name": "r"}, "tls": {}}}},
        "redis.external.tls needs caSecretRef",
        id="redis-tls-without-ca",
    ),
    pytest.param({"auth": None}, "spec.auth: Required value", id="no-auth"),
    pytest.param(
        {"auth": {"jwtSecretRef": {"name": "j"}, "jwksURL": "https://id.example.com/jwks"}},
        "auth needs exactly one of jwtSecretRef (an HMAC secret), publicKeySecretRef (a PEM public key) or jwksURL",
        id="two-token-keys",
    ),
    pytest.param(
        {"autoscaling": {"provider": "keda"}},
        "autoscaling.provider keda needs keda.serverAddress",
        id="keda-without-prometheus",
    ),
    pytest.param(
        {"exposure": {"ingress": {"host": "a.example.com"}, "gateway": {"parentRefs": [{"name": "gw"}]}}},
        "exposure.ingress and exposure.gateway are mutually exclusive: enable one",
        id="ingress-and-gateway",
    ),
    pytest.param(
        {"exposure": {"ingress": {"host": "a.example.com", "tls": {}}}},
        "exposure.ingress.tls needs secretName",
        id="tls-without-secret",
    ),
    pytest.param(
        {"exposure": {"ingress": {"tls": {"secretName": "cert"}}}},
        "exposure.ingress.tls needs host",
        id="tls-without-host",
    ),
    pytest.param({"exposure": {"gateway": {}}}, "exposure.gateway needs parentRefs", id="gateway-without-parent"),
    pytest.param(
        {"exposure": {"sessionAffinity": "Cookie"}},
        "exposure.sessionAffinity Cookie needs exposure.ingress or exposure.gateway",
        id="cookie-without-proxy",
    ),
    pytest.param(
        {"monitoring": {"prometheusRule": {"thresholds": {"capacity_ratio": 1.5}}}},
        "spec.monitoring.prometheusRule.thresholds.capacity_ratio: Invalid value: 1.5: "
        "spec.monitoring.prometheusRule.thresholds.capacity_ratio in body should be less than or equal to 1",
        id="threshold-out-of-range",
    ),
    pytest.param(
        {"monitoring": {"prometheusRule": {"thresholds": {"error_for": "ten minutes"}}}},
        "spec.monitoring.prometheusRule.thresholds.error_for in body should match",
        id="threshold-not-a-duration",
    ),
    pytest.param(
        {"settings": {"max_connections": 0}},
        "spec.settings.max_connections in body should be greater than or equal to 1",
        id="setting-out-of-range",
    ),
    pytest.param(
        {"redis": {"flavour": "cherry"}}, ".spec.redis.flavour: field not declared in schema", id="unknown-field"
    ),
    pytest.param(
        {"settings": {"max_conections": 5}},
        ".spec.settings.max_conections: field not declared in schema",
        id="unknown-setting",
    ),
    pytest.param({"settings": {"redis_url": "redis://r"}}, "field not declared in schema", id="operator-owned-setting"),
]


VALID = [
    pytest.param({"redis": {"mode": "none"}, "replicas": {"min": 1, "max": 1}}, id="embedded-broker-single-pod"),
    pytest.param(
        {
            "exposure": {
                "ingress": {"enabled": False, "host": "a.example.com"},
                "gateway": {"parentRefs": [{"name": "g"}]},
            }
        },
        id="ingress-off-gateway-on",
    ),
    pytest.param(
        {"exposure": {"sessionAffinity": "Cookie", "gateway": {"parentRefs": [{"name": "g"}], "hostnames": ["a.b"]}}},
        id="cookie-through-gateway",
    ),
    pytest.param({"redis": {"mode": "external", "external": {"sentinels": {"addresses": ["s:26379"]}}}}, id="sentinel"),
    pytest.param({"redis": {"mode": "external", "external": {"cluster": {"nodes": ["r-0.r:6379"]}}}}, id="cluster"),
    pytest.param({"auth": {"jwksURL": "https://id.example.com/jwks"}, "autoscaling": {"provider": "none"}}, id="jwks"),
]


@pytest.mark.parametrize("change", VALID)
async def test_edge_cases_of_the_rules_are_accepted(k8s: Cluster, namespace: str, change: dict[str, Any]) -> None:
    k8s.apply(rts(namespace, {"auth": AUTH, **change}, name="edge"))


@pytest.mark.parametrize(("change", "message"), INVALID)
async def test_invalid_specs_are_refused_with_a_clear_message(
    k8s: Cluster, namespace: str, change: dict[str, Any], message: str
) -> None:
    spec: dict[str, Any] = {"auth": AUTH, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(ClusterError) as refused:
        k8s.apply(rts(namespace, spec))
    assert message in str(refused.value)
    assert k8s.get(f"/apis/hubbub.dev/v1alpha1/namespaces/{namespace}/realtimeservices/bad") is None


async def test_kubectl_explain_prints_the_field_descriptions(k8s: Cluster, namespace: str) -> None:
    def explain(path: str) -> str:
        return k8s.kubectl("explain", path)

    text = await until(lambda: explain("rts.spec.redis"), what="kubectl explain rts.spec.redis")
    assert "The Redis that connects the pods" in text
    assert "managed" in text and "external" in text
    mode = explain("rts.spec.redis.mode")
    assert "the operator runs a single Redis" in " ".join(mode.split())
    setting = " ".join(explain("rts.spec.settings.max_connections").split())
    assert "Connections per node; beyond it new ones close 1013" in setting


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_planned_children_of_built_in_kinds_pass_the_api_server(k8s: Cluster, namespace: str, path: Path) -> None:
    """Server-side applied as a dry run (dryRun=All): the API server validates each object in full."""
    obj = k8s.apply(example(path, namespace), manager="hubbub-tests")
    p = plan(obj, available_kinds=frozenset(), redis_password="a-generated-password", api_key="an-api-key")
    assert p.children and not p.problems
    for child in p.children:
        response = k8s.api(
            "PATCH",
            resource_path(child),
            params={"fieldManager": MANAGER, "force": "true", "dryRun": "All"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            content=json.dumps(child),
        )
        assert response.status_code < 400, f"{child['kind']} {child['metadata']['name']}: {response.text}"
