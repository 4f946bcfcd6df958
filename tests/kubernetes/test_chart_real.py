"""The chart on real pods, as the README's "Install on Kubernetes" tells a newcomer to install it.

On a real node (tests/support/realnode.py: the control plane, a real kubelet, containerd, kube-proxy
and CoreDNS in a network namespace of the test's own; no kwok node, so every pod runs for real, as
with `scripts/cluster --real-node`), the README's commands run as written, one by one, with bash in
the checkout, with the two exports `scripts/cluster` prints (KUBECONFIG, PATH) and those the earlier
commands made (HUBBUB_JWT_SECRET, TOKEN, API_KEY). Only the local port of `kubectl port-forward`
differs (8000 may be taken on a shared machine: kubectl picks a free one, and the commands that
name 127.0.0.1:8000 get that one). tests/kubernetes/test_chart.py checks that the README says exactly STEPS.

1. `helm install ... --wait` with the local image: the operator is a real pod of hubbub:dev, as the
   chart's ServiceAccount (its token mounted by the kubelet), reaching the API through the
   `kubernetes` Service;
2. the namespace, the token key's Secret, examples/realtimeservice-minimal.yaml with the local
   images set before the first apply → Ready, two hubbub pods and the managed Redis running;
3. a token from `hubbub token`, `kubectl port-forward svc/chat`, wscat joins `chat:lobby`, the
   README's curl publishes through the HTTP API and wscat receives it; the status page answers;
4. `helm upgrade` with a changed value replaces the operator's pod, and the new one reconciles a
   spec change (observedGeneration follows);
5. `helm test` passes (its Pod round-trips a publication through `chat`);
6. `helm uninstall` removes the operator, its ServiceAccount and RBAC, and keeps the CRD and the
   RealtimeService, which still serves.

`pytest -s` prints the figures (install, example to Ready, upgrade, helm test, total).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.test_operator_real import condition, is_ready
from tests.kubernetes.test_real_node import leftovers, why_not_here
from tests.project.test_docs import Lines, messages
from tests.support.docrunner import stop_group
from tests.support.polling import wait_until
from tests.support.realnode import RealNode

pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "hubbub"
OPERATOR_NAMESPACE = "hubbub-system"
NAMESPACE = "chat"
NAME = "chat"
API = "/apis/hubbub.dev/v1alpha1"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/realtimeservices.hubbub.dev"
RTS_PATH = f"{API}/namespaces/{NAMESPACE}/realtimeservices/{NAME}"
#: Generous bounds for a loaded 2-core machine running a control plane, a kubelet and four pods.
DEADLINE = 180.0

# -- the README's commands, in its order -------------------------------------------------------------

INSTALL = (
    "helm install hubbub charts/hubbub -n hubbub-system --create-namespace --set tests.target.namespace=chat"
    " --wait --set image.repository=hubbub,image.tag=dev,image.pullPolicy=Never"
)
CREATE_NAMESPACE = "kubectl create namespace chat"
CREATE_SECRET = "kubectl -n chat create secret generic chat-jwt --from-literal=jwt-secret=$(openssl rand -base64 32)"
#: The local images set before the first apply: set after it, the managed Redis's StatefulSet kept
#: its first pod in ImagePullBackOff (a StatefulSet does not replace a pod that never got Ready).
APPLY_EXAMPLE = (
    "kubectl patch --local -f examples/realtimeservice-minimal.yaml --type merge -o yaml"
    """ -p '{"spec":{"image":{"repository":"hubbub","tag":"dev","pullPolicy":"Never"},"""
    """"redis":{"managed":{"image":"hubbub-redis:dev"}}}}'"""
    " | kubectl -n chat apply -f -"
)
WAIT_READY = "kubectl -n chat wait rts/chat --for=condition=Ready --timeout=180s"
EXPORT_SECRET = (
    "export HUBBUB_JWT_SECRET=$(kubectl -n chat get secret chat-jwt -o jsonpath='{.data.jwt-secret}' | base64 -d)"
)
EXPORT_TOKEN = "export TOKEN=$(.venv/bin/hubbub token --sub alice --rooms 'chat:*')"
PORT_FORWARD = "kubectl -n chat port-forward svc/chat 8000:80 &"
WSCAT = 'node_modules/.bin/wscat -c ws://127.0.0.1:8000/ws -H "Authorization: Bearer $TOKEN"'
EXPORT_API_KEY = "export API_KEY=$(kubectl -n chat get secret chat-api-key -o jsonpath='{.data.api-key}' | base64 -d)"
PUBLISH = (
    'curl -sS --fail-with-body -X POST http://127.0.0.1:8000/api/publish -H "Authorization: Bearer $API_KEY"'
    """ -d '{"room":"chat:lobby","data":{"text":"hello from the cluster"}}'"""
)
#: The minimal example has no `spec.monitoring`: the dashboards' ConfigMap comes with its section.
DASHBOARDS_ON = """kubectl -n chat patch rts chat --type merge -p '{"spec":{"monitoring":{"dashboards":{}}}}'"""
DASHBOARDS = "kubectl -n chat get configmap chat-dashboards"
UPGRADE = "helm upgrade hubbub charts/hubbub -n hubbub-system --reuse-values --set operator.resyncSeconds=45 --wait"
HELM_TEST = "helm test hubbub -n hubbub-system"
UNINSTALL = "helm uninstall hubbub -n hubbub-system"

