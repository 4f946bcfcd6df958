"""The Helm chart, charts/hubbub: it lints and renders for the default values and every scenario of
charts/hubbub/ci/; a misspelt value fails with its name; its RBAC rules and CRDs are the operator's own
(hubbub_operator.rbac, .crd, .deploy); every object carries the standard labels; the operator's pod is
the one deploy.py ships; the `helm test` script round-trips a publication through a real server.
Marked `k8s`: every rendered object passes the API server (dry run); install, upgrade and uninstall
on the project's control plane (kwok pods) behave as docs/operator.md says; the operator with nothing
but the chart's ServiceAccount and RBAC runs a RealtimeService. The README's install steps are the
ones tests/kubernetes/test_chart_real.py runs on real pods.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub import __version__
from hubbub_operator import CRD_NAME, MANAGER, crd, deploy, rbac
from hubbub_operator.fields import DEFAULT_IMAGE
from tests.kubernetes.test_chart_real import STEPS, TYPED
from tests.kubernetes.test_operator import DEADLINE, JWT_SECRET, example, ready, secret
from tests.support.chart import KOPF_CRDS, crd_established, crds_installed, dry_run
from tests.support.cluster import Cluster, default_bin_dir, resource_path
from tests.support.docblocks import document
from tests.support.operator_process import running_operator
from tests.support.polling import until
from tests.support.server import API_KEY, SECRET, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hubbub"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
KUBE_VERSION = "1.34.4"
RELEASE = "rel"
NAMESPACE = "ops"
SCENARIOS = [None, *sorted((CHART / "ci").glob("*-values.yaml"))]
STANDARD_LABELS = {
    "helm.sh/chart": "hubbub-0.1.0",
    "app.kubernetes.io/name": "hubbub",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/version": __version__,
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "hubbub",
}


def scenario_id(path: Path | None) -> str:
    return "default" if path is None else path.name.removesuffix("-values.yaml")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    helm_bin = default_bin_dir() / "helm"
    if not helm_bin.is_file():
        pytest.skip(f"no helm in {helm_bin.parent}: run scripts/build-k8s")
    result = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result


def template(*args: str, values: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    files = ["-f", str(values)] if values else []
    return helm(
        "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION, *files, *args, check=check
    )


def render(*args: str, values: Path | None = None) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(template(*args, values=values).stdout) if doc]


def the(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- lint and render ----------------------------------------------------------------------------


@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
def test_the_chart_lints_without_a_warning(values: Path | None) -> None:
    files = ["-f", str(values)] if values else []
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *files)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
def test_the_chart_renders_the_operator_and_its_rbac(values: Path | None) -> None:
    objects = render(values=values)
    kinds = {o["kind"] for o in objects}
    assert "Deployment" in kinds and "ClusterRole" in kinds and "ClusterRoleBinding" in kinds
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"], obj


@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
def test_every_rendered_object_carries_the_standard_labels(values: Path | None) -> None:
    name = (yaml.safe_load(values.read_text()) if values else {}).get("nameOverride", "hubbub")
    expected = {**STANDARD_LABELS, "app.kubernetes.io/name": name}
    for obj in render(values=values):
        labels = obj["metadata"].get("labels", {})
        assert {k: labels.get(k) for k in expected} == expected, f"{obj['kind']} {obj['metadata']}"
        if obj["kind"] == "Deployment":
            pod_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert {k: pod_labels.get(k) for k in expected} == expected
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector == {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "operator",
            }
            assert selector.items() <= pod_labels.items()


def test_the_chart_version_and_image_are_hubbubs() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert values["image"]["repository"] == DEFAULT_IMAGE
    deployment = the(render(), "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{DEFAULT_IMAGE}:{__version__}"


# --- values: every key documented, every object closed ------------------------------------------


def _key_lines(text: str) -> Iterator[tuple[int, str]]:
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        block = []
        for above in reversed(lines[:number]):
            if not above.strip().startswith("#"):
                break
            block.append(above)
        if not any(b.startswith(" " * indent + "# --") for b in block):
            yield number + 1, line


def test_every_key_of_values_yaml_has_a_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=values.schema.json\n")
    assert list(_key_lines(text)) == []


def _objects(schema: dict[str, Any], pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema with its JSON pointer (`/0` for an item of an array)."""
    if schema.get("type") == "object":
        yield pointer, schema
        for name, sub in schema.get("properties", {}).items():
            yield from _objects(sub, f"{pointer}/{name}")
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"], f"{pointer}/0")


