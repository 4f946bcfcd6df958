"""A real local Redis Cluster of `redis-server` processes for the scale-out tests.

Every node runs on free 127.0.0.1 ports (its client port and its cluster bus port, both chosen
with `free_port`, so the bus is never assumed at port + 10000) with its config, `nodes.conf`,
data dir and log in its own directory under the given work directory. Each node is a
`RedisServer` started in its own session, so `stop()` signals only the processes this group
started; every wait is a bounded poll that fails with the nodes' log tails.

    group = RedisClusterGroup(tmp_path / "cluster").start()    # 3 masters, 1 replica each
    try:
        with group.cluster_client() as client:
            client.set("{room}:a", "1")
        slot = group.key_slot("{room}:a")
        old, new = group.kill_master(slot)      # SIGKILL it, wait for its replica's promotion
        group.restart(old)                      # back as a replica of `new`
        target = next(m.port for m in group.masters() if m.port != new)
        group.migrate_slot(slot, target, between_batches=lambda: None)
        assert group.master_of_slot(slot) == target
    finally:
        group.stop()

With `tls=ClusterTls(ca, cert, key)` every node listens for TLS only (`port 0`, `tls-port <port>`) and
the cluster bus and replication are TLS too (`tls-cluster yes`, `tls-replication yes`); clients must
trust the CA but present no certificate (`tls-auth-clients no`), the nodes present `cert` to each
other. The group's own connections (`command`, `client`, `cluster_client`, `redis-cli --cluster
create`, the MIGRATE loop) then use TLS as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import redis
import redis.asyncio
import redis.cluster
import redis.crc

from tests.support.procs import free_port
from tests.support.procs import quote as config_quote
from tests.support.redis_server import RedisServer, _connect, _execute, _wait_until

REDIS_CLI = "redis-cli"
SLOTS = 16384
#: Short, so a killed master is marked FAIL and its replica promoted within a few seconds; still
#: far above what a node stalls for beside a CPU hog (a spurious failover would break the tests).
NODE_TIMEOUT_MS = 1000
#: Bounds on the waits: only a failing start or failover ever waits this long.
START_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0
MIGRATE_TIMEOUT_MS = 5000


class ClusterMaster(NamedTuple):
    """One master as a node sees it: `(port, node_id, slot ranges)`, ranges inclusive."""

    port: int
    node_id: str
    slots: list[tuple[int, int]]


@dataclass(frozen=True)
class _NodeEntry:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_nodes(text: str) -> list[_NodeEntry]:
    """CLUSTER NODES: `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping> <pong> <epoch>
    <link> <slot>...`; `[slot->-id]`/`[slot-<-id]` (migrating/importing) are not ownership."""
    entries: list[_NodeEntry] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0].split(",", 1)[0]
        port = int(address.rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append(
            _NodeEntry(
                node_id=fields[0],
                port=port,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
            )
        )
    return entries


def _owner_map(entries: Iterable[_NodeEntry]) -> dict[tuple[int, int], int]:
    """Slot range -> owning master's port, as one node sees it."""
    return {rng: e.port for e in entries if e.is_master for rng in e.slots}


def _roles(entries: list[_NodeEntry], ports: Iterable[int]) -> dict[int, int | None]:
    """Port -> its master's port (None for a master; -1 for a master this node does not know), for
    the nodes on `ports`, as one node sees it."""
    port_of = {e.node_id: e.port for e in entries}
    wanted = set(ports)
    return {e.port: None if e.is_master else port_of.get(e.master_id or "", -1) for e in entries if e.port in wanted}


def _covered(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in ranges)


@dataclass(frozen=True)
class ClusterTls:
    """PEM files of a TLS cluster: the CA, and the certificate and key every node serves on its
    client port and presents to its peers (the cluster bus always asks a peer for a certificate:
    it must be valid for 127.0.0.1 and usable for client authentication too)."""

    ca: Path
    cert: Path
    key: Path