#: Every command of the README's section after `scripts/cluster --real-node`, in its order.
STEPS = (
    INSTALL,
    CREATE_NAMESPACE,
    CREATE_SECRET,
    APPLY_EXAMPLE,
    WAIT_READY,
    EXPORT_SECRET,
    EXPORT_TOKEN,
    PORT_FORWARD,
    WSCAT,
    EXPORT_API_KEY,
    PUBLISH,
    DASHBOARDS_ON,
    DASHBOARDS,
    UPGRADE,
    HELM_TEST,
    UNINSTALL,
)
#: What the README says to type into wscat.
TYPED = ('{"id":1,"op":"connect"}', '{"id":2,"op":"join","room":"chat:lobby"}')
ROOM = "chat:lobby"


class Reader:
    """The reader's second terminal: bash in the checkout, with the exports `scripts/cluster` printed
    and those of earlier commands. Helm keeps its files in the test's directory, not in ~."""

    def __init__(self, node: RealNode, home: Path) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(node.cluster.kubeconfig),
            "PATH": f"{node.cluster.bin_dir}:{os.environ['PATH']}",
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, command: str, *, timeout: float = 240) -> str:
        """Run one command as written; an `export NAME=...` keeps NAME for the next ones."""
        exported = re.match(r"export (\w+)=", command)
        script = f"set -euo pipefail\n{command}\n"
        if exported:
            # `export X=$(cmd)` hides a failing cmd: the value must not come out empty.
            script += f'test -n "${exported[1]}"\nprintf %s "${exported[1]}"\n'
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{command}\nexited with {done.returncode}:\n{done.stdout}{done.stderr}"
        if exported:
            self.env[exported[1]] = done.stdout
        return done.stdout

    def start(self, command: str) -> subprocess.Popen[bytes]:
        """A command that runs until stopped (its own process group), its output line by line."""
        return subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,  # held open: wscat quits when its input ends
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[Lines]:
    lines = Lines(proc)
    try:
        yield lines
    finally:
        stop_group(proc, signal.SIGTERM)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        lines.join()
        proc.stdout.close()


