"""The real tier: hubbub's image runs as real pods (containerd, runc, a CNI bridge) on a real kubelet,
and a client reaches them through a Service's ClusterIP programmed by a real kube-proxy.

Everything runs in a network namespace the test creates (tests/support/realnode.py); the test then
checks that nothing of it is left on the machine: namespace, mounts, cgroups, processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.realnode import NODE_LABEL, RealNode, cgroup_hierarchies, mounts_below

pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.timeout(600)]

NAMESPACE = "default"
APP = "hubbub"
#: A client inside the node's namespace: join a room through the ClusterIP, publish, read it back.
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from hubbub_client import Client

    async def main(url: str, token: str) -> None:
        async with Client(url, token=token, connect_timeout=20) as client:
            room = await client.join("chat:real")
            result = await client.publish("chat:real", {"text": "through a real kube-proxy"})
            async for publication in room:
                print(json.dumps({"offset": result.offset, "data": publication.data}))
                return

    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 60))
    """
)


#: Clients inside the node's namespace that hold N connections through the ClusterIP until stdin closes.
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from hubbub_client import Client

    async def main(url: str, token: str, count: int) -> None:
        clients = [Client(url, token=token, connect_timeout=30) for _ in range(count)]
        await asyncio.gather(*(client.connect() for client in clients))
        print("connected", count, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await asyncio.gather(*(client.close() for client in clients))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def why_not_here() -> str | None:
    """Why this machine cannot run a real node (None: it can). Only root and network namespaces
    are reasons to skip; a missing binary or image fails the test (scripts/test builds them)."""
    if os.geteuid() != 0:
        return "the real tier needs root (network namespaces, mounts, cgroups)"
    if shutil.which("unshare") is None:
        return "no unshare(1) to probe for network namespace support"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces are not available here: {probe.stderr.strip()}"
    return None


def deployment(replicas: int) -> dict[str, Any]:
    labels = {"app": APP}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {NODE_LABEL: "true"},
                    # Without it a Service named hubbub injects HUBBUB_PORT=tcp://...: hubbub's own setting.
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "hubbub",
                            "image": "hubbub:dev",
                            "imagePullPolicy": "Never",
                            "args": ["serve", "--host", "0.0.0.0", "--port", "8000"],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": 8000},
                                "periodSeconds": 1,
                            },
                            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
                        }
                    ],
                },
            },
        },
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {"selector": {"app": APP}, "ports": [{"name": "http", "port": 80, "targetPort": 8000}]},
    }


def ready_pods(node: RealNode) -> list[dict[str, Any]]:
    pods = node.cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": f"app={APP}"})
    return [
        pod
        for pod in pods.json().get("items", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    ]


def dev_token() -> str:
    """A development-mode token (the pods run without a config file: development mode, its public secret)."""
    out = subprocess.run(
        [sys.executable, "-m", "hubbub", "token", "--rooms", "chat:*", "--publish", "chat:*"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")},
    )
    return out.stdout.strip()


def leftovers(node: RealNode) -> list[str]:
    """What of the node is still on the machine after stop (empty: nothing)."""
    found: list[str] = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if node.netns in namespaces:
        found.append(f"network namespace {node.netns}")
    found += [f"mount {m}" for m in [*mounts_below(node.workdir), *mounts_below(node.runtime_dir)]]
    if node.runtime_dir.exists():
        found.append(f"directory {node.runtime_dir}")
    found += [
        f"cgroup {h / node.cgroup_root.lstrip('/')}"
        for h in cgroup_hierarchies()
        if (h / node.cgroup_root.lstrip("/")).exists()
    ]
    socket = str(node.containerd_socket).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if socket in (entry / "cmdline").read_bytes():
                    found.append(f"process {entry.name}")
            except OSError:
                pass
    return found


def hpa(minimum: int, maximum: int, per_pod: int) -> dict[str, Any]:
    """The HPA the operator emits for connection-based scaling: a Pods metric, an average per pod."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
            "minReplicas": minimum,
            "maxReplicas": maximum,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "hubbub_connections"},
                        "target": {"type": "AverageValue", "averageValue": str(per_pod)},
                    },
                }
            ],
        },
    }


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity as the metrics APIs write it: "20", "20500m", "1k"."""
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6}
    if value[-1:] in suffixes:
        return float(value[:-1]) * suffixes[value[-1]]
    return float(value)


def scraped_connections(node: RealNode) -> dict[str, float]:
    """hubbub_connections by pod, as Prometheus has it now."""
    response = httpx.get(f"{node.prometheus_url}/api/v1/query", params={"query": "hubbub_connections"}, timeout=5)
    return {r["metric"]["pod"]: float(r["value"][1]) for r in response.json()["data"]["result"]}


def test_hubbub_pods_on_a_real_kubelet_answer_a_client_through_the_cluster_ip(tmp_path: Path) -> None:
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    node = RealNode(tmp_path / "real")
    try:
        node.start()
        node.cluster.apply(service())
        node.cluster.apply(deployment(replicas=2))
        pods_at = time.monotonic()
        wait_until(lambda: len(ready_pods(node)) == 2, timeout=120, interval=0.5, what="2 hubbub pods Ready")
        node.timings["pods Ready"] = round(time.monotonic() - pods_at, 1)
        pods = ready_pods(node)
        assert all(p["spec"]["nodeName"] == node.name for p in pods)
        assert all(p["status"]["podIP"].startswith("10.244.0.") for p in pods), [p["status"] for p in pods]
        # The pods' cgroups are below the node's own root, not the machine's /kubepods.
        assert any((h / node.cgroup_root.lstrip("/") / "kubepods").is_dir() for h in cgroup_hierarchies())

        cluster_ip = node.cluster.get(f"/api/v1/namespaces/{NAMESPACE}/services/{APP}")["spec"]["clusterIP"]  # type: ignore[index]
        # kube-proxy programs the ClusterIP in the node's namespace (and only there).
        wait_until(
            lambda: cluster_ip in node.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]).stdout,
            timeout=60,
            what=f"kube-proxy's rule for {cluster_ip}",
        )
        client = node.run(
            [sys.executable, "-c", CLIENT, f"ws://{cluster_ip}:80/ws", dev_token()], timeout=90, check=False
        )
        assert client.returncode == 0, client.stdout + client.stderr
        reply = json.loads(client.stdout.strip().splitlines()[-1])
        assert reply["data"] == {"text": "through a real kube-proxy"}
        assert reply["offset"] >= 1
    finally:
        node.stop()
        node.timings["whole test"] = round(time.monotonic() - started, 1)
        print(f"real node timings (s): {node.timings}, stop: {node.stop_timings}")
    assert leftovers(node) == []


