"""The operator's whole story on real pods: `kubectl apply` a RealtimeService and watch it serve.

On a real node (tests/support/realnode.py: a real kubelet, containerd and kube-proxy in a network
namespace of the test's own, CoreDNS, Prometheus scraping the pods and prometheus-adapter serving
their connection counts to the HPA), the operator runs as a process with its own ServiceAccount's
RBAC, inside that namespace so that it reaches the pods (rebalancing). One scenario, in order:

1. apply a RealtimeService (hubbub's image, the managed Redis from the Redis image) → Ready;
2. 40 real WebSocket clients connect through the Service's ClusterIP, and a publisher posts a
   numbered series to their rooms through the HTTP API, until the end of the scenario;
3. the HPA scales 2 → 4 pods on the connections Prometheus scrapes from the pods;
4. the operator's rebalancing moves clients from the two loaded pods to the two new ones;
5. a spec change rolls every pod, one at a time, each draining with paced 1012 closes;
6. a pod's container is SIGKILLed (a crash): its members' presence entries go at once, not
   after presence_ttl, though the container comes back under the same name;
7. every client holds every publication of its room, in order, exactly once;
8. the clients leave → the HPA scales in (one pod at once, one per two minutes after); the resource
   is deleted → everything collected.

The figures (time to Ready, scale-up, rebalance time and spread, rollout, presence purge) are printed
and kept in the note of the issue; `pytest -s` shows them.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubbub_operator import MANAGER, crd, deploy
from tests.kubernetes.test_real_node import leftovers, why_not_here
from tests.support.cluster import Cluster
from tests.support.operator_process import Operator, running_operator
from tests.support.polling import wait_until
from tests.support.realnode import NODE_LABEL, RealNode
from tests.support.roomload import RoomLoad

pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.timeout(900)]

NAMESPACE = "chat-real"
NAME = "chat"
API = "/apis/hubbub.dev/v1alpha1"
JWT_SECRET = "real-tier-secret-0123456789abcdef0123456789"
SELECTOR = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=server"
CLIENTS = 40
ROOMS = 4
#: Generous bounds for a loaded 2-core machine running a control plane, a kubelet and five pods.
DEADLINE = 180.0


def resource(**spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": {"repository": "hubbub", "tag": "dev", "pullPolicy": "Never"},
        "nodeSelector": {NODE_LABEL: "true"},
        "replicas": {"min": 2, "max": 4},
        "autoscaling": {"provider": "hpa", "targetConnectionsPerPod": 10, "scaleDownStabilizationSeconds": 0},
        "rebalance": {"enabled": True, "tolerance": 20, "period": 3},
        "settings": {
            # Quick drains (a rollout of four pods within a minute or two), and a presence_ttl far
            # longer than the scenario's bound on the purge: only the purge can pass it.
            "drain_delay": 1,
            "drain_period": 3,
            "presence_ttl": 600,
            "namespaces": {"chat": {"history_size": 1000, "presence": True, "client_publish": True}},
        },
        "auth": {"jwtSecretRef": {"name": "chat-jwt"}},
        "redis": {"mode": "managed", "managed": {"image": "hubbub-redis:dev"}},
        "exposure": {"ingress": {"enabled": False}, "gateway": {"enabled": False}},
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "hubbub.dev/v1alpha1",
        "kind": "RealtimeService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }


# -- reading the cluster ------------------------------------------------------------------------------


def pods(node: RealNode) -> list[dict[str, Any]]:
    found = node.cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": SELECTOR})
    items: list[dict[str, Any]] = found.json().get("items", [])
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def ready_pods(node: RealNode) -> list[dict[str, Any]]:
    return [p for p in pods(node) if is_ready(p)]


def rts(node: RealNode) -> dict[str, Any]:
    return node.cluster.get(f"{API}/namespaces/{NAMESPACE}/realtimeservices/{NAME}") or {}


def condition(obj: dict[str, Any], type_: str) -> str | None:
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_]
    return found[0]["status"] if found else None


def deployment(node: RealNode) -> dict[str, Any]:
    return node.cluster.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}") or {}


def rolled_out(node: RealNode, replicas: int) -> bool:
    """The Deployment at `replicas`, all of them updated and Ready, no old pod left."""
    found = deployment(node)
    status = found.get("status", {})
    return (
        found.get("spec", {}).get("replicas") == replicas
        and status.get("observedGeneration") == found["metadata"]["generation"]
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("replicas") == replicas
        and len(ready_pods(node)) == replicas
    )


#: Run inside the node's namespace: GET each URL (argv[2:]) with the API key (argv[1]), print the JSON bodies.
FETCH = """
import json, sys, httpx
headers = {"authorization": "Bearer " + sys.argv[1]}
print(json.dumps([httpx.get(url, headers=headers, timeout=5).json() for url in sys.argv[2:]]))
"""


def fetch(node: RealNode, api_key: str, *urls: str) -> list[Any]:
    """GET `urls` (pod IPs, ClusterIPs: reachable only inside the node's namespace) with the API key."""
    out = node.run([sys.executable, "-c", FETCH, api_key, *urls], timeout=30).stdout
    found: list[Any] = json.loads(out.strip().splitlines()[-1])
    return found


def per_pod_connections(node: RealNode, api_key: str) -> dict[str, int]:
    """Each Ready pod's open connections, from the pod itself (GET /api/info at its own IP)."""
    ready = ready_pods(node)
    infos = fetch(node, api_key, *(f"http://{p['status']['podIP']}:8000/api/info" for p in ready))
    counts = {}
    for pod, info in zip(ready, infos, strict=True):
        own = [n for n in info["nodes"] if n["name"] == pod["metadata"]["name"]]
        counts[pod["metadata"]["name"]] = int(own[0]["connections"]) if own else -1
    return counts


def collected(cluster: Cluster, path: str) -> bool:
    return cluster.get(path) is None


def secret_value(node: RealNode, name: str, key: str) -> str:
    found = node.cluster.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}") or {}
    return base64.b64decode(found["data"][key]).decode()