def on_port(command: str, port: int) -> str:
    return command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def round_trip(reader: Reader) -> dict[str, Any]:
    """Port-forward, wscat joins the room, the README's curl publishes: the push wscat got."""
    forward = PORT_FORWARD.removesuffix(" &").replace("8000:80", ":80")
    with running(reader.start(forward)) as forwarded:
        forwarded.wait_for(lambda lines: any("Forwarding from 127.0.0.1:" in line for line in lines), timeout=60)
        port = int(next(m[1] for line in forwarded.lines if (m := re.search(r"127\.0\.0\.1:(\d+)", line))))
        typed = "".join(f" -x {shlex.quote(line)}" for line in TYPED)
        with running(reader.start(on_port(WSCAT, port) + " -w -1" + typed)) as wscat:
            wscat.wait_for(lambda lines: {1, 2} <= {m.get("id") for m in messages(lines)}, timeout=60)
            replies = {m["id"]: m for m in messages(wscat.lines) if "id" in m}
            assert replies[1]["ok"]["user"] == "alice", wscat.lines
            assert "ok" in replies[2], wscat.lines
            sent = json.loads(reader.run(on_port(PUBLISH, port)).strip().splitlines()[-1])

            def pushed() -> list[dict[str, Any]]:
                return [m for m in messages(wscat.lines) if m.get("push") == "pub" and m["room"] == ROOM]

            wscat.wait_for(lambda _: bool(pushed()), timeout=60)
            push = pushed()[0]
            assert push["offset"] == sent["offset"] and push["data"] == {"text": "hello from the cluster"}, push
            status = subprocess.run(
                ["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/status"], capture_output=True, text=True
            )
            assert status.returncode == 0 and "<html" in status.stdout.lower(), status.stderr
            return push


