"""Real `redis-server` and `redis-sentinel` processes for the scale-out fault tests.

Everything runs on free 127.0.0.1 ports with config, data and logs inside the given work
directory; nothing reads or writes /etc or the default ports. Every process is started in its
own session so `stop()`/`kill()` can signal the whole process group, and every wait is bounded.

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        server.command("SET", "k", "v")
        server.restart()                      # same port and data dir: AOF data survives
        assert server.command("GET", "k") == "v"
    finally:
        server.stop()

    group = SentinelGroup(tmp_path / "sentinel").start()
    try:
        old = group.master_address()
        new = group.fail_master()             # SIGKILL the master, wait for the promotion
    finally:
        group.stop()
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.procs import free_port, tail
from tests.support.procs import quote as config_quote

REDIS_SERVER = "redis-server"
REDIS_SENTINEL = "redis-sentinel"
STOP_GRACE = 5.0


def _wait_until(check: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] | None = None) -> None:
    """Poll `check` (exceptions count as "not yet") until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if detail is not None:
                message += "\n" + detail()
            raise TimeoutError(message)
        time.sleep(0.05)


@contextlib.contextmanager
def _connect(port: int, password: str | None = None, timeout: float = 5, **options: Any) -> Iterator[redis.Redis]:
    """One connection to 127.0.0.1:`port`, no retries (a failure must show, not be papered over);
    `options` are further redis-py client options (e.g. `ssl=True, ssl_ca_certs=...`)."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
        **options,
    )
    try:
        yield client
    finally:
        client.close()


def _execute(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class _Daemon:
    """One foreground process in its own session, output appended to a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def spawn(self, argv: list[str], cwd: Path) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return f"--- last lines of {self.log_path} ---\n{tail(self.log_path, lines)}"

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
        """Send `sig`, wait up to `grace` seconds, then SIGKILL the process group."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # Also reaps anything the process left behind in its group.
            self.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_GRACE)
        self._close_log()

    def kill(self) -> None:
        self.stop(signal.SIGKILL, grace=STOP_GRACE)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class RedisServer:
    """A `redis-server` on 127.0.0.1 with its config, data dir and log in `workdir`.

    `workdir` belongs to this server alone (`redis.conf`, `redis.log`, `data/`). The port is
    chosen once, so `restart()` comes back on the same port with the same data dir: with
    `appendonly=True` (and `appendfsync always`) the data survives even `kill()`; without it
    nothing is persisted (`save ""`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        replica_of: tuple[str, int] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self._port = port if port is not None else free_port()
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of
        self.config_path = self.workdir / "redis.conf"
        self.log_path = self.workdir / "redis.log"
        self.data_dir = self.workdir / "data"
        self._daemon = _Daemon(f"redis-server :{self._port}", self.log_path)

    def __repr__(self) -> str:
        state = f"pid {self._daemon.pid}" if self.running else "stopped"
        role = f" replica of {self.replica_of[0]}:{self.replica_of[1]}" if self.replica_of else ""
        return f"RedisServer(127.0.0.1:{self._port}{role}, {state}, workdir={str(self.workdir)!r})"

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int:
        return self._daemon.pid

    @property
    def running(self) -> bool:
        return self._daemon.running

    def log(self, lines: int = 50) -> str:
        return tail(self.log_path, lines)

    # -- lifecycle --------------------------------------------------------------------------

    def config_text(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {self._port}",
            "protected-mode no",
            "daemonize no",
            'logfile ""',  # stdout, which start() appends to redis.log
            f"dir {config_quote(self.data_dir)}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "repl-diskless-sync-delay 0",  # full syncs start at once (the default waits 5 s)
        ]
        if self.appendonly:
            lines.append("appendfsync always")
        if self.password is not None:
            lines += [f"requirepass {config_quote(self.password)}", f"masterauth {config_quote(self.password)}"]
        if self.replica_of is not None:
            host, port = self.replica_of
            lines.append(f"replicaof {host} {port}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10) -> RedisServer:
        """Write the config, start the server and wait until PING answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._daemon.spawn([REDIS_SERVER, str(self.config_path)], cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if not self._daemon.running:
                code = self._daemon.proc.returncode if self._daemon.proc else None
                self._daemon.stop()
                raise RuntimeError(f"redis-server on port {self._port} exited with {code}\n{self._daemon.tail()}")
            try:
                if self.command("PING", timeout=1) is True:
                    return self
            except redis.RedisError:
                pass
            if time.monotonic() >= deadline:
                self._daemon.stop(signal.SIGKILL)
                raise RuntimeError(
                    f"redis-server on port {self._port} did not answer PING within {timeout:g}s\n{self._daemon.tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (no RDB save: `save ""`; the AOF is already fsynced), SIGKILL after 5 s."""
        self._daemon.stop(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, like a crashed node."""
        self._daemon.kill()

    def restart(self, timeout: float = 10) -> RedisServer:
        self.stop()
        return self.start(timeout)

    # -- clients ----------------------------------------------------------------------------

    def client(self, *, timeout: float = 5, **kwargs: Any) -> redis.Redis:
        """A new sync client (decoded responses); close it, or use it as a context manager."""
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self._port,
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A new `redis.asyncio` client (decoded responses); `await client.aclose()` it."""
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self._port,
            "password": self.password,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "decode_responses": True,
        }
        options.update(kwargs)
        return redis.asyncio.Redis(**options)

    def _session(self, timeout: float) -> contextlib.AbstractContextManager[redis.Redis]:
        return _connect(self._port, self.password, timeout)

    def command(self, *args: Any, timeout: float = 5) -> Any:
        """Run one raw command on a fresh connection, e.g. `command("SET", "k", "v")`."""
        with self._session(timeout) as client:
            return _execute(client, *args)

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def info(self, section: str = "default") -> dict[str, Any]:
        with self._session(5) as client:
            return client.info(section)

    def client_names(self) -> list[str]:
        """Names of the connected clients that set one (CLIENT SETNAME), in CLIENT LIST order."""
        with self._session(5) as client:
            own_id = client.client_id()
            return [c["name"] for c in client.client_list() if c.get("name") and int(c["id"]) != own_id]

    def client_kill(self, name_prefix: str) -> int:
        """Kill every client whose name starts with `name_prefix`; returns how many were killed."""
        if not name_prefix:
            raise ValueError("name_prefix must not be empty (that would kill every client, replicas included)")
        killed = 0
        with self._session(5) as client:
            own_id = client.client_id()
            for entry in client.client_list():
                name = entry.get("name") or ""
                if name.startswith(name_prefix) and int(entry["id"]) != own_id:
                    killed += int(_execute(client, "CLIENT", "KILL", "ID", entry["id"]))
        return killed

    def role(self) -> str:
        """ "master" or "slave" (ROLE)."""
        reply = self.command("ROLE")
        return str(reply[0])

    def wait_for_replication(self, timeout: float = 10) -> None:
        """For a replica: wait until the link to its master is up, the initial sync is done and it
        has caught up with the master's replication offset (when the master is reachable)."""
        if self.replica_of is None:
            raise RuntimeError(f"{self!r} is not a replica")

        def synced() -> bool:
            info = self.info("replication")
            return bool(info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"))

        _wait_until(synced, timeout, f"{self!r} to sync with its master", lambda: self._daemon.tail())
        _, master_port = self.replica_of
        try:
            with _connect(master_port, self.password, 2) as master:
                target = int(master.info("replication")["master_repl_offset"])
        except redis.RedisError:
            return  # master gone: nothing more to catch up with
        _wait_until(
            lambda: int(self.info("replication")["slave_repl_offset"]) >= target,
            timeout,
            f"{self!r} to reach the master's replication offset {target}",
        )


class SentinelGroup:
    """A master, one replica and three `redis-sentinel`s (quorum 2) watching `service`.

    Fast failure detection: `down-after-milliseconds 1000`, `failover-timeout 5000`. After
    `fail_master()` the promoted server is `master` and the killed one is `replica` (configured
    to replicate from the new master, so `group.replica.start()` brings it back as a replica).
    """

    SENTINELS = 3
    QUORUM = 2

    def __init__(self, workdir: Path, *, service: str = "hubbub", password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self._service = service
        self.password = password
        self.master = RedisServer(self.workdir / "master", password=password)
        self.replica = RedisServer(self.workdir / "replica", password=password, replica_of=self.master.address)
        self._sentinel_ports = [free_port() for _ in range(self.SENTINELS)]
        self._sentinels = [
            _Daemon(f"redis-sentinel :{port}", self.workdir / f"sentinel-{port}" / "sentinel.log")
            for port in self._sentinel_ports
        ]

    def __repr__(self) -> str:
        return f"SentinelGroup({self._service!r}, master={self.master!r}, sentinels={self._sentinel_ports})"

    @property
    def service(self) -> str:
        return self._service

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self._sentinel_ports]

    @property
    def pids(self) -> list[int]:
        """Pids of every process this group started (running or not)."""
        daemons = [self.master._daemon, self.replica._daemon, *self._sentinels]
        return [d.proc.pid for d in daemons if d.proc is not None]

    def sentinel_config_text(self, port: int) -> str:
        host, master_port = self.master.address
        svc = self._service
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode no",
            "daemonize no",
            'logfile ""',
            f"dir {config_quote(self.workdir / f'sentinel-{port}')}",
            "sentinel resolve-hostnames no",
            "sentinel announce-ip 127.0.0.1",
            f"sentinel monitor {svc} {host} {master_port} {self.QUORUM}",
            f"sentinel down-after-milliseconds {svc} 1000",
            f"sentinel failover-timeout {svc} 5000",
            f"sentinel parallel-syncs {svc} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {svc} {config_quote(self.password)}")
        return "\n".join(lines) + "\n"

    def sentinel_command(self, index: int, *args: Any, timeout: float = 2) -> Any:
        with _connect(self._sentinel_ports[index], None, timeout) as client:
            return _execute(client, *args)

    def _addr_from(self, index: int) -> tuple[str, int] | None:
        reply = self.sentinel_command(index, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service)
        if not reply:
            return None
        return (str(reply[0]), int(reply[1]))

    def master_address(self) -> tuple[str, int]:
        """The master address as reported by the first sentinel that answers."""
        errors: list[str] = []
        for index in range(self.SENTINELS):
            try:
                addr = self._addr_from(index)
            except redis.RedisError as exc:
                errors.append(f":{self._sentinel_ports[index]} {exc!r}")
                continue
            if addr is not None:
                return addr
            errors.append(f":{self._sentinel_ports[index]} does not know {self._service!r}")
        raise RuntimeError("no sentinel reported the master: " + "; ".join(errors))

    def _details(self) -> str:
        parts = [f"--- {self.master!r}\n{self.master.log(20)}", f"--- {self.replica!r}\n{self.replica.log(20)}"]
        parts += [d.tail(20) for d in self._sentinels]
        return "\n".join(parts)

    def _sentinel_ready(self, index: int) -> bool:
        if self._addr_from(index) != self.master.address:
            return False
        replicas = self.sentinel_command(index, "SENTINEL", "REPLICAS", self._service)
        replica_ports = {_pairs(r).get("port") for r in replicas if "s_down" not in _pairs(r).get("flags", "")}
        if str(self.replica.port) not in replica_ports:
            return False
        others = self.sentinel_command(index, "SENTINEL", "SENTINELS", self._service)
        return len(others) >= self.SENTINELS - 1

    def start(self, timeout: float = 20) -> SentinelGroup:
        """Start master, replica (synced) and the sentinels; wait until every sentinel knows the
        master, the replica and the other sentinels."""
        try:
            self.master.start()
            self.replica.start()
            self.replica.wait_for_replication(timeout)
            for port, daemon in zip(self._sentinel_ports, self._sentinels, strict=True):
                workdir = self.workdir / f"sentinel-{port}"
                workdir.mkdir(parents=True, exist_ok=True)
                config = workdir / "sentinel.conf"  # sentinel rewrites it: must be writable
                config.write_text(self.sentinel_config_text(port))
                daemon.spawn([REDIS_SENTINEL, str(config)], cwd=workdir)
            for index, daemon in enumerate(self._sentinels):
                _wait_until(
                    functools.partial(self._sentinel_ready, index),
                    timeout,
                    f"sentinel {daemon.name} to see master, replica and peers",
                    self._details,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def fail_master(self, timeout: float = 30) -> tuple[str, int]:
        """SIGKILL the current master, wait until every live sentinel reports the promoted replica
        and that server answers ROLE as master; returns the new master address."""
        old, new = self.master, self.replica
        if self.master_address() != old.address:
            raise RuntimeError(f"sentinels do not report {old!r} as master before the failover")
        old.kill()

        def promoted() -> bool:
            live = [i for i, d in enumerate(self._sentinels) if d.running]
            return all(self._addr_from(i) == new.address for i in live) and new.role() == "master"

        _wait_until(promoted, timeout, f"sentinels to promote {new!r}", self._details)
        self.master, self.replica = new, old
        new.replica_of = None
        old.replica_of = new.address
        return new.address

    def stop(self) -> None:
        """Stop the sentinels first (so they do not react), then the replica and the master."""
        for daemon in self._sentinels:
            daemon.stop(signal.SIGTERM)
        self.replica.stop()
        self.master.stop()


def _pairs(reply: Any) -> dict[str, str]:
    """SENTINEL REPLICAS entries come as flat [key, value, ...] lists (RESP2) or dicts."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply)
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}
