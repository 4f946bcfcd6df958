"""A real Kubernetes node in a private network namespace: the control plane, containerd, kubelet, kube-proxy.

    with RealNode(workdir, images=[hubbub_tar, pause_tar]) as node:
        node.cluster.apply(deployment)             # pods run in real containers (runc, overlayfs)
        node.run(["curl", f"http://{cluster_ip}"])  # Service and pod IPs answer only inside

What it sets up, in order (each step undone by `stop`, also after a failed start):

1. a network namespace named `hubbub-<pid>-<random>` and a veth pair: the node IP (`x.x.x.1/30`)
   inside, `x.x.x.2` on the host's end, so the test process reaches the apiserver; a kubelet
   refuses a loopback node IP, and the test adapter's fixed port 8080 stays off the host;
2. the control plane of tests/support/cluster.py inside it (`Cluster(netns=...)`);
3. containerd (Debian's, with its own config, root, state and socket under the workdir, cgroupfs,
   overlayfs, a CNI bridge for the pod range 10.244.0.0/24 from /usr/lib/cni), and the images
   imported with `ctr -n k8s.io images import` (no registry: pods use `imagePullPolicy: Never`);
4. a kubelet (node `real-node-0`, label `hubbub.dev/real=true`, cgroups under a root of its own,
   `/hubbub-<id>`, so that two test runs on one machine do not share `kubepods`) and kube-proxy
   in iptables mode; `start` returns when the node is Ready;
5. with `with_prometheus`, the real metrics pipeline instead of the test adapter: Debian's
   Prometheus scraping the node's pods (selected by `scrape_selector`) through `file_sd` (its build
   has no kubernetes_sd; a thread rewrites the file from the pod list every second), and
   prometheus-adapter serving `custom.metrics.k8s.io` from it, so an HPA scales on what the pods
   report.

Everything runs through `nsenter --net` only: `ip netns exec` also remounts /sys, which hides the
cgroup hierarchies from the kubelet. Needs root, and the binaries of scripts/build-k8s (kubelet,
kube-proxy) and scripts/build-image (the tarballs), with containerd, runc, the CNI plugins and
iptables from Debian.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from tests.support.cluster import ROOT, Cluster, ClusterError, default_bin_dir
from tests.support.polling import wait_until
from tests.support.procs import free_port, tail
from tests.support.prometheus import config as prometheus_config
from tests.support.prometheus import prometheus_binary

NODE_NAME = "real-node-0"
NODE_LABEL = "hubbub.dev/real"
#: The pod range: outside the Service range 10.0.0.0/24 (tests/support/cluster.py).
POD_CIDR = "10.244.0.0/24"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
#: A cap, not a reservation: the two images take about 600 MiB once imported and unpacked.
RUNTIME_TMPFS_SIZE = "3g"
CNI_DIR = Path("/usr/lib/cni")
#: CoreDNS's readiness endpoint (its `ready` plugin), on the node IP.
DNS_READY_PORT = 8181
#: The commands this needs besides the Kubernetes binaries, with the Debian package of each.
HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "nsenter": "util-linux",
    "ip": "iproute2",
}


class RealNodeError(RuntimeError):
    """The real node could not start (or stop cleanly); the message says which part and why."""


def missing_requirements(bin_dir: Path | None = None) -> list[str]:
    """What this machine lacks to run a real node, in words (empty: everything is there)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, mounts, cgroups)")
    if not Path("/run/netns").exists() and not os.access("/run", os.W_OK):
        missing.append("a writable /run for network namespaces")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package}, or scripts/build-image installs it)")
    if not (CNI_DIR / "bridge").is_file():
        missing.append(f"{CNI_DIR}/bridge (apt-get install containernetworking-plugins)")
    bins = bin_dir or default_bin_dir()
    for binary in ("kubelet", "kube-proxy", "coredns"):
        if not (bins / binary).is_file():
            missing.append(f"{bins}/{binary} (scripts/build-k8s)")
    return missing