def operator_pods(node: RealNode) -> list[dict[str, Any]]:
    found = node.cluster.api(
        "GET",
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods",
        params={"labelSelector": f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"},
    )
    items: list[dict[str, Any]] = found.json().get("items", [])
    return items


def server_pods(node: RealNode) -> list[dict[str, Any]]:
    found = node.cluster.api(
        "GET",
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        params={"labelSelector": f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=server"},
    )
    items: list[dict[str, Any]] = found.json().get("items", [])
    return items


def rts(node: RealNode) -> dict[str, Any]:
    return node.cluster.get(RTS_PATH) or {}


def serving(node: RealNode, replicas: int) -> bool:
    """Ready, reconciled at its generation, `replicas` server pods Ready and no other left."""
    found = rts(node)
    pods = server_pods(node)
    return (
        condition(found, "Ready") == "True"
        and found.get("status", {}).get("observedGeneration") == found["metadata"]["generation"]
        and len(pods) == replicas
        and all(is_ready(p) for p in pods)
    )


def test_the_readme_installs_the_chart_on_real_pods_upgrades_tests_and_uninstalls_it(tmp_path: Path) -> None:
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    figures: dict[str, float] = {}
    started = time.monotonic()
    node = RealNode(tmp_path / "real")
    try:
        node.start()
        figures["real node up"] = round(time.monotonic() - started, 1)
        reader = Reader(node, tmp_path / "helm")
        cluster = node.cluster

        # 1. The operator: a real pod of the local image, as the chart's ServiceAccount.
        began = time.monotonic()
        notes = reader.run(INSTALL)
        figures["helm install --wait"] = round(time.monotonic() - began, 1)
        # What to do next (NOTES.txt) names the target's namespace in each step, as the README does.
        for step in (
            "kubectl -n chat apply -f",
            "kubectl -n chat port-forward svc/chat",
            "helm test hubbub -n hubbub-system",
        ):
            assert step in notes, notes
        (pod,) = [p for p in operator_pods(node) if is_ready(p)]
        assert pod["spec"]["nodeName"] == node.name
        assert pod["spec"]["serviceAccountName"] == RELEASE
        container = pod["spec"]["containers"][0]
        assert (container["image"], container["imagePullPolicy"]) == ("hubbub:dev", "Never"), container
        # kopf found the token the kubelet mounted, and its first calls went to the `kubernetes`
        # Service (no KUBECONFIG in the pod): an operator that never reached the API is not Ready.
        log = cluster.kubectl("-n", OPERATOR_NAMESPACE, "logs", pod["metadata"]["name"])
        assert "login_with_service_account' succeeded" in log, log[-3000:]

        # 2. The example, with the local images set before its first apply → Ready.
        reader.run(CREATE_NAMESPACE)
        reader.run(CREATE_SECRET)
        began = time.monotonic()
        reader.run(APPLY_EXAMPLE)
        reader.run(WAIT_READY)
        figures["example applied to Ready"] = round(time.monotonic() - began, 1)
        wait_until(lambda: serving(node, 2), timeout=DEADLINE, interval=0.5, what="2 hubbub pods Ready")
        figures["example applied to 2 pods Ready"] = round(time.monotonic() - began, 1)
        assert condition(rts(node), "RedisReady") == "True", rts(node)["status"]
        assert all(p["spec"]["nodeName"] == node.name for p in server_pods(node))

        # 3. A token, a WebSocket client through port-forward, a publication through the HTTP API.
        reader.run(EXPORT_SECRET)
        reader.run(EXPORT_TOKEN)
        reader.run(EXPORT_API_KEY)
        began = time.monotonic()
        round_trip(reader)
        figures["port-forward, wscat and curl round trip"] = round(time.monotonic() - began, 1)
        # The dashboards: Grafana's sidecar would load the ConfigMap (no Grafana runs here).
        reader.run(DASHBOARDS_ON)
        assert "chat-dashboards" in wait_until(lambda: reader.run(DASHBOARDS), timeout=DEADLINE, what="the dashboards")
        dashboards = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}-dashboards") or {}
        assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
        # One file per dashboard, named with a tag of this instance's copy (monitoring.py).
        assert sorted(key.split("-")[1] for key in dashboards["data"]) == ["node", "overview"], list(dashboards["data"])

        # 4. A changed value rolls the operator; the new pod reconciles a spec change.
        before = {p["metadata"]["name"] for p in operator_pods(node)}
        began = time.monotonic()
        reader.run(UPGRADE)
        figures["helm upgrade --wait"] = round(time.monotonic() - began, 1)

        def replaced() -> dict[str, Any]:
            pods = operator_pods(node)
            assert len(pods) == 1 and pods[0]["metadata"]["name"] not in before, [p["metadata"] for p in pods]
            assert is_ready(pods[0]), pods[0]["status"]
            return pods[0]

        new = wait_until(replaced, timeout=DEADLINE, interval=0.5, what="the operator's pod replaced")
        assert "--resync-seconds=45" in new["spec"]["containers"][0]["command"]
        # A change that rolls no pod (the HPA's bound): what is checked is the new operator's reconcile,
        # and a roll would drain each pod for 25 s (drain_delay and drain_period).
        generation = rts(node)["metadata"]["generation"]
        cluster.kubectl("-n", NAMESPACE, "patch", "rts", NAME, "--type=merge", "-p", '{"spec":{"replicas":{"max":5}}}')
        began = time.monotonic()

        def reconciled() -> bool:
            hpa = cluster.get(f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{NAME}") or {}
            assert hpa.get("spec", {}).get("maxReplicas") == 5, hpa.get("spec")
            return bool(rts(node).get("status", {}).get("observedGeneration") == generation + 1)

        wait_until(reconciled, timeout=DEADLINE, interval=0.5, what="the new operator reconciling the spec change")
        figures["spec change reconciled by the new operator"] = round(time.monotonic() - began, 1)
        assert serving(node, 2), rts(node)

        # 5. helm test: a Pod round-trips a publication through `chat`, inside the cluster.
        began = time.monotonic()
        tested = reader.run(HELM_TEST)
        figures["helm test"] = round(time.monotonic() - began, 1)
        assert re.search(r"Phase:\s+Succeeded", tested), tested

        # 6. Uninstall: the operator goes; the CRD and the RealtimeService stay, and serve.
        reader.run(UNINSTALL)
        wait_until(lambda: not operator_pods(node), timeout=DEADLINE, interval=0.5, what="the operator's pod gone")
        for path in (
            f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments/{RELEASE}",
            f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts/{RELEASE}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{RELEASE}",
        ):
            assert cluster.get(path) is None, path
        assert cluster.get(CRD_PATH) is not None
        assert serving(node, 2), rts(node)
        began = time.monotonic()
        round_trip(reader)
        figures["uninstalled: the round trip again"] = round(time.monotonic() - began, 1)
    finally:
        node.stop()
        figures["total"] = round(time.monotonic() - started, 1)
        print(f"chart on real pods, figures (s): {json.dumps(figures)}")
        print(f"real node timings (s): {node.timings}, stop: {node.stop_timings}")
    assert leftovers(node) == []
