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
    from hubbub.client import Client

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


def test_hubbub_pods_on_a_real_kubelet_answer_a_client_through_the_cluster_ip(tmp_path: Path) -> None:
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    node = RealNode(tmp_path / "real", with_metrics=False)
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