def container_pid(node: RealNode, pod: dict[str, Any]) -> int:
    """The host PID of the pod's hubbub container (its task in containerd)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    for line in node.ctr("tasks", "ls").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no task for container {container_id}")


# -- the fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    real = RealNode(
        tmp_path_factory.mktemp("real"),
        with_metrics=False,
        with_prometheus=True,
        scrape_selector=SELECTOR,
        scrape_port=8000,
    )
    try:
        real.start()
        yield real
    finally:
        real.stop()
        print(f"real node timings (s): {real.timings}, stop: {real.stop_timings}")
    assert leftovers(real) == []


@pytest.fixture(scope="module")
def operator(node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """Our CRD, the shipped RBAC, and the operator as its ServiceAccount inside the node's namespace."""
    node.cluster.apply(crd.crd(), manager=MANAGER, force=True)
    node.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": deploy.NAMESPACE}})
    for obj in deploy.cluster_rbac():
        node.cluster.apply(obj, manager="hubbub-tests", force=True)
    kubeconfig = node.cluster.service_account_kubeconfig(deploy.NAMESPACE, deploy.NAME)
    workdir = tmp_path_factory.mktemp("operator")
    with running_operator(
        ["--all-namespaces"], kubeconfig, workdir, wrap=node.in_netns, host=node.node_ip, rebalance=True
    ) as running:
        yield running


# -- the scenario -----------------------------------------------------------------------------------