class _ClusterNode(RedisServer):
    """A `RedisServer` with cluster mode on; its `nodes.conf` (its identity) sits in its workdir.
    With `tls`, it listens for TLS only, and its own connections (`command`, `info`, `client`) use TLS."""

    def __init__(self, workdir: Path, *, port: int, password: str | None, tls: ClusterTls | None = None) -> None:
        super().__init__(workdir, port=port, password=password)
        self.bus_port = free_port()
        self.nodes_conf = self.workdir / "nodes.conf"
        self.tls = tls

    def config_text(self) -> str:
        text = super().config_text()
        lines = [
            "cluster-enabled yes",
            f"cluster-config-file {config_quote(self.nodes_conf)}",
            f"cluster-port {self.bus_port}",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
        ]
        if self.tls is not None:
            plain = f"\nport {self.port}\n"
            if plain not in text:
                raise AssertionError(f"no {plain.strip()!r} line to turn into a TLS port in:\n{text}")
            text = text.replace(plain, "\nport 0\n")
            lines += [
                f"tls-port {self.port}",
                f"tls-cert-file {config_quote(self.tls.cert)}",
                f"tls-key-file {config_quote(self.tls.key)}",
                f"tls-ca-cert-file {config_quote(self.tls.ca)}",
                "tls-auth-clients no",  # clients (hubbub) verify the server; they present no certificate
                "tls-cluster yes",
                "tls-replication yes",
            ]
        return text + "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        if self.tls is None:
            return super().url
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca), safe='')}"

    def tls_options(self) -> dict[str, Any]:
        """redis-py options for a TLS connection to this node ({} without TLS)."""
        return {} if self.tls is None else _tls_options(self.tls)

    def client(self, *, timeout: float = 5, **kwargs: Any) -> redis.Redis:
        return super().client(timeout=timeout, **{**self.tls_options(), **kwargs})

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        return super().async_client(**{**self.tls_options(), **kwargs})

    def _session(self, timeout: float) -> contextlib.AbstractContextManager[redis.Redis]:
        if self.tls is None:
            return super()._session(timeout)
        return _connect(self.port, self.password, timeout, **self.tls_options())


def _tls_options(tls: ClusterTls) -> dict[str, Any]:
    return {"ssl": True, "ssl_ca_certs": str(tls.ca), "ssl_cert_reqs": "required"}