#: Objects passed through to Kubernetes as they are (the API server checks them), so not closed here.
PASS_THROUGH = {
    "/global",  # Helm's own
    "/operator/tolerations/0",
    "/operator/affinity/nodeAffinity",
    "/operator/affinity/podAffinity",
    "/operator/affinity/podAntiAffinity",
    "/realtimeServices/0/spec",  # the CRD's schema checks it, with its own messages
}
CLOSED = [p for p, s in _objects(SCHEMA) if s.get("additionalProperties") is False]


def test_every_object_of_the_schema_is_closed_or_a_map_or_passed_through() -> None:
    for pointer, schema in _objects(SCHEMA):
        closed_or_map = "additionalProperties" in schema
        assert closed_or_map or pointer in PASS_THROUGH, f"{pointer or '/'} accepts any key"
        assert schema.get("description") or pointer in PASS_THROUGH, f"{pointer or '/'} has no description"
    assert len(CLOSED) >= 12


def _with_typo(pointer: str) -> dict[str, Any]:
    """Values putting a misspelt key `tpyo` in the object at `pointer` (valid otherwise)."""
    if pointer.startswith("/realtimeServices/0"):
        item: dict[str, Any] = {"metadata": {"name": "chat"}, "spec": {}}
        target = item
        for part in pointer.removeprefix("/realtimeServices/0").strip("/").split("/"):
            if part:
                target = target[part]
        target["tpyo"] = 1
        return {"realtimeServices": [item]}
    if pointer == "/imagePullSecrets/0":
        return {"imagePullSecrets": [{"name": "regcred", "tpyo": 1}]}
    values: dict[str, Any] = {}
    target = values
    for part in pointer.strip("/").split("/"):
        if part:
            target = target.setdefault(part, {})
    target["tpyo"] = 1
    return values


@pytest.mark.parametrize("pointer", CLOSED, ids=lambda p: p or "top")
def test_a_misspelt_key_fails_with_its_name_and_place(tmp_path: Path, pointer: str) -> None:
    result = template(values=values_file(tmp_path, _with_typo(pointer)), check=False)
    assert result.returncode != 0
    assert f"at '{pointer}': additional properties 'tpyo' not allowed" in result.stderr, result.stderr


def test_a_wrong_value_fails_with_the_allowed_ones(tmp_path: Path) -> None:
    result = template(values=values_file(tmp_path, {"operator": {"scope": "namespace"}}), check=False)
    assert "at '/operator/scope'" in result.stderr and "'cluster', 'namespaces'" in result.stderr, result.stderr


def test_more_than_one_replica_without_peering_is_refused_with_the_fix() -> None:
    result = template("--set", "operator.replicas=2", check=False)
    assert result.returncode != 0
    assert "operator.replicas above 1 needs peering.enabled: true" in result.stderr


# --- one source: RBAC, CRDs and the operator's pod are the operator's own ---------------------------


def test_the_generated_chart_files_are_up_to_date() -> None:
    generated = {str(p.relative_to(CHART)) for p in [*CHART.glob("files/*/*.yaml"), *CHART.glob("crds/*.yaml")]}
    assert set(deploy.chart_files()) == generated
    assert deploy.main(["--check"]) == 0, "run python -m hubbub_operator.deploy"