def test_a_real_hpa_scales_real_pods_on_the_connections_prometheus_scrapes_from_them(tmp_path: Path) -> None:
    """Real connections through the ClusterIP -> each pod's /metrics -> Prometheus -> prometheus-adapter
    -> the HPA in kube-controller-manager -> more real pods; and back when the clients leave."""
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    node = RealNode(tmp_path / "real", with_prometheus=True, scrape_selector=f"app={APP}")
    holder: subprocess.Popen[str] | None = None
    try:
        node.start()
        node.cluster.apply(service())
        node.cluster.apply(deployment(replicas=2))
        wait_until(lambda: len(ready_pods(node)) == 2, timeout=120, interval=0.5, what="2 hubbub pods Ready")
        wait_until(lambda: len(scraped_connections(node)) == 2, timeout=60, what="Prometheus scraping both pods")
        node.cluster.apply(hpa(minimum=2, maximum=4, per_pod=10))

        cluster_ip = node.cluster.get(f"/api/v1/namespaces/{NAMESPACE}/services/{APP}")["spec"]["clusterIP"]  # type: ignore[index]
        wait_until(
            lambda: cluster_ip in node.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]).stdout,
            timeout=60,
            what=f"kube-proxy's rule for {cluster_ip}",
        )
        holder = node.popen(
            [sys.executable, "-c", HOLDER, f"ws://{cluster_ip}:80/ws", dev_token(), "40"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["connected", "40"]
        scale_at = time.monotonic()

        def forty_scraped() -> dict[str, float]:
            counts = scraped_connections(node)
            assert sum(counts.values()) == 40, counts
            return counts

        spread = wait_until(forty_scraped, timeout=60, what="Prometheus seeing the 40 connections")

        def forty_served() -> bool:
            # What the HPA reads: custom.metrics.k8s.io, served by prometheus-adapter from Prometheus.
            path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/hubbub_connections"
            items = node.cluster.api("GET", path, params={"labelSelector": f"app={APP}"}).json()["items"]
            values = [parse_quantity(item["value"]) for item in items]
            assert sum(values) == 40, items
            return True

        wait_until(forty_served, timeout=60, what="the custom metrics API serving the 40 connections")
        # 40 connections over 2 pods is 20 a pod against a target of 10: the HPA asks for 4.
        wait_until(lambda: len(ready_pods(node)) == 4, timeout=120, interval=0.5, what="4 hubbub pods Ready")
        node.timings["scaled to 4 Ready"] = round(time.monotonic() - scale_at, 1)
        status = node.cluster.get(f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{APP}")
        assert status is not None and status["status"]["desiredReplicas"] == 4, status

        holder.stdin.close()  # type: ignore[union-attr]
        assert holder.wait(30) == 0
        down_at = time.monotonic()
        # No connections left: the HPA goes back to its minimum (no downscale stabilisation here).
        wait_until(
            lambda: (
                node.cluster.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{APP}")["spec"]["replicas"]  # type: ignore[index]
                == 2
            ),
            timeout=120,
            interval=0.5,
            what="the Deployment back at 2 replicas",
        )
        node.timings["back to 2"] = round(time.monotonic() - down_at, 1)
        print(f"connections per pod as scraped: {spread}")
    finally:
        if holder is not None:
            with holder:  # closes its pipes
                if holder.poll() is None:
                    holder.kill()
        node.stop()
        node.timings["whole test"] = round(time.monotonic() - started, 1)
        print(f"real node timings (s): {node.timings}, stop: {node.stop_timings}")
    assert leftovers(node) == []