def test_a_realtime_service_scales_rebalances_rolls_and_forgets_a_crashed_pod_without_losing_a_message(
    node: RealNode, operator: Operator, tmp_path: Path
) -> None:
    figures: dict[str, Any] = {}
    cluster = node.cluster
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "chat-jwt", "namespace": NAMESPACE},
            "data": {"jwt-secret": base64.b64encode(JWT_SECRET.encode()).decode()},
        }
    )

    # 1. Apply → Ready (two real pods, the managed Redis, the Service, the HPA).
    applied = time.monotonic()
    cluster.apply(resource())
    wait_until(lambda: condition(rts(node), "Ready") == "True", timeout=DEADLINE, interval=0.5, what="Ready")
    wait_until(lambda: rolled_out(node, 2), timeout=DEADLINE, interval=0.5, what="2 pods rolled out")
    figures["apply to Ready (s)"] = round(time.monotonic() - applied, 1)
    assert condition(rts(node), "RedisReady") == "True", rts(node)["status"]
    assert all(p["spec"]["nodeName"] == node.name for p in pods(node))

    service = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}") or {}
    cluster_ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
    api_key = secret_value(node, f"{NAME}-api-key", "api-key")
    wait_until(
        lambda: cluster_ip in node.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]).stdout,
        timeout=60,
        what=f"kube-proxy's rule for {cluster_ip}",
    )

    # 2. The clients, inside the node's namespace, through the ClusterIP; the publisher starts.
    load = RoomLoad(
        node.in_netns([]),
        url=f"ws://{cluster_ip}:{port}/ws",
        api=f"http://{cluster_ip}:{port}",
        api_key=api_key,
        secret=JWT_SECRET,
        clients=CLIENTS,
        rooms=ROOMS,
        room_prefix="chat:real",
        log=tmp_path / "load.log",
    )
    try:
        load.call("connect")
        surge = time.monotonic()
        load.call("publish", rate=20)

        # 3. The HPA scales on what Prometheus scrapes from the pods: 40 over 2 is twice the target.
        wait_until(lambda: rolled_out(node, 4), timeout=DEADLINE, interval=0.5, what="4 pods rolled out")
        figures["connections surge to 4 Ready pods (s)"] = round(time.monotonic() - surge, 1)
        scaled = time.monotonic()

        # 4. Rebalancing: the two new pods start empty; the operator sheds the old ones' excess.
        figures["per pod before rebalancing"] = sorted(per_pod_connections(node, api_key).values())

        def balanced() -> dict[str, int]:
            counts = per_pod_connections(node, api_key)
            mean = CLIENTS / 4
            assert sum(counts.values()) == CLIENTS, counts
            assert all(abs(c - mean) <= max(1, 0.2 * mean) for c in counts.values()), counts
            return counts

        spread = wait_until(balanced, timeout=DEADLINE, interval=1.0, what="connections balanced over 4 pods")
        figures["rebalance time after scale-out (s)"] = round(time.monotonic() - scaled, 1)
        figures["per pod after rebalancing"] = sorted(spread.values())
        # What `kubectl get rts` shows in its CONNECTIONS column: the operator's count of the pods'.
        wait_until(
            lambda: rts(node).get("status", {}).get("connections") == CLIENTS,
            timeout=DEADLINE,
            what=f"status.connections {CLIENTS}",
        )

        def rebalanced_event() -> bool:
            # kopf posts Events from a queue of its own: the Event may follow the shed by a moment.
            events = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events").json()["items"]
            assert any(e["reason"] == "Rebalanced" for e in events), [e["reason"] for e in events]
            return True

        wait_until(rebalanced_event, timeout=60, what="the Rebalanced event")

        # 5. A spec change rolls every pod, one at a time, each draining (paced 1012s).
        before = {p["metadata"]["name"] for p in pods(node)}
        rolling = time.monotonic()
        changed = resource()
        changed["spec"]["settings"]["ping_interval"] = 20
        cluster.apply(changed)
        wait_until(
            lambda: rolled_out(node, 4) and not before & {p["metadata"]["name"] for p in pods(node)},
            timeout=DEADLINE * 2,
            interval=0.5,
            what="every pod replaced",
        )
        figures["rollout of 4 pods (s)"] = round(time.monotonic() - rolling, 1)

        # 6. A crash: the container of one pod is SIGKILLed; the kubelet restarts it in the same pod
        # (the same node name). Its members reconnect elsewhere; their old presence entries go at once.
        victim = ready_pods(node)[0]
        room = "chat:real-0"

        def presence_clients() -> int:
            url = f"http://{cluster_ip}:{port}/api/presence/{room}"
            return len(fetch(node, api_key, url)[0]["clients"])

        members = CLIENTS // ROOMS
        wait_until(lambda: presence_clients() == members, timeout=60, what=f"{members} members of {room} in presence")
        os.kill(container_pid(node, victim), signal.SIGKILL)
        crashed = time.monotonic()

        def restarted() -> bool:
            found = [p for p in pods(node) if p["metadata"]["name"] == victim["metadata"]["name"]]
            return (
                bool(found) and is_ready(found[0]) and found[0]["status"]["containerStatuses"][0]["restartCount"] >= 1
            )

        wait_until(restarted, timeout=DEADLINE, interval=0.5, what="the crashed container restarted")
        # Every member back exactly once: the reconnected ones' new entries, none of their old ones,
        # well within presence_ttl (600 s) — only the purge can do it.
        wait_until(lambda: presence_clients() == members, timeout=60, what=f"{room}'s presence without ghosts")
        figures["crash to presence without ghosts (s)"] = round(time.monotonic() - crashed, 1)

        # 7. Nothing lost: every client holds every publication of its room, in order, once.
        published = load.call("stop_publishing")
        verdict = load.call("check", timeout=120)
        figures["publications"] = published["published"]
        figures["client disconnects by code"] = verdict["disconnects"]
        assert verdict["complete"] and verdict["lossless"], verdict
        assert verdict["unrecovered"] == 0, verdict
        assert verdict["disconnects"].get("1012", 0) >= CLIENTS // 2, verdict  # the rollout and the sheds
    finally:
        load.stop()

    # 8. The clients left: the HPA wants the minimum back, and takes the first pod away (the next
    # ones follow one per two minutes: the operator's scale-down policy for long-lived connections).
    emptied = time.monotonic()

    def scaling_in() -> bool:
        replicas = int(deployment(node).get("spec", {}).get("replicas") or 4)
        return replicas < 4 and rolled_out(node, replicas)

    wait_until(scaling_in, timeout=DEADLINE, interval=0.5, what="the HPA scaling in, one pod gone")
    figures["clients gone to the first pod removed (s)"] = round(time.monotonic() - emptied, 1)
    cluster.api("DELETE", f"{API}/namespaces/{NAMESPACE}/realtimeservices/{NAME}")
    wait_until(
        lambda: not cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods").json()["items"],
        timeout=DEADLINE,
        interval=0.5,
        what="every pod (hubbub and Redis) gone",
    )
    for path in (
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{NAME}-redis",
        f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}",
        f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{NAME}",
    ):
        wait_until(functools.partial(collected, cluster, path), timeout=DEADLINE, what=f"{path} collected")
    print(f"real-tier figures: {json.dumps(figures)}")
