"""The operator's pure core: the CRD file, what plan() builds from each example, and the behaviours
the children exist for (enableServiceLinks, draining, rollouts on config changes, autoscaling that
owns the replicas, optional kinds, settings hubbub would refuse), plus the status conditions.

Golden files: tests/fixtures/operator/golden/<example>.yaml holds each example's plan; rewrite them
with HUBBUB_UPDATE_GOLDEN=1 after a deliberate change, and read the diff.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub.metrics import METRICS
from hubbub.monitoring import alerts, catalog
from hubbub.settings import Settings
from hubbub_operator import conditions, crd, derived, fields, kinds, schema
from hubbub_operator.conditions import Observed
from hubbub_operator.plan import Plan, plan
from hubbub_operator.workload import CHECKSUM_ANNOTATION
from tests.support import promtool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("realtimeservice-*.yaml"))
GOLDEN = ROOT / "tests" / "fixtures" / "operator" / "golden"
ALL_KINDS = kinds.OPTIONAL
SECRETS = {"redis_password": "golden-redis-password", "api_key": "golden-api-key"}


def resource(path: Path) -> dict[str, Any]:
    """An example as the API would hand it over: namespace, uid and generation filled in."""
    obj: dict[str, Any] = yaml.safe_load(path.read_text())
    meta = obj["metadata"]
    meta.setdefault("namespace", "default")
    meta.update(uid="00000000-0000-4000-8000-000000000001", generation=3)
    return obj


def minimal(**spec: Any) -> dict[str, Any]:
    obj = resource(ROOT / "examples" / "realtimeservice-minimal.yaml")
    obj["spec"].update(spec)
    return obj


def planned(obj: dict[str, Any], available: frozenset[str] = ALL_KINDS) -> Plan:
    return plan(obj, available_kinds=available, **SECRETS)


def child(p: Plan, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [c for c in p.children if c["kind"] == kind and (name is None or c["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {[c['metadata']['name'] for c in found]}"
    return found[0]


def pod_spec(p: Plan) -> dict[str, Any]:
    spec: dict[str, Any] = child(p, "Deployment")["spec"]["template"]["spec"]
    return spec


def env_of(p: Plan) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod_spec(p)["containers"][0]["env"]}


# -- the CRD file and the field table ----------------------------------------------------------------


def test_checked_in_crd_is_what_the_field_table_renders() -> None:
    assert crd.CRD_FILE.read_text(encoding="utf-8") == crd.render(), "run: .venv/bin/python -m hubbub_operator.crd"
    assert crd.main(["--check"]) == 0


def walk(node: dict[str, Any], path: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child_node in (node.get("properties") or {}).items():
        found += walk(child_node, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    return found


def test_every_field_of_the_schema_has_a_description() -> None:
    """`kubectl explain rts.spec.<anything>` says what it is."""
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # A list's items or a map's values that are scalars (or Kubernetes' own types) are described by
    # the list or map itself.
    missing = [
        path
        for path, node in walk(spec, "")
        if not node.get("description") and path != ".metadata" and (node.get("properties") or path[-1] not in "]*")
    ]
    assert not missing


def test_settings_in_the_spec_are_hubbubs_own_less_those_the_operator_decides() -> None:
    in_spec = set(schema.at("settings")["properties"])
    assert in_spec | set(derived.OWNED) == set(Settings.model_fields)
    assert not in_spec & set(derived.OWNED)
    assert schema.at("settings.max_connections")["description"] == Settings.model_fields["max_connections"].description
    assert schema.at("settings.namespaces.*.history_size")["maximum"] == 100_000


def test_thresholds_in_the_spec_are_the_alert_rules_thresholds() -> None:
    in_spec = schema.at("monitoring.prometheusRule.thresholds")["properties"]
    assert list(in_spec) == [f.name for f in dataclasses.fields(alerts.Thresholds)]
    assert "HubbubNearConnectionCapacity" in in_spec["capacity_ratio"]["description"]
    assert in_spec["capacity_ratio"]["maximum"] == 1
    assert in_spec["connection_spike_ratio"]["minimum"] == 1


def test_python_defaulting_fills_absent_objects_in_full() -> None:
    spec = schema.with_defaults({"auth": {"jwksURL": "https://id.example.com/jwks"}}, schema.at(""))
    assert spec["replicas"] == {"min": 2, "max": 10}
    assert spec["redis"] == {"mode": "managed"}
    assert spec["exposure"]["service"] == {"type": "ClusterIP", "port": 80}
    assert "settings" not in spec and "monitoring" not in spec


def test_the_autoscaling_metric_is_one_hubbub_exports() -> None:
    from hubbub_operator.autoscaling import METRIC

    assert METRIC in {m.name for m in METRICS}


# -- golden files ----------------------------------------------------------------------------------------


def golden_text(p: Plan) -> str:
    summary = {
        "endpoint": p.endpoint,
        "autoscaler": p.autoscaler,
        "initial_replicas": p.initial_replicas,
        "problems": p.problems,
        "skipped": p.skipped,
        "children": p.children,
    }
    return (
        "# plan() of the example with every optional kind installed (tests/unit/test_operator_plan.py)\n"
        + yaml.safe_dump(summary, sort_keys=False, width=120)
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_plans_its_golden_children(example: Path) -> None:
    p = planned(resource(example))
    assert not p.problems
    text = golden_text(p)
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("HUBBUB_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"{golden} missing: run with HUBBUB_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden.name} differs: rerun with HUBBUB_UPDATE_GOLDEN=1 and read the diff"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_child_is_labelled_owned_and_namespaced(example: Path) -> None:
    obj = resource(example)
    p = planned(obj)
    assert p.children
    for c in p.children:
        meta = c["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "hubbub"
        assert labels["app.kubernetes.io/instance"] == obj["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "hubbub-operator"
        assert labels["app.kubernetes.io/part-of"] == "hubbub"
        assert labels["app.kubernetes.io/component"]
        assert meta["namespace"] == obj["metadata"]["namespace"]
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "hubbub.dev/v1alpha1",
            "kind": "RealtimeService",
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_plans_are_pure() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-production.yaml")
    before = copy.deepcopy(obj)
    assert planned(obj) == planned(obj)
    assert obj == before


# -- the pods --------------------------------------------------------------------------------------------


def test_pods_get_no_service_links() -> None:
    """A Service named like the product would hand the pods HUBBUB_PORT=tcp://…, which hubbub reads as its port."""
    assert pod_spec(planned(minimal()))["enableServiceLinks"] is False


