"""The real tier's configuration, without starting anything (tests/support/realnode.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from tests.support.realnode import POD_CIDR, cni_config, containerd_config, kubelet_config, mounts_below, pod_targets


def pod(name: str, ip: str | None, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip} if ip else {}}


def test_prometheus_scrapes_the_pods_that_have_an_ip_and_are_not_going_away() -> None:
    targets = pod_targets(
        [pod("b", "10.244.0.3"), pod("a", "10.244.0.2"), pod("c", None), pod("d", "10.244.0.4", deleting=True)], 8000
    )
    assert targets == [
        {"targets": ["10.244.0.2:8000"], "labels": {"namespace": "default", "pod": "a"}},
        {"targets": ["10.244.0.3:8000"], "labels": {"namespace": "default", "pod": "b"}},
    ]


def test_the_pod_range_stays_outside_the_service_range() -> None:
    assert not ipaddress.ip_network(POD_CIDR).overlaps(ipaddress.ip_network("10.0.0.0/24"))
    ranges = cni_config(Path("/w/ipam"))["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": POD_CIDR}]]


def test_containerd_and_the_kubelet_keep_their_state_in_the_node_s_own_directories() -> None:
    text = containerd_config(Path("/tmp/hubbub-node-x/containerd"), Path("/tmp/hubbub-node-x/cni/net.d"))
    assert 'address = "/tmp/hubbub-node-x/containerd/containerd.sock"' in text
    assert 'Root = "/tmp/hubbub-node-x/containerd/runc"' in text
    assert "SystemdCgroup = false" in text
    config = kubelet_config(
        node_ip="10.250.7.1",
        socket=Path("/tmp/hubbub-node-x/containerd/containerd.sock"),
        cgroup_root="/hubbub-1-abc",
        resolv_conf=Path("/w/resolv.conf"),
        pod_logs=Path("/tmp/hubbub-node-x/pod-logs"),
    )
    assert config["cgroupRoot"] == "/hubbub-1-abc" and config["cgroupDriver"] == "cgroupfs"
    assert config["containerRuntimeEndpoint"] == "unix:///tmp/hubbub-node-x/containerd/containerd.sock"
    assert config["podLogsDir"] == "/tmp/hubbub-node-x/pod-logs"


def test_no_mounts_below_a_fresh_directory(tmp_path: Path) -> None:
    assert mounts_below(tmp_path) == []