def default_images() -> list[Path]:
    """The tarballs of this checkout's image: HUBBUB_IMAGES (colon-separated, as scripts/test exports
    them), else what scripts/build-image prints (it builds only what its cache lacks). Not whatever
    the cache holds: other branches' worktrees share it, with images of their own sources."""
    env = os.environ.get("HUBBUB_IMAGES")
    if env:
        return [Path(p) for p in env.split(":") if p]
    done = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RealNodeError(f"scripts/build-image failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [Path(p) for p in done.stdout.strip().splitlines()[-3:]]


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the unified v2 one)."""
    roots: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fstype = after.split()[0] if after else ""
            if fstype in ("cgroup", "cgroup2"):
                roots.append(Path(before.split()[4]))
    return roots


def mounts_below(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first (the order to unmount them in)."""
    prefix = str(directory).rstrip("/") + "/"
    found: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = line.split()[4].replace("\\040", " ")
            if target == str(directory) or target.startswith(prefix):
                found.append(Path(target))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def free_subnet_octet() -> int:
    """A third octet N for 10.250.N.0/30 that no host interface uses (test runs side by side)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    candidates = [n for n in range(1, 255) if f" 10.250.{n}." not in used]
    if not candidates:
        raise RealNodeError("no free 10.250.N.0/30 subnet for the node's veth")
    return candidates[secrets.randbelow(len(candidates))]


def containerd_config(work: Path, cni_conf_dir: Path) -> str:
    """containerd 1.6's config: everything of its own under `work`, CRI with cgroupfs and overlayfs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{work}/containerd.sock"

[ttrpc]
  address = "{work}/containerd-ttrpc.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/opt"

[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  # runc's state of its own: stop() finds and kills exactly these containers.
  Root = "{work}/runc"

[{cri}.cni]
  bin_dir = "{CNI_DIR}"
  conf_dir = "{cni_conf_dir}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """A bridge network for the pod range (its IPAM state under the workdir, not /var/lib/cni)."""
    return {
        "cniVersion": "0.4.0",
        "name": "hubbub-real",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *, node_ip: str, socket: Path, cgroup_root: str, resolv_conf: Path, pod_logs: Path, cluster_dns: bool = True
) -> dict[str, Any]:
    """The KubeletConfiguration: cgroupfs on cgroup v1, open (anonymous, AlwaysAllow) on the node IP."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        # The machines this runs on have cgroup v1 (hybrid): the kubelet refuses it unless told.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "podCIDR": POD_CIDR,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(pod_logs),
        "clusterDomain": "cluster.local",
        # CoreDNS listens on the node IP (RealNode._start_dns): pods find Services by name.
        **({"clusterDNS": [node_ip]} if cluster_dns else {}),
        # The imported images are all there is: never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
    }


def corefile(node_ip: str, kubeconfig: Path) -> str:
    """CoreDNS as a cluster's DNS: Services and pods of cluster.local from the API server, nothing
    else (no upstream: the namespace has no way out, and pods here need only the cluster's names)."""
    return f"""\
.:53 {{
    bind {node_ip}
    errors
    ready {node_ip}:{DNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


#: prometheus-adapter's rules: `hubbub_connections` of each pod, as the pod metric of that name.
ADAPTER_RULES: dict[str, Any] = {
    "rules": [
        {
            "seriesQuery": 'hubbub_connections{namespace!="",pod!=""}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": "^hubbub_connections$", "as": "hubbub_connections"},
            "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        }
    ]
}


def pod_targets(pods: Sequence[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """Prometheus file_sd groups for the pods that have an IP and are not being deleted, labelled
    with `namespace` and `pod` as kubernetes_sd's relabelling usually does."""
    groups = []
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        meta = pod["metadata"]
        if ip and not meta.get("deletionTimestamp"):
            groups.append(
                {"targets": [f"{ip}:{port}"], "labels": {"namespace": meta["namespace"], "pod": meta["name"]}}
            )
    return sorted(groups, key=lambda g: (g["labels"]["namespace"], g["labels"]["pod"]))


@dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]


