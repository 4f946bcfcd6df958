"""A real Kubernetes control plane on 127.0.0.1 for tests and for trying things by hand.

etcd, kube-apiserver (own PKI, RBAC, token auth), kube-controller-manager (garbage collector,
deployment, replicaset, HPA, namespace, serviceaccount controllers), kube-scheduler, kwok with
fake nodes so Pods become Running and Ready, and the custom-metrics test adapter registered as
`custom.metrics.k8s.io` so a test can set a per-pod metric. Binaries come from
`scripts/build-k8s`. Run by hand: `scripts/cluster` (prints the kubeconfig to use);
`scripts/cluster --real-node` adds a real node (below) that runs the project's images.

With `netns` (the name of a network namespace under /run/netns) every process runs inside that
namespace (`nsenter --net`, which keeps the host's /sys and cgroups, unlike `ip netns exec`) and
listens on `address`, an address of that namespace the host can route to (a veth's end): the
test adapter's fixed port 8080 and any iptables rules stay off the host. tests/support/realnode.py
adds a real kubelet, containerd and kube-proxy next to it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.pki import Pki
from tests.support.procs import free_port

KUBE_VERSION = "v1.34.4"
ROOT = Path(__file__).resolve().parent.parent.parent
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
ADMIN_TOKEN = "hubbub-admin-token"
#: The test adapter serves metric writes on this port on every interface; it cannot be changed.
ADAPTER_WRITE_PORT = 8080


class ClusterError(RuntimeError):
    """The control plane could not start; the message says which part and why."""


def default_bin_dir() -> Path:
    env = os.environ.get("K8S_BIN_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("HUBBUB_CACHE_DIR", Path.home() / ".cache" / "hubbub"))
    return cache / "k8s-bin" / KUBE_VERSION


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Cluster:
    workdir: Path
    bin_dir: Path = field(default_factory=default_bin_dir)
    nodes: int = 2
    with_metrics: bool = True
    #: Run every process in this network namespace (/run/netns/NAME), listening on `address`.
    netns: str | None = None
    address: str = "127.0.0.1"
    processes: list[_Process] = field(default_factory=list)
    #: An APIService for custom.metrics.k8s.io is registered (the test adapter, or another one).
    custom_metrics_registered: bool = False
    server: str = ""
    etcd_url: str = ""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Cluster:
        missing = [b for b in BINARIES if not (self.bin_dir / b).is_file()]
        if self.with_metrics and not (self.bin_dir / "test-adapter").is_file():
            missing.append("test-adapter")
        if missing:
            raise ClusterError(f"missing binaries in {self.bin_dir}: {', '.join(missing)}; run scripts/build-k8s")
        if self.netns is not None and not Path(f"/run/netns/{self.netns}").exists():
            raise ClusterError(f"network namespace {self.netns} does not exist (/run/netns/{self.netns})")
        if self.with_metrics and self.netns is None and port_in_use(ADAPTER_WRITE_PORT):
            raise ClusterError(
                f"port {ADAPTER_WRITE_PORT} is taken: the custom-metrics test adapter needs it for metric writes"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        extra_ips = (self.address,) if self.address != "127.0.0.1" else ()
        self.pki = Pki(self.workdir / "pki", extra_ips).create()
        deadline = time.monotonic() + timeout
        try:
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._write_kubeconfig(self.kubeconfig, {"token": ADMIN_TOKEN})
            self._start_controllers()
            for i in range(self.nodes):
                self.add_node(f"kwok-node-{i}")
            self._wait(deadline, "kwok nodes Ready", self._nodes_ready)
            if self.with_metrics:
                self._start_adapter(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every process (newest first), etcd once the others are gone, then SIGKILL what is
        still there after 10 s. etcd goes last: the apiserver with the lease endpoint reconciler
        removes its lease on the way out, and waits 10 s for an etcd that is gone."""
        if self.custom_metrics_registered and self.server:
            with contextlib.suppress(Exception):
                # An unavailable aggregated API stalls the namespace and GC controllers' discovery.
                for version in ("v1beta1", "v1beta2"):
                    self.api("DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.custom.metrics.k8s.io")
        store = [p for p in self.processes if p.name == "etcd"]
        for group in ([p for p in self.processes if p.name != "etcd"], store):
            for process in reversed(group):
                with contextlib.suppress(ProcessLookupError):
                    process.proc.terminate()
            for process in reversed(group):
                try:
                    process.proc.wait(10)
                except subprocess.TimeoutExpired:
                    process.proc.kill()
                    process.proc.wait(5)
                process.log.close()
        self.processes.clear()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- clients --------------------------------------------------------------------------------

    @functools.cached_property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def api(self, method: str, path: str, *, token: str = ADMIN_TOKEN, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        with httpx.Client(verify=self.tls, timeout=30) as http:
            return http.request(method, self.server + path, headers=headers, **kwargs)

    def apply(self, manifest: dict[str, Any], *, manager: str = "hubbub-tests", force: bool = False) -> dict[str, Any]:
        """Server-side apply of one object; returns the object as stored."""
        path = resource_path(manifest)
        response = self.api(
            "PATCH",
            path,
            params={"fieldManager": manager, "force": "true" if force else "false"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            content=json.dumps(manifest),
        )
        if response.status_code >= 400:
            raise ClusterError(f"apply {path} failed: {response.status_code} {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.api("GET", path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def kubectl(self, *args: str, check: bool = True, kubeconfig: Path | None = None, stdin: str | None = None) -> str:
        """Run kubectl as admin (or with `kubeconfig`); `stdin` is piped to it (`apply -f -`)."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        home = self.workdir / "helm"
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(self.kubeconfig),
        }
        result = subprocess.run(
            [str(self.bin_dir / "helm"), *args], capture_output=True, text=True, timeout=180, env=env
        )
        if check and result.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig that acts as ServiceAccount `namespace/name` (created if missing), with exactly its RBAC."""
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        response = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        if response.status_code >= 400:
            raise ClusterError(f"token request for {namespace}/{name} failed: {response.text}")
        token = response.json()["status"]["token"]
        path = self.workdir / f"kubeconfig-{namespace}-{name}"
        self._write_kubeconfig(path, {"token": token}, namespace=namespace)
        return path

    def set_pod_metric(self, namespace: str, pod: str, metric: str, value: str) -> None:
        """Set a per-pod custom metric (a Kubernetes quantity such as "500m") in the test adapter."""
        url = f"http://{self.address}:{ADAPTER_WRITE_PORT}/write-metrics/namespaces/{namespace}/pods/{pod}/{metric}"
        response = httpx.post(url, content=json.dumps(value), headers={"Content-Type": "application/json"})
        response.raise_for_status()

    def add_node(self, name: str) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }
        self.apply(node)

    # --- components -----------------------------------------------------------------------------

    def in_netns(self, argv: list[str]) -> list[str]:
        """`argv` run inside the cluster's network namespace (as is without one). nsenter execs the
        command without forking, so the process's PID is the command's own."""
        if self.netns is None:
            return argv
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def _spawn(self, name: str, args: list[str], *, binary: str | None = None) -> _Process:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        argv = self.in_netns([binary or str(self.bin_dir / name), *args])
        # A session of its own: Ctrl-C in the terminal of `scripts/cluster` reaches only Python, which
        # stops everything in order (a real node's pods first, while the API still answers).
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process = _Process(name, proc, log_path, log)
        self.processes.append(process)
        return process

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.proc.poll() is not None:
                    raise ClusterError(f"{process.name} exited with {process.proc.returncode}:\n{process.tail()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():
                    return
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in self.processes)
        raise ClusterError(f"timed out waiting for {what}\n{logs}")

    def _start_etcd(self, deadline: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://{self.address}:{client}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self._wait(deadline, "etcd health", lambda: httpx.get(self.etcd_url + "/health", timeout=1).status_code == 200)

    def _start_apiserver(self, deadline: float) -> None:
        port = free_port()
        pki = self.pki
        tokens = pki.path("tokens.csv")
        tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self.server = f"https://{self.address}:{port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={port}",
                f"--tls-cert-file={pki.path('apiserver.crt')}",
                f"--tls-private-key-file={pki.path('apiserver.key')}",
                f"--client-ca-file={pki.path('ca.crt')}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.path('sa.key')}",
                f"--service-account-signing-key-file={pki.path('sa.key')}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # In a network namespace (the real node) pods reach the API through the `kubernetes`
                # Service, as in-cluster clients do: the lease reconciler gives it the node IP as its
                # endpoint. On 127.0.0.1 there is nothing to reach it (kwok's pods run nothing), and an
                # Endpoints object may not hold a loopback address.
                f"--endpoint-reconciler-type={'lease' if self.netns else 'none'}",
                f"--proxy-client-cert-file={pki.path('front-proxy-client.crt')}",
                f"--proxy-client-key-file={pki.path('front-proxy-client.key')}",
                f"--requestheader-client-ca-file={pki.path('ca.crt')}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                # `kubectl logs`/`exec` reach a real kubelet at its node IP (it has no resolvable name).
                *(["--kubelet-preferred-address-types=InternalIP"] if self.netns else []),
                "--v=1",
            ],
        )
        self._wait(
            deadline, "kube-apiserver /readyz", lambda: httpx.get(self.server + "/readyz", verify=self.tls).is_success
        )
        self._wait(deadline, "namespace default", lambda: self.api("GET", "/api/v1/namespaces/default").is_success)

    def _start_controllers(self) -> None:
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        pki = self.pki
        self._spawn(
            "kube-controller-manager",
            [
                kubeconfig,
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={pki.path('sa.key')}",
                f"--root-ca-file={pki.path('ca.crt')}",
                "--horizontal-pod-autoscaler-sync-period=1s",
                "--horizontal-pod-autoscaler-downscale-stabilization=0s",
                "--horizontal-pod-autoscaler-initial-readiness-delay=1s",
                "--kube-api-qps=1000",
                "--kube-api-burst=2000",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        )
        kwok_port = free_port()
        self._spawn(
            "kwok",
            [
                kubeconfig,
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-lease-duration-seconds=40",
            ],
        )

    def _nodes_ready(self) -> bool:
        nodes = self.api("GET", "/api/v1/nodes").json().get("items", [])
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) >= self.nodes

    def _start_adapter(self, deadline: float) -> None:
        port = free_port()
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "test-adapter",
            [
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={self.workdir / 'adapter'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--v=1",
            ],
        )
        self.register_custom_metrics(port, deadline)

    def register_custom_metrics(self, port: int, deadline: float) -> None:
        """Serve `custom.metrics.k8s.io` (v1beta1 and v1beta2) from the adapter listening on `port` of
        this machine (or of the cluster's network namespace); waits until the API answers."""
        self.custom_metrics_registered = True
        # The aggregator proxies to https://<externalName>:<port>: an ExternalName Service to localhost
        # reaches a process on this machine (Endpoints may not hold loopback addresses).
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "custom-metrics", "namespace": "kube-system"},
                "spec": {"type": "ExternalName", "externalName": "localhost"},
            }
        )
        for version in ("v1beta1", "v1beta2"):
            self.apply(
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
                    "spec": {
                        "group": "custom.metrics.k8s.io",
                        "version": version,
                        "service": {"name": "custom-metrics", "namespace": "kube-system", "port": port},
                        "insecureSkipTLSVerify": True,
                        "groupPriorityMinimum": 100,
                        "versionPriority": 200 if version == "v1beta2" else 100,
                    },
                }
            )
        self._wait(
            deadline,
            "custom.metrics.k8s.io available",
            lambda: self.api("GET", "/apis/custom.metrics.k8s.io/v1beta2").is_success,
        )

    def _write_kubeconfig(self, path: Path, user: dict[str, str], *, namespace: str = "default") -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "hubbub",
            "clusters": [
                {
                    "name": "hubbub",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.pki.path("ca.crt").read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "hubbub", "context": {"cluster": "hubbub", "user": "user", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)


def resource_path(manifest: dict[str, Any]) -> str:
    """The REST path of one object, for the kinds the tests and the operator use."""
    api_version: str = manifest["apiVersion"]
    kind: str = manifest["kind"]
    meta = manifest["metadata"]
    plural = PLURALS.get(kind) or kind.lower() + "s"
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    namespace = meta.get("namespace")
    if namespace and kind not in CLUSTER_SCOPED:
        return f"{base}/namespaces/{namespace}/{plural}/{meta['name']}"
    return f"{base}/{plural}/{meta['name']}"


PLURALS = {
    "Ingress": "ingresses",
    "NetworkPolicy": "networkpolicies",
    "CustomResourceDefinition": "customresourcedefinitions",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Endpoints": "endpoints",
}
CLUSTER_SCOPED = {"Node", "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "APIService"}


@contextlib.contextmanager
def running_cluster(workdir: Path | None = None, **kwargs: Any) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hubbub-k8s-")))
        cluster = stack.enter_context(Cluster(workdir, **kwargs))
        yield cluster


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a local Kubernetes control plane until interrupted.")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--nodes", type=int, default=None, help="kwok nodes (default: 2, or 0 with --real-node)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="with a real node (kubelet, containerd, kube-proxy, CoreDNS; tests/support/realnode.py) in a network"
        " namespace of its own, running the images of HUBBUB_IMAGES (scripts/cluster builds them); needs root",
    )
    args = parser.parse_args()
    if args.dir is not None and args.dir.exists():
        shutil.rmtree(args.dir)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.real_node:
            # Imported here: realnode imports this module.
            from tests.support.realnode import RealNode, RealNodeError

            workdir = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hubbub-k8s-")))
            node = RealNode(workdir, kwok_nodes=args.nodes or 0)
            try:
                stack.enter_context(node)
            except RealNodeError as exc:
                print(f"cluster: {exc}", file=sys.stderr)
                return 1
            cluster = node.cluster
            print(
                f"control plane and real node {node.name} up in {time.monotonic() - started:.1f}s"
                f" (network namespace {node.netns}, node IP {node.node_ip}; images: hubbub:dev, hubbub-redis:dev)",
                flush=True,
            )
        else:
            cluster = stack.enter_context(running_cluster(args.dir, nodes=2 if args.nodes is None else args.nodes))
            print(f"control plane up in {time.monotonic() - started:.1f}s", flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        print(f"export PATH={cluster.bin_dir}:$PATH", flush=True)
        print("Ctrl-C stops it.", flush=True)
        stop = False

        def handle(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