def test_cluster_scope_rbac_is_rbac_py_cluster_rules() -> None:
    objects = render()
    assert the(objects, "ClusterRole")["rules"] == rbac.cluster_rules()
    binding = the(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == the(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-hubbub", "namespace": NAMESPACE}]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


def test_namespaces_scope_rbac_is_a_role_per_namespace_and_the_cluster_reads() -> None:
    objects = render(values=CHART / "ci" / "single-namespace-values.yaml")
    roles = [o for o in objects if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["chat", "staging"]
    for role in roles:
        assert role["rules"] == rbac.namespaced_rules(peering="kopfpeerings")
    assert the(objects, "ClusterRole")["rules"] == rbac.cluster_reads()
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["chat", "staging"]
    command = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=chat" in command and "--namespace=staging" in command and "--all-namespaces" not in command


def test_namespaces_scope_defaults_to_the_release_namespace() -> None:
    objects = render("--set", "operator.scope=namespaces")
    assert [r["metadata"]["namespace"] for r in objects if r["kind"] == "Role"] == [NAMESPACE]


def test_the_crd_is_the_operators_and_is_kept_on_uninstall() -> None:
    rendered = the(render(), "CustomResourceDefinition")
    assert rendered["spec"] == crd.crd()["spec"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    not_kept = the(render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in not_kept["metadata"]["annotations"]
    assert not [o for o in render("--set", "crds.install=false") if o["kind"] == "CustomResourceDefinition"]


def test_ha_renders_the_default_peering_and_ships_kopfs_peering_crds() -> None:
    objects = render("--include-crds", values=CHART / "ci" / "ha-values.yaml")
    expected = [c for c in deploy.peering() if c["kind"] == "CustomResourceDefinition"]
    assert [c for c in objects if c["metadata"]["name"].endswith(".kopf.dev")] == expected
    assert "labels" in the(objects, "ClusterKopfPeering", "default")["metadata"]
    deployment = the(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" not in deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    namespaced = render(values=CHART / "ci" / "ha-single-namespace-values.yaml")
    assert the(namespaced, "KopfPeering", "default")["metadata"]["namespace"] == "chat"
    assert not [o for o in namespaced if o["kind"] == "ClusterKopfPeering"]


def test_realtime_services_from_values_are_rendered_as_given_and_kept() -> None:
    values = CHART / "ci" / "realtimeservice-values.yaml"
    given = yaml.safe_load(values.read_text())["realtimeServices"][0]
    rendered = the(render("--api-versions", "hubbub.dev/v1alpha1/RealtimeService", values=values), "RealtimeService")
    assert rendered["spec"] == given["spec"]
    assert rendered["metadata"]["namespace"] == NAMESPACE
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # Not in the release that installs their CRD (the install test shows NOTES.txt then says to upgrade).
    assert not [o for o in render(values=values) if o["kind"] == "RealtimeService"]
    # A release that does not install it (crds.install=false) needs it there before: they are rendered
    # without --api-versions, as `skaffold render` renders skaffold.yaml's release.
    assert the(render("--set", "crds.install=false", values=values), "RealtimeService")["spec"] == given["spec"]


def test_the_operators_pod_is_the_one_deploy_py_ships() -> None:
    """The chart templates the Deployment (values); its security, probes and command are deploy.operator()'s."""
    shipped = next(o for o in deploy.operator() if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    pod = the(render(), "Deployment")["spec"]["template"]["spec"]
    for key in ("enableServiceLinks", "securityContext", "volumes"):
        assert pod[key] == shipped[key], key
    container, expected = pod["containers"][0], shipped["containers"][0]
    for key in ("name", "ports", "livenessProbe", "startupProbe", "resources", "securityContext", "volumeMounts"):
        assert container[key] == expected[key], key
    # The chart adds --standalone when peering is off: never join another kopf operator's peering.
    assert container["command"] == [*expected["command"], "--standalone"]


# --- the helm test Pod -----------------------------------------------------------------------------


def test_the_test_pod_runs_the_round_trip_script_against_the_target() -> None:
    pod = the(render("--set", "tests.target.namespace=realtime"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["namespace"] == "realtime"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c", (CHART / "scripts" / "round-trip.py").read_text()]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["HUBBUB_TEST_URL"] == "http://chat.realtime.svc:80"
    assert env["HUBBUB_JWT_SECRET"] == {"secretKeyRef": {"name": "chat-jwt", "key": "jwt-secret"}}
    assert env["HUBBUB_API_KEY"] == {"secretKeyRef": {"name": "chat-api-key", "key": "api-key"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not [o for o in render("--set", "tests.enabled=false") if o["kind"] == "Pod"]


def round_trip(server: ServerProcess, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "HUBBUB_TEST_URL": server.http_url,
        "HUBBUB_TEST_ROOM": "chat:helm-test",
        "HUBBUB_JWT_SECRET": SECRET,
        "HUBBUB_API_KEY": API_KEY,
        "HUBBUB_TEST_TIMEOUT": "10",
        **env,
    }
    script = (CHART / "scripts" / "round-trip.py").read_text()
    return subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60)


def test_the_round_trip_script_publishes_and_receives_through_a_real_server(server: ServerProcess) -> None:
    result = round_trip(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("helm test: round trip OK: ws://127.0.0.1:"), result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"HUBBUB_API_KEY": "wrong"}, "/api/publish: HTTP 401", id="wrong-api-key"),
        pytest.param({"HUBBUB_JWT_SECRET": "x" * 40}, "WebSocket ws://127.0.0.1:", id="wrong-token-secret"),
        pytest.param({"HUBBUB_TEST_ROOM": "nowhere:x"}, "CommandRejected: 404", id="unknown-room-namespace"),
        pytest.param({"HUBBUB_API_KEY": ""}, "not configured: HUBBUB_API_KEY unset", id="not-configured"),
    ],
)
def test_the_round_trip_script_says_what_failed_without_a_traceback(
    server: ServerProcess, env: dict[str, str], message: str
) -> None:
    result = round_trip(server, **env)
    assert result.returncode == 1
    assert message in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# --- on the control plane ---------------------------------------------------------------------------


@pytest.fixture
async def with_the_crds(k8s: Cluster) -> AsyncIterator[None]:
    """Our CRD and kopf's peering CRDs installed; the peering ones removed again unless they were there."""
    async with crds_installed(k8s):
        yield


@pytest.mark.k8s
@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
async def test_every_rendered_object_passes_the_api_server(
    k8s: Cluster, with_the_crds: None, values: Path | None
) -> None:
    """Server-side applied as a dry run (dryRun=All), the RealtimeServices of values included."""
    for namespace in (NAMESPACE, "chat", "staging"):
        k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    objects = render("--api-versions", "hubbub.dev/v1alpha1/RealtimeService", values=values)
    assert objects
    for obj in objects:
        dry_run(k8s, obj)


@pytest.mark.k8s
async def test_install_upgrade_and_uninstall_keep_the_crd_and_the_users_services(k8s: Cluster) -> None:
    namespace = f"chart-{uuid.uuid4().hex[:8]}"
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
    rts_path = f"/apis/hubbub.dev/v1alpha1/namespaces/{namespace}/realtimeservices"
    deployment_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-hubbub"
    # A cluster without the CRD, as on a first install (other tests install it as they go).
    k8s.api("DELETE", crd_path)
    await until(lambda: k8s.get(crd_path) is None, what="the CRD deleted")
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    values = str(CHART / "ci" / "realtimeservice-values.yaml")
    try:
        # As a user types it: no --wait. The test's target in a namespace of its own, as in the README.
        app = f"{namespace}-app"
        target = ("--set", f"tests.target.namespace={app}")
        notes = k8s.helm("install", RELEASE, str(CHART), "-n", namespace, "-f", values, *target).stdout
        for step in (  # NOTES.txt: what to do next
            f"kubectl -n {namespace} rollout status deployment/{RELEASE}-hubbub",
            f"kubectl create namespace {app}",
            f"kubectl -n {app} create secret generic chat-jwt",
            f"kubectl -n {app} apply -f examples/realtimeservice-minimal.yaml",
            f"$(kubectl -n {app} get secret chat-jwt",
            "hubbub token --sub alice",
            f"kubectl -n {app} port-forward svc/chat 8000:80",
            "http://127.0.0.1:8000/status",
            f"kubectl -n {app} get secret chat-api-key",
            f"helm test {RELEASE} -n {namespace}",
            f"NOT CREATED YET: the RealtimeServices of `realtimeServices` ({namespace}/chat)",
            f"helm upgrade {RELEASE} <this chart> -n {namespace} --reuse-values",
        ):
            assert step in notes, notes
        # Every namespaced kubectl command says where: the reader's context may be in any namespace.
        for line in notes.splitlines():
            for command in re.findall(r"kubectl (?!-n )(.*)", line):
                assert command.startswith(("create namespace ", "get crd ", "get rts -A")), line
        installed = k8s.get(crd_path)
        assert installed is not None and installed["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

        def ready_deployment() -> dict[str, Any] | None:
            found = k8s.get(deployment_path)
            return found if found and found.get("status", {}).get("readyReplicas") == 1 else None

        deployment = await until(ready_deployment, what="the operator's pod Ready (kwok's)")
        assert deployment is not None
        assert k8s.get(f"{rts_path}/chat") is None  # its CRD came with this install
        # A user's own RealtimeService, beside the chart.
        k8s.apply(
            {
                "apiVersion": "hubbub.dev/v1alpha1",
                "kind": "RealtimeService",
                "metadata": {"name": "mine", "namespace": namespace},
                "spec": {"auth": {"jwtSecretRef": {"name": "mine-jwt"}}},
            }
        )

        # The upgrade NOTES.txt asked for, with a changed value.
        upgrade = ("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values")
        notes = k8s.helm(*upgrade, "--set", "operator.resyncSeconds=45").stdout
        assert f"RealtimeServices from values: {namespace}/chat" in notes, notes
        upgraded = k8s.get(deployment_path)
        assert upgraded is not None
        assert "--resync-seconds=45" in upgraded["spec"]["template"]["spec"]["containers"][0]["command"]
        assert upgraded["metadata"]["generation"] > deployment["metadata"]["generation"]
        chat = k8s.get(f"{rts_path}/chat")
        assert chat is not None and chat["spec"]["auth"]["jwtSecretRef"]["name"] == "chat-jwt"

        k8s.helm("uninstall", RELEASE, "-n", namespace, "--wait")
        await until(lambda: k8s.get(deployment_path) is None, what="the operator's Deployment deleted")
        assert k8s.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{RELEASE}-hubbub") is None
        assert k8s.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}-hubbub") is None
        assert k8s.get(crd_path) is not None
        assert k8s.get(f"{rts_path}/mine") is not None
        assert k8s.get(f"{rts_path}/chat") is not None  # keepRealtimeServices
    finally:
        k8s.helm("uninstall", RELEASE, "-n", namespace, check=False)
        k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")
        # Leave the CRD as the other tests install it: without this release's ownership annotations.
        k8s.api("DELETE", crd_path)
        await until(lambda: k8s.get(crd_path) is None, what="the CRD deleted")
        k8s.apply(crd.crd(), manager=MANAGER, force=True)
        await until(lambda: crd_established(k8s, CRD_NAME), what="the CRD back")


@pytest.mark.k8s
async def test_an_ha_install_creates_the_peering_on_the_first_install(k8s: Cluster) -> None:
    """kopf's peering CRDs come from the chart's crds/, before the templates: the peering object needs
    no second step. With the RealtimeService CRD already there (applied by hand, as docs/operator.md
    shows), the release leaves it alone (crds.install=false)."""
    namespace = f"chart-{uuid.uuid4().hex[:8]}"
    peering_path = "/apis/kopf.dev/v1/clusterkopfpeerings/default"
    kopf_crds = [f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}" for n in KOPF_CRDS]
    there_before = [path for path in kopf_crds if k8s.get(path) is not None]
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    values = str(CHART / "ci" / "ha-values.yaml")
    try:
        k8s.helm("install", RELEASE, str(CHART), "-n", namespace, "-f", values, "--set", "crds.install=false")
        peering = k8s.get(peering_path)
        assert peering is not None and peering["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        deployment = k8s.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-hubbub")
        assert deployment is not None and deployment["spec"]["replicas"] == 2
        k8s.helm("uninstall", RELEASE, "-n", namespace, "--wait")
        await until(lambda: k8s.get(peering_path) is None, what="the peering object deleted")
        assert all(k8s.get(path) is not None for path in kopf_crds)  # crds/: never deleted
        assert k8s.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}") is not None
    finally:
        k8s.helm("uninstall", RELEASE, "-n", namespace, check=False)
        k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")
        # As the other tests expect the cluster: no peering CRDs unless they were there.
        for path in kopf_crds:
            if path not in there_before:
                k8s.api("DELETE", path)
        await until(lambda: all(k8s.get(p) is None for p in kopf_crds if p not in there_before), what="cleanup")


@pytest.mark.k8s
@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
async def test_the_operator_with_only_the_charts_service_account_runs_a_realtime_service(
    k8s: Cluster, tmp_path: Path, scope: str
) -> None:
    """The chart's CRD, ServiceAccount and RBAC (rendered, applied as they are), and the operator as a
    process with the chart Deployment's command and that ServiceAccount's token: a RealtimeService in
    another namespace turns Ready, and the operator was never refused anything. (The real tier,
    tests/kubernetes/test_chart_real.py, runs the same as a pod of the image.)"""
    suffix = uuid.uuid4().hex[:8]
    release, operator_ns, app_ns = "sa", f"sa-{suffix}", f"app-{suffix}"
    values = ["--set", f"operator.scope={scope}"]
    if scope == "namespaces":
        values += ["--set", f"operator.namespaces={{{app_ns}}}"]
    rendered = helm(
        "template", release, str(CHART), "-n", operator_ns, "--kube-version", KUBE_VERSION, "--skip-tests", *values
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    deployment = the(objects, "Deployment")
    cluster_wide = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for namespace in (operator_ns, app_ns):
        k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        for obj in objects:
            if obj["kind"] == "CustomResourceDefinition":
                # As the other tests apply it (its spec is crd.crd()'s: test_the_crd_is_the_operators...).
                k8s.apply(obj, manager=MANAGER, force=True)
            elif obj["kind"] != "Deployment":
                k8s.apply(obj, manager="hubbub-tests", force=True)
        await until(lambda: crd_established(k8s, CRD_NAME), what="the CRD Established")
        container = deployment["spec"]["template"]["spec"]
        account = container["serviceAccountName"]
        command = container["containers"][0]["command"]
        assert command[:3] == ["python", "-m", "hubbub_operator"], command
        # Its own health endpoint on a free port of this machine (running_operator's), not the pod's 8080.
        args = [arg for arg in command[3:] if not arg.startswith("--liveness=")]
        assert ("--all-namespaces" in args) == (scope == "cluster") and "--standalone" in args, args
        kubeconfig = k8s.service_account_kubeconfig(operator_ns, account)
        with running_operator(args, kubeconfig, tmp_path) as operator:
            secret(k8s, app_ns, "chat-jwt", {"jwt-secret": JWT_SECRET})
            k8s.apply(example("minimal", app_ns), manager="hubbub-tests")
            await until(functools.partial(ready, k8s, app_ns), timeout=DEADLINE, what=f"Ready=True in {app_ns}")
            for child in ("deployments/chat", "statefulsets/chat-redis"):
                assert k8s.get(f"/apis/apps/v1/namespaces/{app_ns}/{child}") is not None, child
            log = operator.log()
            # A missing rule shows as a 403 kopf logs and retries, not always as a resource that never turns Ready.
            # The API server's 403 says "... is forbidden: User ... cannot ..."; a bare "403" would also match
            # a log line's milliseconds (CI caught "08:24:01,403").
            assert not re.search(r"forbidden|(code|status)\W+403\b", log, re.IGNORECASE), log[-5000:]
            assert "Traceback" not in log, log[-5000:]
    finally:
        for namespace in (app_ns, operator_ns):
            k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")
        for obj in cluster_wide:
            k8s.api("DELETE", resource_path(obj))


# --- the README's "Install on Kubernetes" -----------------------------------------------------------


def commands(text: str) -> list[str]:
    """The commands of a shell block as a reader runs them: continuation lines joined, comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if line and not line.startswith("#"):
            found.append(line)
    return found


def test_the_readme_install_steps_are_the_ones_the_real_tier_runs() -> None:
    """tests/kubernetes/test_chart_real.py runs STEPS on a real node: they must be the README's, in its order,
    and so must be what its wscat session types."""
    section = document("README.md").section("Install on Kubernetes")
    shell = [b for b in section if b.lang == "sh"]
    assert commands(shell[0].text) == ["scripts/cluster --real-node"], shell[0].text
    assert [c for b in shell[1:] for c in commands(b.text)] == list(STEPS)
    assert all(b.directive is not None and b.directive.kind == "skip" for b in shell)
    session = next(i for i, b in enumerate(section) if "wscat -c" in b.text)
    typed = [line[2:] for line in section[session + 1].text.splitlines() if line.startswith("> ")]
    assert section[session + 1].lang == "text" and typed == list(TYPED)