@dataclass
class RealNode:
    """A Cluster and one real node in a network namespace of their own; see the module docstring."""

    workdir: Path
    images: Sequence[Path] = field(default_factory=default_images)
    bin_dir: Path = field(default_factory=default_bin_dir)
    #: kwok nodes next to the real one (0: only the real node schedules pods).
    kwok_nodes: int = 0
    #: The custom-metrics test adapter in the namespace (metrics the test sets); excludes `with_prometheus`.
    with_metrics: bool = False
    #: CoreDNS on the node IP as the pods' nameserver (the operator's pods reach Redis by name).
    cluster_dns: bool = True
    #: Prometheus and prometheus-adapter: the pods' own metrics (see the module docstring).
    with_prometheus: bool = False
    #: Which pods Prometheus scrapes (a label selector), and on which port (/metrics).
    scrape_selector: str = "app=hubbub"
    scrape_port: int = 8000
    #: containerd's images and snapshots in memory (about 600 MiB): the import is faster and `stop`
    #: unmounts them in an instant, where deleting them from a busy disk took 20 s.
    runtime_tmpfs: bool = True
    name: str = NODE_NAME
    netns: str = field(default_factory=lambda: f"hubbub-{os.getpid()}-{secrets.token_hex(3)}")
    daemons: list[_Daemon] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: Seconds each step of the last `stop` took.
    stop_timings: dict[str, float] = field(default_factory=dict)
    cluster: Cluster = field(init=False)
    node_ip: str = field(init=False, default="")
    host_ip: str = field(init=False, default="")
    cgroup_root: str = field(init=False, default="")
    #: containerd's root and state, the kubelet's root, CNI state: removed by `stop`.
    runtime_dir: Path = field(init=False, default=Path("/nonexistent"))
    prometheus_url: str = field(init=False, default="")
    _targets_stop: threading.Event = field(init=False, default_factory=threading.Event)
    _targets_thread: threading.Thread | None = field(init=False, default=None)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> RealNode:
        missing = missing_requirements(self.bin_dir)
        if self.with_prometheus:
            if self.with_metrics:
                raise RealNodeError("with_prometheus and with_metrics both serve custom.metrics.k8s.io: choose one")
            if not (self.bin_dir / "prometheus-adapter").is_file():
                missing.append(f"{self.bin_dir}/prometheus-adapter (scripts/build-k8s)")
        if missing:
            raise RealNodeError("cannot run a real node here; missing: " + "; ".join(missing))
        absent = [p for p in self.images if not p.is_file()]
        if absent or not any(p.name.startswith("pause-") for p in self.images):
            raise RealNodeError(
                f"image tarballs {[str(p) for p in self.images]}: missing {[str(p) for p in absent] or 'pause'};"
                " run scripts/build-image (HUBBUB_IMAGES lists the tarballs it printed)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Sockets live below it (a path of at most 107 bytes): a short directory of its own, not the
        # workdir (a pytest tmp_path is long), which keeps the logs.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="hubbub-node-"))
        self.cgroup_root = "/" + self.netns
        try:
            if self.runtime_tmpfs:
                self._mount_tmpfs()
            self._timed("network namespace", self._create_netns)
            self.cluster = Cluster(
                self.workdir / "cluster",
                bin_dir=self.bin_dir,
                nodes=self.kwok_nodes,
                with_metrics=self.with_metrics,
                netns=self.netns,
                address=self.node_ip,
            )
            self._timed("control plane", lambda: self.cluster.start())
            self._timed("containerd", self._start_containerd)
            self._timed("image import", self._import_images)
            self._timed("kubelet and kube-proxy", lambda: self._start_node(timeout))
            if self.with_prometheus:
                self._timed("prometheus and its adapter", self._start_metrics)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Undo `start` in reverse, whatever it got to: pods, node daemons, mounts, cgroups, control
        plane, namespace. Every step runs even if one before it failed; the first error is raised."""
        errors: list[str] = []
        started = time.monotonic()

        def step(what: str, action: Any) -> None:
            began = time.monotonic()
            try:
                action()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
            self.stop_timings[what] = round(time.monotonic() - began, 1)

        step("scrape targets", self._stop_targets)
        if hasattr(self, "cluster") and self.cluster.server:
            step("pods", self._delete_pods)
        step("node daemons", self._stop_daemons)
        step("containers", self._kill_containers)
        step("pod network namespaces", self._remove_pod_netns)
        step("mounts", self._unmount)
        step("cgroups", self._remove_cgroups)
        if hasattr(self, "cluster"):
            step("control plane", self.cluster.stop)
        step("network namespace", self._delete_netns)
        step("container log links", self._remove_log_links)
        step("runtime directory", self._remove_runtime_dir)
        self.timings["stop"] = round(time.monotonic() - started, 1)
        if errors:
            raise RealNodeError("stopping the real node: " + "; ".join(errors))

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- inside the namespace -------------------------------------------------------------------

    def in_netns(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace, where ClusterIPs and pod IPs answer."""
        return subprocess.Popen(self.in_netns(argv), **kwargs)

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace; its output as text. A failure says what it printed."""
        result = subprocess.run(self.in_netns(argv), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RealNodeError(
                f"{' '.join(argv)} exited with {result.returncode} in {self.netns}:\n{result.stdout}{result.stderr}"
            )
        return result

    def ctr(self, *args: str, timeout: float = 120) -> str:
        argv = ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    @property
    def containerd_socket(self) -> Path:
        return self.runtime_dir / "containerd" / "containerd.sock"

    def logs(self, lines: int = 20) -> str:
        """The last lines of every daemon's log, for a failure message."""
        parts = [f"--- {d.name}\n{tail(d.log_path, lines)}" for d in self.daemons]
        return "\n".join(parts)

    # --- setup ----------------------------------------------------------------------------------

    def _timed(self, what: str, action: Any) -> None:
        started = time.monotonic()
        action()
        self.timings[what] = round(time.monotonic() - started, 1)

    def _ip(self, *args: str, netns: bool = False) -> None:
        argv = ["ip", *args]
        result = subprocess.run(self.in_netns(argv) if netns else argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RealNodeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")

    def _mount_tmpfs(self) -> None:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={RUNTIME_TMPFS_SIZE},mode=0700", "tmpfs", str(self.runtime_dir)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RealNodeError(f"mounting a tmpfs on {self.runtime_dir} failed: {result.stderr.strip()}")

    def _create_netns(self) -> None:
        octet = free_subnet_octet()
        self.node_ip, self.host_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
        tag = self.netns.rsplit("-", 1)[-1]
        host_end, node_end = f"hb{tag}h", f"hb{tag}n"  # interface names: at most 15 characters
        self._ip("netns", "add", self.netns)
        self._ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
        self._ip("link", "set", node_end, "netns", self.netns)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", host_end)
        self._ip("link", "set", host_end, "up")
        self._ip("link", "set", "lo", "up", netns=True)
        self._ip("addr", "add", f"{self.node_ip}/30", "dev", node_end, netns=True)
        self._ip("link", "set", node_end, "up", netns=True)
        # The kubelet and kube-proxy look for a default route to pick the node's interface.
        self._ip("route", "add", "default", "via", self.host_ip, netns=True)
        # Routing between the node and its pods; the namespace's own setting, not the host's.
        self.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def _spawn(self, name: str, argv: list[str]) -> _Daemon:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(self.in_netns(argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        daemon = _Daemon(name, proc, log_path, log)
        self.daemons.append(daemon)
        return daemon

    def _alive(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is not None:
                raise RealNodeError(f"{daemon.name} exited with {daemon.proc.returncode}:\n{tail(daemon.log_path, 30)}")

    def _wait(self, what: str, check: Any, timeout: float) -> None:
        def ready() -> bool:
            self._alive()
            return bool(check())

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what=what)
        except AssertionError as exc:
            if isinstance(exc.__cause__, RealNodeError):
                raise exc.__cause__ from None
            raise RealNodeError(f"{exc}\n{self.logs()}") from None

    def _start_containerd(self) -> None:
        work = self.runtime_dir / "containerd"
        cni_conf = self.runtime_dir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-hubbub.conflist").write_text(
            json.dumps(cni_config(self.runtime_dir / "cni" / "ipam"), indent=2)
        )
        work.mkdir(parents=True, exist_ok=True)
        config = work / "config.toml"
        config.write_text(containerd_config(work, cni_conf))
        self._spawn("containerd", ["containerd", f"--config={config}", "--log-level=warn"])
        self._wait("containerd's socket", lambda: self._ctr_ready(), 30)

    def _ctr_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        self.ctr("version", timeout=10)
        return True

    def _import_images(self) -> None:
        for image in self.images:
            self.ctr("images", "import", "--no-unpack=false", str(image), timeout=300)

    def _start_node(self, timeout: float) -> None:
        for hierarchy in cgroup_hierarchies():
            path = hierarchy / self.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            # A new cpuset cgroup starts with no CPUs and no memory nodes: give it the parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists():
                    (path / knob).write_text((hierarchy / knob).read_text())
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("options ndots:1\n")
        kubelet_dir = self.runtime_dir / "kubelet"
        kubelet_dir.mkdir(exist_ok=True)
        config = self.workdir / "kubelet.json"
        config.write_text(
            json.dumps(
                kubelet_config(
                    node_ip=self.node_ip,
                    socket=self.containerd_socket,
                    cgroup_root=self.cgroup_root,
                    resolv_conf=resolv,
                    pod_logs=self.runtime_dir / "pod-logs",
                    cluster_dns=self.cluster_dns,
                ),
                indent=2,
            )
        )
        kubeconfig = str(self.cluster.kubeconfig)
        if self.cluster_dns:
            self._start_dns()
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet_dir}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={NODE_LABEL}=true",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy",
            [
                str(self.bin_dir / "kube-proxy"),
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.name}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={POD_CIDR}",
                # It would raise the host-wide nf_conntrack_max (not per namespace) otherwise.
                "--conntrack-max-per-core=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
                "--v=1",
            ],
        )
        self._wait(f"node {self.name} Ready", self._node_ready, timeout)

    def _start_dns(self) -> None:
        conf = self.workdir / "Corefile"
        conf.write_text(corefile(self.node_ip, self.cluster.kubeconfig))
        self._spawn("coredns", [str(self.bin_dir / "coredns"), f"-conf={conf}"])
        ready = f"http://{self.node_ip}:{DNS_READY_PORT}/ready"

        def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(ready, timeout=2).status_code == 200
            return False

        self._wait("CoreDNS ready", answers, 60)

    def _node_ready(self) -> bool:
        node = self.cluster.get(f"/api/v1/nodes/{self.name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # --- metrics --------------------------------------------------------------------------------

    def _start_metrics(self) -> None:
        work = self.workdir / "prometheus"
        work.mkdir(exist_ok=True)
        targets = work / "targets.json"
        self._write_targets(targets)
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config({}, rule_file=None, file_sd=str(targets))))
        listen = f"{self.node_ip}:{free_port()}"
        self.prometheus_url = f"http://{listen}"
        self._spawn(
            "prometheus",
            [
                str(prometheus_binary()),
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address={listen}",
                "--log.level=warn",
            ],
        )
        self._wait("prometheus ready", lambda: httpx.get(self.prometheus_url + "/-/ready", timeout=2).is_success, 60)
        self._targets_stop.clear()
        self._targets_thread = threading.Thread(target=self._targets_loop, args=(targets,), daemon=True)
        self._targets_thread.start()

        rules = work / "adapter.yaml"
        rules.write_text(yaml.safe_dump(ADAPTER_RULES))
        port = free_port()
        kubeconfig = str(self.cluster.kubeconfig)
        self._spawn(
            "prometheus-adapter",
            [
                str(self.bin_dir / "prometheus-adapter"),
                f"--prometheus-url={self.prometheus_url}",
                f"--config={rules}",
                # Seconds, not the default 10 minutes: a new pod's series must become a metric at once.
                "--metrics-relist-interval=1s",
                "--metrics-max-age=30s",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={work / 'adapter-certs'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--v=1",
            ],
        )
        self.cluster.register_custom_metrics(port, time.monotonic() + 60)

    def _write_targets(self, path: Path) -> bool:
        pods = self.cluster.api(
            "GET",
            "/api/v1/pods",
            params={"labelSelector": self.scrape_selector, "fieldSelector": f"spec.nodeName={self.name}"},
        )
        pods.raise_for_status()
        text = json.dumps(pod_targets(pods.json().get("items", []), self.scrape_port), indent=2)
        if path.exists() and path.read_text() == text:
            return False
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        partial.rename(path)  # Prometheus never reads half a file
        return True

    def _targets_loop(self, path: Path) -> None:
        """What kubernetes_sd would do: the scrape targets follow the pods, within a second."""
        while not self._targets_stop.wait(1.0):
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                self._write_targets(path)

    def _stop_targets(self) -> None:
        self._targets_stop.set()
        if self._targets_thread is not None:
            self._targets_thread.join(10)
            self._targets_thread = None

    # --- teardown -------------------------------------------------------------------------------

    def _delete_pods(self) -> None:
        """Let the kubelet stop its pods (CNI teardown removes their network namespaces) while it runs."""
        if not any(d.name == "kubelet" and d.proc.poll() is None for d in self.daemons):
            return
        # Cordoned first: the ReplicaSets' replacements stay Pending instead of starting here again.
        self.cluster.api(
            "PATCH",
            f"/api/v1/nodes/{self.name}",
            headers={"Content-Type": "application/merge-patch+json"},
            content=json.dumps({"spec": {"unschedulable": True}}),
        )
        pods = self.cluster.api("GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.name}"})
        for pod in pods.json().get("items", []):
            meta = pod["metadata"]
            self.cluster.api(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                params={"gracePeriodSeconds": "0"},
            )
        with contextlib.suppress(AssertionError):
            # Bounded: whatever is left, _kill_containers and _remove_pod_netns take care of.
            wait_until(lambda: not self._running_tasks(), timeout=30, interval=0.5, what="pods stopped")

    def _running_tasks(self) -> list[str]:
        out = self.ctr("tasks", "ls", timeout=10)
        return [line for line in out.splitlines()[1:] if "RUNNING" in line]

    def _stop_daemons(self) -> None:
        """kube-proxy and the kubelet first, containerd last; SIGKILL after 10 s."""
        self._pod_netns = self._pod_netns_paths()
        for daemon in reversed(self.daemons):
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(10)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(5)
            daemon.log.close()
        self.daemons.clear()

    def _pod_netns_paths(self) -> list[Path]:
        """The network namespaces containerd made for this node's pods (from its sandboxes' specs)."""
        paths: list[Path] = []
        if not self.containerd_socket.exists():
            return paths
        try:
            ids = self.ctr("containers", "ls", "-q", timeout=10).split()
            for container in ids:
                info = json.loads(self.ctr("containers", "info", container, timeout=10))
                for ns in info.get("Spec", {}).get("linux", {}).get("namespaces", []):
                    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
                        paths.append(Path(ns["path"]))
        except (RealNodeError, ValueError, subprocess.TimeoutExpired):
            pass
        return sorted(set(paths))

    def _kill_containers(self) -> None:
        """Containers containerd left running: killed and deleted through runc's state of this node,
        then the shims (each named after this node's containerd socket in its command line)."""
        runc_root = self.runtime_dir / "containerd" / "runc"
        for ns_root in sorted(runc_root.glob("*")) if runc_root.exists() else []:
            listing = subprocess.run(
                ["runc", f"--root={ns_root}", "list", "-q"], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for container in listing:
                subprocess.run(["runc", f"--root={ns_root}", "kill", "--all", container, "KILL"], capture_output=True)
                subprocess.run(["runc", f"--root={ns_root}", "delete", "--force", container], capture_output=True)
        socket = str(self.containerd_socket).encode()
        for pid in _pids_whose_cmdline_contains(socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _remove_pod_netns(self) -> None:
        for path in getattr(self, "_pod_netns", []):
            if path.exists():
                subprocess.run(["umount", str(path)], capture_output=True)
                with contextlib.suppress(OSError):
                    path.unlink()

    def _unmount(self) -> None:
        failed = []
        for mount in [*mounts_below(self.runtime_dir), *mounts_below(self.workdir)]:
            result = subprocess.run(["umount", "-l", str(mount)], capture_output=True, text=True)
            if result.returncode != 0:
                failed.append(f"{mount}: {result.stderr.strip()}")
        if failed:
            raise RealNodeError("could not unmount " + ", ".join(failed))

    def _remove_cgroups(self) -> None:
        """The cgroups below this node's root, deepest first (a cgroup goes when its tasks have)."""
        if not self.cgroup_root:
            return
        left = []
        for hierarchy in cgroup_hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.is_dir():
                continue
            for directory in sorted(_cgroup_dirs(root), key=lambda p: len(p.parts), reverse=True):
                try:
                    wait_until(
                        functools.partial(_rmdir, directory), timeout=10, interval=0.1, what=f"rmdir {directory}"
                    )
                except AssertionError:
                    left.append(str(directory))
        if left:
            raise RealNodeError("cgroups still in use: " + ", ".join(left))

    def _remove_log_links(self) -> None:
        """The kubelet links each container's log into /var/log/containers (a fixed path); ours go."""
        links = Path("/var/log/containers")
        for link in links.glob("*.log") if links.is_dir() else []:
            with contextlib.suppress(OSError):
                if os.readlink(link).startswith(str(self.runtime_dir) + "/"):
                    link.unlink()

    def _remove_runtime_dir(self) -> None:
        # Never below a mount point still there (a pod's volume, a snapshot): --one-file-system.
        # rm(1), not shutil.rmtree: it takes half the time over containerd's many small files.
        if self.runtime_dir.is_dir():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.runtime_dir)], check=True, timeout=300)

    def _delete_netns(self) -> None:
        """Deleting the namespace takes its veth pair (both ends), bridge and iptables rules with it."""
        if Path(f"/run/netns/{self.netns}").exists():
            self._ip("netns", "delete", self.netns)


def _cgroup_dirs(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            yield Path(dirpath) / name


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    return True


def _pids_whose_cmdline_contains(needle: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def running_node(workdir: Path, **kwargs: Any) -> Iterator[RealNode]:
    node = RealNode(workdir, **kwargs)
    with node:
        yield node


__all__ = ["NODE_LABEL", "NODE_NAME", "POD_CIDR", "ClusterError", "RealNode", "RealNodeError", "running_node"]
