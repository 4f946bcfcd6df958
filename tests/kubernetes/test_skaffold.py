"""skaffold.yaml, through skaffold itself (built by scripts/build-k8s): the configuration is current and
valid; `skaffold render` (offline, with a given tag, as `skaffold dev` renders after a build) is the
chart with the image substituted into the operator's Deployment and into the RealtimeService, whose
pods the operator then runs from it (hubbub_operator.plan); the profile `dev` runs one pod on the managed
Redis; the port-forward reaches the Service the operator makes. Marked `k8s`: the rendered manifests
pass the API server's dry run with the ecosystem's CRDs installed, and `skaffold deploy` of a given image
runs the before-deploy hook and installs the release, RealtimeService included, on the first deploy.

The custom build script, scripts/skaffold-build-image, is checked for its contract with skaffold
(IMAGE, PUSH_IMAGE) with stand-ins for scripts/build-image, docker and buildah, because its real
destinations need a Docker Engine or a registry and there is neither here (docs/development.md,
"Skaffold"); the `slow` test runs the real scripts/build-image and checks the tarball it hands to
`docker load`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub_operator import CRD_NAME
from hubbub_operator.plan import Plan, plan
from tests.support.chart import CRD_PATH, crds_installed, dry_run
from tests.support.cluster import Cluster, default_bin_dir
from tests.support.image_archive import archive_tags
from tests.support.polling import until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hubbub"
CONFIG = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
RELEASE = "hubbub"
TAG = "skaffold-test"
PROFILES = [None, "dev"]
VALUES = {None: ["skaffold-values.yaml"], "dev": ["skaffold-values.yaml", "skaffold-dev-values.yaml"]}
RTS = "/apis/hubbub.dev/v1alpha1/namespaces/{namespace}/realtimeservices/chat"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """skaffold's HOME: it writes ~/.skaffold (a config, a cache), which stays out of the real one; with no
    `collect-metrics` in that config it records no usage data."""
    return tmp_path_factory.mktemp("skaffold-home")


def skaffold(
    home: Path, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    bin_dir = default_bin_dir()
    if not (bin_dir / "skaffold").is_file():
        pytest.skip(f"no skaffold in {bin_dir}: run scripts/build-k8s")
    env = {
        **os.environ,
        # skaffold runs helm and kubectl from PATH: the project's.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        # No prompt, and no update check (it would fetch skaffold's latest version number).
        "SKAFFOLD_INTERACTIVE": "false",
        "SKAFFOLD_UPDATE_CHECK": "false",
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(bin_dir / "skaffold"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"skaffold {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def profile_args(profile: str | None) -> list[str]:
    return ["--profile", profile] if profile else []


def render(home: Path, profile: str | None, namespace: str = "default") -> list[dict[str, Any]]:
    """`skaffold render` without a cluster (--offline) or a build (--digest-source=tag: the image is
    the artifact's name with --tag, as after `skaffold build --tag`)."""
    args = ["render", "--offline=true", "--digest-source=tag", "--tag", TAG, "--namespace", namespace]
    out = skaffold(home, *args, *profile_args(profile)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def operator_plan(rts: dict[str, Any]) -> Plan:
    """What the operator makes of the RealtimeService (its secrets given, as the runtime generates them)."""
    planned = plan(rts, redis_password="r" * 24, api_key="k" * 24)
    assert not planned.problems, planned.problems
    return planned


def child(planned: Plan, kind: str, name: str) -> dict[str, Any]:
    found = [c for c in planned.children if c["kind"] == kind and c["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {[(c['kind'], c['metadata']['name']) for c in planned.children]}"
    return found[0]


# --- the configuration ------------------------------------------------------------------------------


def test_the_configuration_is_at_the_newest_schema_skaffold_knows(home: Path) -> None:
    newest = skaffold(home, "schema", "list").stdout.split()[-1]
    assert CONFIG["apiVersion"] == newest == "skaffold/v4beta14"
    assert skaffold(home, "fix").stdout == "config is already version skaffold/v4beta14\n"


@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_skaffold_reads_and_validates_the_configuration(home: Path, profile: str | None) -> None:
    resolved = yaml.safe_load(skaffold(home, "diagnose", "--yaml-only", *profile_args(profile)).stdout)
    release = resolved["deploy"]["helm"]["releases"][0]
    assert [Path(v).relative_to(CHART).as_posix() for v in release["valuesFiles"]] == VALUES[profile]
    assert resolved["build"]["artifacts"][0]["custom"]["buildCommand"] == "scripts/skaffold-build-image"


def test_a_misspelt_key_is_refused_with_its_name(home: Path, tmp_path: Path) -> None:
    """skaffold parses strictly, into the types its JSON schema is generated from: what the tests above pass."""
    broken = (ROOT / "skaffold.yaml").read_text().replace("setValueTemplates:", "setValueTemplate:")
    path = tmp_path / "skaffold.yaml"
    path.write_text(broken)
    result = skaffold(home, "diagnose", "--yaml-only", "--filename", str(path), check=False)
    assert result.returncode != 0
    assert "field setValueTemplate not found in type latest.HelmRelease" in result.stderr


# --- what it renders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_render_is_the_chart_with_the_built_image(home: Path, profile: str | None) -> None:
    """Exactly `helm template` of the chart with skaffold's values and the image set in both places."""
    rendered = render(home, profile)
    helm = [str(default_bin_dir() / "helm"), "template", RELEASE, str(CHART), "--namespace", "default", "--skip-tests"]
    for values in VALUES[profile]:
        helm += ["--values", str(CHART / values)]
    for key in ("image", "realtimeServices[0].spec.image"):
        helm += ["--set", f"{key}.repository=hubbub,{key}.tag={TAG}"]
    expected = [doc for doc in yaml.safe_load_all(subprocess.check_output(helm, text=True, timeout=60)) if doc]
    assert sorted(rendered, key=repr) == sorted(expected, key=repr)
    kinds = sorted(o["kind"] for o in rendered)
    # The CRD is not the release's (scripts/skaffold-prepare-cluster applies it): no CRD, one RealtimeService.
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "RealtimeService", "ServiceAccount"]


@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_the_operator_and_the_realtime_service_pods_run_the_built_image(home: Path, profile: str | None) -> None:
    rendered = render(home, profile)
    operator_pod = the(rendered, "Deployment")["spec"]["template"]["spec"]
    assert [c["image"] for c in operator_pod["containers"]] == [f"hubbub:{TAG}"]
    rts = the(rendered, "RealtimeService")
    assert rts["spec"]["image"] == {"repository": "hubbub", "tag": TAG}
    # The pods the operator runs for it.
    service_pod = child(operator_plan(rts), "Deployment", "chat")["spec"]["template"]["spec"]
    assert [c["image"] for c in service_pod["containers"]] == [f"hubbub:{TAG}"]
    assert "ghcr.io" not in yaml.safe_dump_all(rendered)


def test_the_dev_profile_runs_one_pod_on_the_managed_redis(home: Path) -> None:
    default_rts = the(render(home, None), "RealtimeService")
    dev_rts = the(render(home, "dev"), "RealtimeService")
    assert dev_rts["spec"]["redis"] == {"mode": "managed"}
    assert dev_rts["spec"]["replicas"] == {"min": 1, "max": 1}
    default, dev = operator_plan(default_rts), operator_plan(dev_rts)
    assert dev.autoscaler == "none"
    assert child(dev, "Deployment", "chat")["spec"]["replicas"] == 1
    assert [c["kind"] for c in dev.children if c["kind"] == "StatefulSet"] == ["StatefulSet"]  # the managed Redis
    # Without the profile: the RealtimeService's defaults, two to ten pods autoscaled.
    assert default.autoscaler == "hpa" and default.initial_replicas == 2
    assert {k: v for k, v in dev_rts["spec"].items() if k not in ("replicas", "autoscaling", "redis")} == default_rts[
        "spec"
    ]


def test_the_port_forward_reaches_the_service_the_operator_makes(home: Path) -> None:
    [forward] = CONFIG["portForward"]
    service = child(operator_plan(the(render(home, None), "RealtimeService")), "Service", forward["resourceName"])
    assert forward["resourceType"] == "service"
    assert forward["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert forward["localPort"] == 8000  # scripts/serve's port: the docs' URLs work unchanged


# --- on the control plane ---------------------------------------------------------------------------


def namespace_for(k8s: Cluster, prefix: str) -> str:
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return namespace


@pytest.mark.k8s
@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_the_rendered_manifests_pass_the_api_server(k8s: Cluster, home: Path, profile: str | None) -> None:
    """Server-side applied as a dry run, with our CRD and the ecosystem's installed (scripts/fetch-crds)."""
    async with crds_installed(k8s, ecosystem=True):
        namespace = namespace_for(k8s, "skaffold-render")
        try:
            objects = render(home, profile, namespace)
            assert the(objects, "RealtimeService")["metadata"]["namespace"] == namespace
            for obj in objects:
                dry_run(k8s, obj)
        finally:
            k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")


@pytest.mark.k8s
async def test_skaffold_deploy_installs_the_release_and_its_realtime_service_on_the_first_deploy(
    k8s: Cluster, home: Path
) -> None:
    """`skaffold deploy --images` (an image built before): what `skaffold dev` does after its build. The
    before-deploy hook applies the CRD and makes the Secret once; `skaffold delete` takes the release down."""
    namespace = namespace_for(k8s, "skaffold-deploy")
    rts_path = RTS.format(namespace=namespace)
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/chat-jwt"
    deployment_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}"
    # As on a new cluster: no RealtimeService CRD (other tests install it as they go).
    k8s.api("DELETE", f"{CRD_PATH}/{CRD_NAME}")
    await until(lambda: k8s.get(f"{CRD_PATH}/{CRD_NAME}") is None, what="the CRD deleted")
    deploy = ("deploy", "--namespace", namespace, "--port-forward=off")
    try:
        first = skaffold(home, *deploy, "--images", f"hubbub=hubbub:{TAG}", kubeconfig=k8s.kubeconfig)
        assert f"secret {namespace}/chat-jwt: created" in first.stderr + first.stdout
        rts = k8s.get(rts_path)
        assert rts is not None and rts["spec"]["image"]["repository"] == "hubbub" and rts["spec"]["image"]["tag"] == TAG
        deployment = k8s.get(deployment_path)
        assert deployment is not None
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"hubbub:{TAG}"
        secret = k8s.get(secret_path)
        assert secret is not None and len(base64.b64decode(base64.b64decode(secret["data"]["jwt-secret"]))) == 32

        # The next deploy of the loop, with the dev profile and a new image: the Secret stays as it is.
        second = skaffold(
            home, *deploy, "--profile", "dev", "--images", "hubbub=hubbub:next", kubeconfig=k8s.kubeconfig
        )
        assert f"secret {namespace}/chat-jwt: there already, left as it is" in second.stderr + second.stdout
        again = k8s.get(secret_path)
        assert again is not None and again["data"] == secret["data"]
        rts = k8s.get(rts_path)
        assert (
            rts is not None
            and rts["spec"]["image"]["tag"] == "next"
            and rts["spec"]["replicas"] == {"min": 1, "max": 1}
        )

        skaffold(home, "delete", "--namespace", namespace, kubeconfig=k8s.kubeconfig)
        await until(lambda: k8s.get(deployment_path) is None, what="the operator's Deployment deleted")
        await until(lambda: k8s.get(rts_path) is None, what="the RealtimeService deleted with the release")
    finally:
        skaffold(home, "delete", "--namespace", namespace, kubeconfig=k8s.kubeconfig, check=False)
        k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")


# --- the custom build script ------------------------------------------------------------------------

BUILD_IMAGE_STUB = """#!/bin/sh
echo "build-image $*" >>"$STUB_LOG"
[ -z "${STUB_BUILD_FAILS:-}" ] || { echo "build-image: buildah bud failed" >&2; exit 1; }
echo "build-image: cached" >&2
echo "$STUB_IMAGES/redis-1111.tar"
echo "$STUB_IMAGES/hubbub-2222.tar"
echo "$STUB_IMAGES/pause-3333.tar"
"""
#: The names scripts/build-image gives the image in its tarball.
ARCHIVE_TAGS = ["docker.io/library/hubbub:dev", "localhost/hubbub:2222"]
#: docker and buildah: record the call; `docker version` fails unless STUB_DOCKER_UP; `buildah pull` prints an id.
TOOL_STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$STUB_LOG"
for arg; do
    case "$(basename "$0") $arg" in
    "docker version") [ -n "${STUB_DOCKER_UP:-}" ]; exit ;;
    "buildah pull") echo 0123abcd; exit 0 ;;
    esac
done
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def build_script(tmp_path: Path) -> Iterator[Path]:
    """A copy of scripts/skaffold-build-image beside a stand-in scripts/build-image, with docker and buildah
    stand-ins first on PATH; every call they get is in STUB_LOG."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    script = tmp_path / "repo" / "scripts" / "skaffold-build-image"
    shutil.copy2(ROOT / "scripts" / "skaffold-build-image", script)
    _executable(tmp_path / "repo" / "scripts" / "build-image", BUILD_IMAGE_STUB)
    (tmp_path / "bin").mkdir()
    for tool in ("docker", "buildah"):
        _executable(tmp_path / "bin" / tool, TOOL_STUB)
    # A tarball as scripts/build-image writes it, but for the layers: only its manifest is read.
    (tmp_path / "images").mkdir()
    with tarfile.open(tmp_path / "images" / "hubbub-2222.tar", "w") as tar:
        manifest = json.dumps([{"Config": "c.json", "RepoTags": ARCHIVE_TAGS, "Layers": []}]).encode()
        member = tarfile.TarInfo("manifest.json")
        member.size = len(manifest)
        tar.addfile(member, io.BytesIO(manifest))
    yield script


def run_build(script: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = script.parent.parent.parent / "calls.log"
    environment = {
        "PATH": f"{script.parent.parent.parent / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": str(script.parent.parent.parent / "home"),
        "STUB_LOG": str(log),
        "STUB_IMAGES": str(script.parent.parent.parent / "images"),
        **env,
    }
    result = subprocess.run([str(script)], env=environment, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_the_build_script_loads_the_image_into_the_docker_engine_as_image(build_script: Path) -> None:
    """build.local.push false: skaffold then reads the image id of $IMAGE from the local Docker Engine."""
    result, calls = run_build(build_script, IMAGE="hubbub:0a1b2c", PUSH_IMAGE="false", STUB_DOCKER_UP="1")
    assert result.returncode == 0, result.stderr
    archive = build_script.parent.parent.parent / "images" / "hubbub-2222.tar"
    assert calls == [
        "docker version --format {{.Server.Version}}",
        "build-image ",
        f"docker load --quiet --input {archive}",
        "docker tag docker.io/library/hubbub:dev hubbub:0a1b2c",
        "docker image rm docker.io/library/hubbub:dev",
        "docker image rm localhost/hubbub:2222",
    ]
    assert "loaded hubbub:0a1b2c into the Docker Engine" in result.stderr


def test_the_build_script_pushes_the_image_to_images_registry(build_script: Path) -> None:
    """--push (or a remote cluster): buildah pushes it from scripts/build-image's storage, no Docker."""
    image = "registry.example:5000/team/hubbub:0a1b2c"
    result, calls = run_build(build_script, IMAGE=image, PUSH_IMAGE="true")
    assert result.returncode == 0, result.stderr
    archive = build_script.parent.parent.parent / "images" / "hubbub-2222.tar"
    cache = build_script.parent.parent.parent / "home" / ".cache" / "hubbub" / "buildah"
    storage = f"--root {cache}/storage --runroot {cache}/run"
    assert calls == [
        "build-image ",
        f"buildah {storage} --storage-driver overlay pull --quiet docker-archive:{archive}",
        f"buildah {storage} --storage-driver overlay push --quiet 0123abcd docker://{image}",
        f"buildah {storage} --storage-driver overlay rmi 0123abcd",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"PUSH_IMAGE": "false"}, "IMAGE is not set: skaffold sets it", id="no-image"),
        pytest.param({"IMAGE": "hubbub:x", "PUSH_IMAGE": "yes"}, "PUSH_IMAGE is 'yes': true", id="bad-push"),
        pytest.param({"IMAGE": "hubbub:x", "PUSH_IMAGE": "false"}, "no Docker Engine answers", id="no-engine"),
    ],
)
def test_the_build_script_refuses_before_building(build_script: Path, env: dict[str, str], message: str) -> None:
    result, calls = run_build(build_script, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert not [c for c in calls if c.startswith("build-image")]


def test_a_failed_build_hands_nothing_over(build_script: Path) -> None:
    result, calls = run_build(
        build_script, IMAGE="hubbub:x", PUSH_IMAGE="false", STUB_DOCKER_UP="1", STUB_BUILD_FAILS="1"
    )
    assert result.returncode != 0
    assert "buildah bud failed" in result.stderr
    assert not [c for c in calls if c.startswith("docker load")]


def test_here_without_a_docker_engine_a_local_build_says_so_at_once() -> None:
    """The script as it is, with the real docker CLI and no engine behind DOCKER_HOST: the message names
    the way out (a registry) before any build."""
    env = {**os.environ, "IMAGE": "hubbub:x", "PUSH_IMAGE": "false", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    if shutil.which("docker", path=env["PATH"]) is None:
        env["PATH"] = f"/nonexistent{os.pathsep}{env['PATH']}"  # no docker CLI at all: the same answer
    result = subprocess.run(
        [str(ROOT / "scripts" / "skaffold-build-image")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "no Docker Engine answers (docker version: unix:///nonexistent/docker.sock)" in result.stderr
    assert "--default-repo <registry> --push" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("build-image:")]


@pytest.mark.slow
def test_the_build_script_hands_docker_the_image_scripts_build_image_built(tmp_path: Path) -> None:
    """The real scripts/build-image (cached, or built now: root), a docker stand-in: `docker load` gets the
    tarball of this checkout's image, tagged as the script then renames it."""
    if os.geteuid() != 0:
        pytest.skip("scripts/build-image needs root")
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / "docker", TOOL_STUB)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_DOCKER_UP": "1",
        "IMAGE": f"hubbub:{TAG}",
        "PUSH_IMAGE": "false",
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "skaffold-build-image")], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True, text=True, timeout=900)
    archive = Path(built.stdout.split()[-2])
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert f"docker load --quiet --input {archive}" in calls
    tags = archive_tags(archive)
    assert "docker.io/library/hubbub:dev" in tags
    assert f"docker tag {tags[0]} hubbub:{TAG}" in calls
    assert [c for c in calls if c.startswith("docker image rm")] == [f"docker image rm {tag}" for tag in tags]