def test_grace_period_covers_the_drain() -> None:
    p = planned(minimal(settings={"drain_delay": 7, "drain_period": 42.5}))
    assert pod_spec(p)["terminationGracePeriodSeconds"] == 7 + 43 + 10
    assert pod_spec(planned(minimal(settings={})))["terminationGracePeriodSeconds"] == 5 + 20 + 10
    assert "lifecycle" not in pod_spec(p)["containers"][0]


def test_pods_are_probed_and_locked_down() -> None:
    pod = pod_spec(planned(minimal()))
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:3] == ["serve", "--config", "/etc/hubbub/config.json"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    deployment = child(planned(minimal()), "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_node_name_and_secrets_reach_the_pods_as_environment() -> None:
    env = env_of(planned(minimal()))
    assert env["HUBBUB_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HUBBUB_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "chat-jwt", "key": "jwt-secret"}
    assert env["HUBBUB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "chat-api-key", "key": "api-key"}
    assert env["HUBBUB_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "chat-redis", "key": "url"}
    config = json.loads(child(planned(minimal()), "ConfigMap", "chat-config")["data"]["config.json"])
    assert config["mode"] == "production"
    assert not {"jwt_secret", "api_key", "redis_url", "node_name"} & set(config)


def test_the_config_and_the_environment_pass_hubbubs_own_loader(tmp_path: Path) -> None:
    """What the pod will load: config.json plus the HUBBUB_* variables (stand-ins for the Secrets)."""
    from hubbub.loader import load_settings

    p = planned(resource(ROOT / "examples" / "realtimeservice-production.yaml"))
    path = tmp_path / "config.json"
    path.write_text(child(p, "ConfigMap", "chat-config")["data"]["config.json"])
    env = {name: "redis://r:6379/0" if "REDIS" in name else "x" * 40 for name in env_of(p)}
    settings = load_settings(path, env=env)
    assert settings.mode == "production" and settings.max_connections == 10000
    assert str(settings.jwt_public_key_file) == "/var/run/hubbub/jwt/public-key.pem"


def test_a_public_key_is_mounted_as_a_file() -> None:
    p = planned(resource(ROOT / "examples" / "realtimeservice-production.yaml"))
    pod = pod_spec(p)
    volume = next(v for v in pod["volumes"] if v["name"] == "jwt-public-key")
    assert volume["secret"] == {
        "secretName": "chat-idp-key",
        "items": [{"key": "public-key.pem", "path": "public-key.pem"}],
    }
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "jwt-public-key")
    assert mount["mountPath"] == "/var/run/hubbub/jwt"


def checksum(p: Plan) -> str:
    value: str = child(p, "Deployment")["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    return value


def test_the_checksum_follows_the_settings_and_the_secrets_referenced_only() -> None:
    base = checksum(planned(minimal()))
    assert checksum(planned(minimal())) == base
    # Not part of the pods' configuration: no rollout.
    assert checksum(planned(minimal(replicas={"min": 3, "max": 12}))) == base
    assert checksum(planned(minimal(monitoring={"dashboards": {}}))) == base
    # The settings, or which Secret holds a key: a rollout.
    assert checksum(planned(minimal(settings={"max_connections": 500}))) != base
    assert checksum(planned(minimal(auth={"jwtSecretRef": {"name": "other"}}))) != base


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler() -> None:
    p = planned(minimal())
    assert p.autoscaler == "hpa"
    assert "replicas" not in child(p, "Deployment")["spec"]
    assert p.initial_replicas == 2
    fixed = planned(minimal(autoscaling={"provider": "none"}, replicas={"min": 3, "max": 3}))
    assert fixed.autoscaler == "none" and fixed.initial_replicas is None
    assert child(fixed, "Deployment")["spec"]["replicas"] == 3
    assert not [c for c in fixed.children if c["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]


def test_hpa_scales_on_connections_up_fast_and_down_slowly() -> None:
    spec = child(planned(minimal(autoscaling={"targetConnectionsPerPod": 800})), "HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    (metric,) = spec["metrics"]
    assert metric["pods"] == {
        "metric": {"name": "hubbub_connections"},
        "target": {"type": "AverageValue", "averageValue": "800"},
    }
    down = spec["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 900 and down["selectPolicy"] == "Min"
    assert {"type": "Pods", "value": 1, "periodSeconds": 120} in down["policies"]


def test_keda_without_its_crd_is_skipped_and_the_deployment_keeps_its_replicas() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-external-redis-keda-gateway.yaml")
    with_keda = planned(obj)
    scaled = child(with_keda, "ScaledObject")["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert trigger["query"] == 'sum(hubbub_connections{namespace="realtime",pod=~"events-[a-z0-9]+-[a-z0-9]+"})'
    assert trigger["threshold"] == "2000"
    assert "replicas" not in child(with_keda, "Deployment")["spec"]
    without = planned(obj, ALL_KINDS - {kinds.SCALED_OBJECT})
    assert without.autoscaler == "none"
    assert child(without, "Deployment")["spec"]["replicas"] == 2
    assert any(
        s.startswith("ScaledObject not created: the ScaledObject CRD (keda.sh/v1alpha1)") for s in without.skipped
    )


def test_optional_kinds_absent_are_skipped_with_a_reason() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-production.yaml")
    p = planned(obj, frozenset())
    made = {c["kind"] for c in p.children}
    assert not made & {"ServiceMonitor", "PrometheusRule"}
    assert "ServiceMonitor not created: the ServiceMonitor CRD (monitoring.coreos.com/v1) is not installed" in p.skipped
    assert "PrometheusRule not created: the PrometheusRule CRD (monitoring.coreos.com/v1) is not installed" in p.skipped
    # The dashboards need no CRD, and an Ingress is built in.
    assert {"ConfigMap", "Ingress"} <= made


def test_http_route_without_the_experimental_channel_has_no_session_persistence() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-external-redis-keda-gateway.yaml")
    route = child(planned(obj), "HTTPRoute")["spec"]["rules"][0]
    assert route["sessionPersistence"]["type"] == "Cookie"
    standard = planned(obj, ALL_KINDS - {kinds.HTTP_ROUTE_SESSION_PERSISTENCE})
    assert "sessionPersistence" not in child(standard, "HTTPRoute")["spec"]["rules"][0]
    assert any("experimental channel" in s for s in standard.skipped)


def test_settings_hubbub_refuses_become_problems_not_children() -> None:
    p = planned(minimal(settings={"namespaces": {"chat": {"history_size": -1}}, "max_conections": 5}))
    assert p.children == []
    assert (
        "settings refused by hubbub: spec.settings.namespaces.chat.history_size: "
        "must be greater than or equal to 0 (got -1)" in p.problems
    )
    assert any("max_conections: unknown setting; did you mean max_connections?" in x for x in p.problems)
    crossed = planned(minimal(settings={"ping_interval": 2, "pong_timeout": 10}))
    assert crossed.children == [] and any("pong_timeout" in x for x in crossed.problems)


def test_managed_redis_password_is_the_callers_and_stays_off_command_lines() -> None:
    p = planned(minimal())
    secret = child(p, "Secret", "chat-redis")["stringData"]
    assert secret["password"] == "golden-redis-password"
    assert secret["url"] == "redis://:golden-redis-password@chat-redis.default.svc:6379/0"
    assert "requirepass golden-redis-password" in secret["redis.conf"]
    statefulset = child(p, "StatefulSet")
    assert "golden-redis-password" not in json.dumps(statefulset)
    assert "volumeClaimTemplates" not in statefulset["spec"]
    missing = plan(minimal(), available_kinds=ALL_KINDS, api_key="k")
    assert missing.children == [] and any("password" in x for x in missing.problems)
    spaced = plan(minimal(), available_kinds=ALL_KINDS, api_key="k", redis_password="a password with spaces")
    assert spaced.children == [] and any("[A-Za-z0-9_-]" in x for x in spaced.problems)


def test_a_resource_without_a_token_key_is_a_problem() -> None:
    obj = minimal()
    del obj["spec"]["auth"]
    p = planned(obj)
    assert p.children == [] and p.problems == [
        "spec.auth needs one of jwtSecretRef, publicKeySecretRef or jwksURL: hubbub checks tokens"
    ]


def test_persistence_asks_for_a_volume() -> None:
    p = planned(resource(ROOT / "examples" / "realtimeservice-production.yaml"))
    (claim,) = child(p, "StatefulSet")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "appendonly yes" in child(p, "Secret", "chat-redis")["stringData"]["redis.conf"]


def test_external_redis_with_a_private_ca_reads_it_from_a_file() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-external-redis-keda-gateway.yaml")
    p = planned(obj)
    env = env_of(p)
    assert env["HUBBUB_REDIS_URL"]["value"] == "$(REDIS_URL_FROM_SECRET)?ssl_ca_certs=/var/run/hubbub/redis-ca/ca.crt"
    names = [e["name"] for e in pod_spec(p)["containers"][0]["env"]]
    assert names.index("REDIS_URL_FROM_SECRET") < names.index("HUBBUB_REDIS_URL")  # $(…) sees earlier ones only
    config = json.loads(child(p, "ConfigMap", "events-config")["data"]["config.json"])
    assert config["redis_sentinels"][0] == "sentinel-0.redis:26379" and config["redis_sentinel_service"] == "events"
    assert not [c for c in p.children if c["kind"] == "StatefulSet"]


def test_an_external_redis_cluster_is_its_seed_nodes_in_the_config_and_its_url_secret_for_credentials() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-external-redis-keda-gateway.yaml")
    external = obj["spec"]["redis"]["external"]
    del external["sentinels"], external["tls"]
    external["cluster"] = {"nodes": ["redis-0.redis:6379", "redis-1.redis:6379"]}
    p = planned(obj)
    assert p.problems == []
    config = json.loads(child(p, "ConfigMap", "events-config")["data"]["config.json"])
    assert config["redis_cluster_nodes"] == ["redis-0.redis:6379", "redis-1.redis:6379"]
    assert "redis_sentinels" not in config
    assert env_of(p)["HUBBUB_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == external["urlSecretRef"]["name"]


def test_embedded_broker_has_no_redis_url() -> None:
    p = planned(minimal(redis={"mode": "none"}, replicas={"min": 1, "max": 1}))
    assert "HUBBUB_REDIS_URL" not in env_of(p)
    assert not [c for c in p.children if c["kind"] == "StatefulSet"]


# -- exposure ---------------------------------------------------------------------------------------------


def test_ingress_keeps_websockets_open_and_sticks_by_cookie() -> None:
    p = planned(resource(ROOT / "examples" / "realtimeservice-production.yaml"))
    ingress = child(p, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ingress["spec"]["tls"] == [{"hosts": ["chat.example.com"], "secretName": "chat-example-com-tls"}]
    assert p.endpoint == "wss://chat.example.com/ws"
    service = child(p, "Service", "chat")["spec"]
    assert service["ports"][0]["appProtocol"] == "kubernetes.io/ws"
    assert service["ports"][0]["port"] == 80


def test_client_ip_affinity_is_the_services() -> None:
    service = child(planned(minimal(exposure={"sessionAffinity": "ClientIP"})), "Service", "chat")["spec"]
    assert service["sessionAffinity"] == "ClientIP"


# -- monitoring ----------------------------------------------------------------------------------------------


def test_prometheus_rule_is_the_projects_rules_with_the_specs_thresholds() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-production.yaml")
    rule = child(planned(obj), "PrometheusRule")
    expected = alerts.rule_groups(
        alerts.Thresholds(capacity_ratio=0.8, rate_window="10m"),
        selector='namespace="realtime",pod=~"chat-[a-z0-9]+-[a-z0-9]+"',
        extra_labels={"team": "realtime", "realtimeservice": "chat"},
    )
    assert rule["spec"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    tool = promtool.require("promtool")
    for example in EXAMPLES:
        for c in planned(resource(example)).children:
            if c["kind"] == "PrometheusRule":
                path = tmp_path / f"{example.stem}.yaml"
                path.write_text(yaml.safe_dump(c["spec"]))
                result = promtool.run(tool, "check", "rules", str(path), cwd=tmp_path)
                assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_the_checked_in_ones_with_uids_of_their_own() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-production.yaml")
    cm = child(planned(obj), "ConfigMap", "chat-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    models = {k: json.loads(v) for k, v in cm["data"].items()}
    other = copy.deepcopy(obj)
    other["metadata"]["namespace"] = "elsewhere"
    others = {json.loads(v)["uid"] for v in child(planned(other), "ConfigMap", "chat-dashboards")["data"].values()}
    uids = {m["uid"] for m in models.values()}
    assert len(uids) == len(catalog.DASHBOARD_UIDS) and not uids & others and not uids & set(catalog.DASHBOARD_UIDS)
    assert all(len(u) <= 40 and f"{u}.json" in cm["data"] for u in uids)
    for model in models.values():
        base = model["uid"].rsplit("-", 1)[0]
        assert catalog.queries(model) == catalog.queries(catalog.dashboard(base))


# -- status ------------------------------------------------------------------------------------------------


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    p = planned(minimal())
    ok = Observed(desired_replicas=2, replicas=2, ready_replicas=2, redis_ready=True, autoscaling_active=True)
    first = conditions.status(previous=None, plan=p, observed=ok, redis_mode="managed", now=NOW)
    by_type = {c["type"]: c for c in first["conditions"]}
    assert [c["type"] for c in first["conditions"]] == ["Ready", "RedisReady", "AutoscalingReady", "Degraded"]
    assert by_type["Ready"]["status"] == "True" and by_type["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in first["conditions"])
    later = NOW + timedelta(minutes=5)
    half = Observed(desired_replicas=2, replicas=2, ready_replicas=1, redis_ready=True, autoscaling_active=True)
    second = conditions.status(previous=first, plan=p, observed=half, redis_mode="managed", now=later)
    by_type2 = {c["type"]: c for c in second["conditions"]}
    assert by_type2["Ready"]["lastTransitionTime"] == "2026-12-01T12:00:00Z"
    assert by_type2["Degraded"]["status"] == "True"
    assert by_type2["Degraded"]["lastTransitionTime"] == "2026-12-01T12:05:00Z"
    assert "1/2 pods ready" in by_type2["Degraded"]["message"]
    assert second["replicas"] == 2 and second["readyReplicas"] == 1 and second["endpoint"] == "ws://chat.default.svc/ws"


def test_an_invalid_spec_reads_as_ready_false_with_the_problems() -> None:
    p = planned(minimal(settings={"max_connections": 0}))
    status = conditions.status(previous=None, plan=p, observed=Observed(), redis_mode="managed", now=NOW)
    ready = conditions.find(status["conditions"], "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.settings.max_connections" in ready["message"]


def test_skipped_children_show_in_status() -> None:
    obj = resource(ROOT / "examples" / "realtimeservice-external-redis-keda-gateway.yaml")
    p = planned(obj, frozenset())
    observed = Observed(desired_replicas=2, replicas=2, ready_replicas=2, redis_ready=True)
    status = conditions.status(previous=None, plan=p, observed=observed, redis_mode="external", now=NOW)
    scaling = conditions.find(status["conditions"], "AutoscalingReady")
    assert scaling is not None and scaling["reason"] == "KEDANotInstalled"
    assert status["skipped"] == p.skipped and len(p.skipped) == 4


def test_condition_reasons_must_be_camel_case() -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        conditions.condition("Ready", True, "not ready", "", generation=1, now=NOW)


def test_field_table_paths_are_unique() -> None:
    paths = [f.path for f in fields.SPEC]
    assert len(paths) == len(set(paths))


def test_docs_field_reference_is_the_field_tables() -> None:
    """docs/operator.md's reference is rendered from the table the CRD is (python -m hubbub_operator.reference)."""
    from hubbub_operator import reference

    doc = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
    assert reference.markdown() in doc, "run: .venv/bin/python -m hubbub_operator.reference --update docs/operator.md"
    for row in fields.SPEC:
        if not row.path.endswith("[]"):
            assert f"`spec.{row.path.replace('.*', '.<name>')}`" in doc