class RedisClusterGroup:
    """`masters` masters with `replicas_per_master` replicas each, in one Redis Cluster.

    Ports are chosen once: `restart(port)` brings a node back on the same port with the same
    `nodes.conf`, so it rejoins with its old identity (nothing else is persisted: `save ""`,
    no AOF; a restarted master comes back empty and becomes a replica of whoever took over).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        password: str | None = None,
        tls: ClusterTls | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.work_dir = Path(work_dir)
        self.password = password
        self.tls = tls
        self.replicas_per_master = replicas_per_master
        self._nodes: dict[int, _ClusterNode] = {}
        for _ in range(masters * (1 + replicas_per_master)):
            port = free_port()
            self._nodes[port] = _ClusterNode(self.work_dir / f"node-{port}", port=port, password=password, tls=tls)
        # Every pid ever started, restarted nodes' earlier ones included, for the leftover checks.
        self._pids: list[int] = []

    def __repr__(self) -> str:
        return f"RedisClusterGroup({list(self._nodes)}, work_dir={str(self.work_dir)!r})"

    # -- addresses and clients --------------------------------------------------------------

    def ports(self) -> list[int]:
        return list(self._nodes)

    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self._nodes]

    def url(self, index: int = 0) -> str:
        return self._nodes[self.ports()[index]].url

    def pids(self) -> list[int]:
        """Pids of every process this group started (running or not, restarts included)."""
        return list(self._pids)

    def running(self, port: int) -> bool:
        return self._node(port).running

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A sync client to one node (decoded responses), following no redirections: a MOVED or
        ASK reply raises `MovedError`/`AskError`. Close it, or use it as a context manager."""
        return self._node(port).client(**kwargs)

    def cluster_client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A sync cluster client from the seeds (decoded responses); close it after use."""
        options: dict[str, Any] = {
            "startup_nodes": [
                redis.cluster.ClusterNode("127.0.0.1", port)  # type: ignore[no-untyped-call]
                for port in self._nodes
            ],
            "password": self.password,
            "decode_responses": True,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
        if self.tls is not None:
            options.update(_tls_options(self.tls))
        options.update(kwargs)
        return redis.cluster.RedisCluster(**options)

    def command(self, port: int, *args: Any, timeout: float = 5) -> Any:
        """One raw command to one node on a fresh connection (redirections are errors)."""
        return self._node(port).command(*args, timeout=timeout)

    # -- topology ---------------------------------------------------------------------------

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        """The key's hash slot: redis-py's CRC16 with `{tag}` handling (checked against CLUSTER
        KEYSLOT by the harness tests)."""
        return redis.crc.key_slot(key.encode() if isinstance(key, str) else key)

    def masters(self) -> list[ClusterMaster]:
        """The masters owning slots, as the first live node that answers sees them."""
        entries = self._view(self._any_live_port())
        return sorted(
            (ClusterMaster(e.port, e.node_id, list(e.slots)) for e in entries if e.is_master and e.slots),
            key=lambda m: m.slots[0],
        )

    def master_of_slot(self, slot: int) -> int:
        for master in self.masters():
            if any(first <= slot <= last for first, last in master.slots):
                return master.port
        raise LookupError(f"no master owns slot {slot}")

    def node_id(self, port: int) -> str:
        return str(self.command(port, "CLUSTER", "MYID"))

    def replicas_of(self, master_port: int) -> list[int]:
        """Ports of the live, connected replicas of the master on `master_port`."""
        entries = self._view(master_port)
        master_id = next(e.node_id for e in entries if "myself" in e.flags)
        return [e.port for e in entries if e.master_id == master_id and not e.failing and self._node(e.port).running]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RedisClusterGroup:
        """Start every node, create the cluster (redis-cli picks masters and replicas) and wait until
        it is settled: every node `cluster_state:ok`, sees every other, agrees on the slot map, and
        every replica is in sync with its master."""
        try:
            for node in self._nodes.values():
                self._start_node(node)
            argv = [REDIS_CLI, "--cluster", "create", *self.seeds()]
            argv += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            if self.password is not None:
                argv += ["-a", self.password, "--no-auth-warning"]
            if self.tls is not None:
                argv += [
                    "--tls",
                    "--cacert",
                    str(self.tls.ca),
                    "--cert",
                    str(self.tls.cert),
                    "--key",
                    str(self.tls.key),
                ]
            log = self.work_dir / "cluster-create.log"
            try:
                done = subprocess.run(
                    argv,
                    cwd=self.work_dir,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=START_TIMEOUT,
                    start_new_session=True,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:  # run() has killed it
                raise RuntimeError(f"{' '.join(argv[:3])} took over {START_TIMEOUT:g}s\n{self._details()}") from exc
            log.write_bytes(done.stdout + done.stderr)
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")
                raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n{output}")
            self._wait_settled("the new cluster to settle", START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every node this group started (SIGKILL after the grace period); safe to repeat."""
        for node in self._nodes.values():
            node.stop()

    @contextlib.contextmanager
    def frozen(self, port: int) -> Iterator[None]:
        """The node on `port` stopped (SIGSTOP) for the block, then resumed (SIGCONT) whatever happens."""
        pid = self._node(port).pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def kill_master(self, slot: int) -> tuple[int, int]:
        """SIGKILL the master owning `slot` and wait until one of its replicas has been promoted:
        every surviving node is `cluster_state:ok` and agrees that the new master serves `slot`.
        Returns `(old_port, new_port)`. Takes about 2 s: ~1.5 s until the master is marked FAIL,
        then ~0.5-1 s of election delay, during which every node says `cluster_state:fail` (full
        coverage is required) and refuses commands for all slots, not only the dead master's."""
        old = self.master_of_slot(slot)
        if not self.replicas_of(old):
            raise RuntimeError(f"the master on {old} (slot {slot}) has no live replica to promote")
        self._node(old).kill()

        def promoted() -> bool:
            owners = {self._owner_of(port, slot) for port in self._live_ports()}
            new = owners.pop() if len(owners) == 1 else None
            if new is None or new == old:
                return False
            return self.command(new, "ROLE")[0] == "master" and self._settled()

        _wait_until(promoted, FAILOVER_TIMEOUT, f"a replica of {old} to take over slot {slot}", self._details)
        return old, self.master_of_slot(slot)

    def kill_all(self) -> None:
        """SIGKILL every node: the whole cluster crashes (its data was never persisted: it comes back empty)."""
        for node in self._nodes.values():
            if node.running:
                node.kill()

    def restart_all(self) -> None:
        """Start every stopped node on its port with its `nodes.conf` and wait until the cluster is settled
        again, with the slots where they were."""
        for node in self._nodes.values():
            if not node.running:
                self._start_node(node)
        self._wait_settled("the whole cluster to come back", FAILOVER_TIMEOUT)

    def restart(self, port: int) -> None:
        """Bring a stopped or killed node back on its port with its `nodes.conf`: a former master
        rejoins as a replica of the node that took over its slots. Waits until it is connected
        (no live node flags it failing), in sync, and the cluster is settled."""
        node = self._node(port)
        if node.running:
            raise RuntimeError(f"{node!r} is still running")
        self._start_node(node)
        self._wait_settled(f"{node!r} to rejoin the cluster", FAILOVER_TIMEOUT)

    def migrate_slot(
        self, slot: int, to_port: int, *, batch: int = 100, between_batches: Callable[[], None] | None = None
    ) -> None:
        """Move `slot` and its keys to the master on `to_port`, the way redis-cli reshards: mark
        it IMPORTING on the target and MIGRATING on the source, MIGRATE its keys `batch` at a time
        (calling `between_batches` after each batch, while the slot is half-moved), then assign it
        with SETSLOT NODE on the target, the source and every other master; waits until every live
        node agrees."""
        source = self.master_of_slot(slot)
        if source == to_port:
            raise ValueError(f"slot {slot} is already served by {to_port}")
        if self.command(to_port, "ROLE")[0] != "master":
            raise ValueError(f"{to_port} is not a master")
        source_id, target_id = self.node_id(source), self.node_id(to_port)
        others = [m.port for m in self.masters() if m.port not in (source, to_port)]
        # Target first: once the source says MIGRATING it sends ASK there, which must be accepted.
        self.command(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        auth = ["AUTH", self.password] if self.password is not None else []
        # MIGRATE itself: the source connects to the target like a cluster peer (TLS with `tls-cluster`).
        with self._node(source)._session(MIGRATE_TIMEOUT_MS / 1000 + 5) as client:
            while keys := _execute(client, "CLUSTER", "GETKEYSINSLOT", slot, batch):
                # "" and KEYS: the multi-key form; no REPLACE: a key on both sides is a bug to see.
                args = ["MIGRATE", "127.0.0.1", to_port, "", 0, MIGRATE_TIMEOUT_MS, *auth, "KEYS", *keys]
                _execute(client, *args)
                if between_batches is not None:
                    between_batches()
        # Target first again (it ends IMPORTING), then the source (it refuses while it still holds
        # keys of the slot), then the others so nobody answers with the old owner meanwhile.
        for port in [to_port, source, *others]:
            self.command(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

        def moved() -> bool:
            return all(self._owner_of(port, slot) == to_port for port in self._live_ports()) and self._settled()

        _wait_until(moved, FAILOVER_TIMEOUT, f"every node to see slot {slot} on {to_port}", self._details)

    # -- internals --------------------------------------------------------------------------

    def _node(self, port: int) -> _ClusterNode:
        try:
            return self._nodes[port]
        except KeyError:
            raise KeyError(f"{port} is not a node of {self!r}") from None

    def _start_node(self, node: _ClusterNode) -> None:
        node.start()
        self._pids.append(node.pid)

    def _live_ports(self) -> list[int]:
        return [port for port, node in self._nodes.items() if node.running]

    def _any_live_port(self) -> int:
        for port in self._live_ports():
            with contextlib.suppress(redis.RedisError):
                self.command(port, "PING", timeout=2)
                return port
        raise RuntimeError(f"no node of {self!r} answers")

    def _cluster_info(self, port: int) -> dict[str, str]:
        reply = self.command(port, "CLUSTER", "INFO")
        if isinstance(reply, dict):
            return {str(k): str(v) for k, v in reply.items()}
        return dict(line.split(":", 1) for line in str(reply).splitlines() if ":" in line)

    def _view(self, port: int) -> list[_NodeEntry]:
        return _parse_nodes(str(self.command(port, "CLUSTER", "NODES")))

    def _owner_of(self, port: int, slot: int) -> int | None:
        """The port of the master that owns `slot` in the view of the node on `port`."""
        for (first, last), owner in _owner_map(self._view(port)).items():
            if first <= slot <= last:
                return owner
        return None

    def _settled(self) -> bool:
        """Every live node: `cluster_state:ok`, knows every node, flags no live node failing, and
        sees the same full slot map and the same role and master for every live node; every live
        replica is in sync with its master.

        Roles are compared too because slots and roles travel separately: a restarted master is
        a synced replica (and no longer claims slots) up to a bus ping before the others stop
        listing it as a master."""
        live = self._live_ports()
        views = []
        for port in live:
            info = self._cluster_info(port)
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self._nodes):
                return False
            entries = self._view(port)
            if any(e.failing for e in entries if e.port in live):
                return False
            views.append((_owner_map(entries), _roles(entries, live)))
        if not views or any(v != views[0] for v in views) or _covered(views[0][0]) != SLOTS:
            return False
        for port in live:
            replication = self._node(port).info("replication")
            if replication["role"] == "slave" and (
                replication.get("master_link_status") != "up" or replication.get("master_sync_in_progress")
            ):
                return False
        return True

    def _wait_settled(self, what: str, timeout: float) -> None:
        _wait_until(self._settled, timeout, what, self._details)

    def _details(self) -> str:
        parts = []
        for port, node in self._nodes.items():
            state = "running" if node.running else "stopped"
            parts.append(f"--- node {port} ({state}), {node.log_path}\n{node.log(15)}")
        return "\n".join(parts)
