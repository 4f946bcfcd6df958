"""A real nginx load balancer in front of several hubbub nodes, for the scale-out fault tests.

nginx runs in the foreground (`daemon off`) with everything - config, pid file, logs, temp
paths - inside `workdir`, listening on a free 127.0.0.1 port, so it never touches /etc, /var
or port 80 (it also runs fine as root).

Routing (upstream `hubbub`):

* Session affinity: a request carrying `?sid=<id>` is routed by `hash <id> consistent`, so every
  connection with the same sid lands on the same node while that node is up. Requests without
  `sid` hash on `$remote_addr:$remote_port` instead, i.e. each new TCP connection lands on an
  effectively random node (spread, not sticky). The choice is made by a `map` on `$arg_sid`.
  `SidRouting(balance="least_conn")` or `"round_robin"` replace the hash (no affinity): new connections
  go to the node with the fewest of this nginx's connections, or to each node in turn
  (tests/process/scaleout/test_rebalance.py).
* Failover: every server has `max_fails=1 fail_timeout=2s` and the proxy uses
  `proxy_next_upstream error timeout`, so when a node is down a new connection (including a
  sid-pinned one) is retried on the next node of the hash ring, and the dead node is skipped
  for 2 s before nginx tries it again.
* Reload: the old worker keeps its open connections for `shutdown_timeout` seconds (2 by default),
  then cuts them; a test that must keep them across a reload (rebalancing) sets it long.
* HTTP and WebSocket: `proxy_http_version 1.1` with `Upgrade`/`Connection` passed through
  (`map $http_upgrade $connection_upgrade`) and 3600 s read/send timeouts.

The access log (`access.log`) records the upstream that served each request.

That routing is `SidRouting`, the default. Another `Routing` (tests/support/ingress.py renders an
Ingress the way ingress-nginx would) replaces the maps, upstreams and server blocks; the process
management, the temp paths, the logs and the `$connection_upgrade` map stay the same.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Literal, Protocol

import psutil

from tests.support.procs import free_port, quote, tail

NGINX = "/usr/sbin/nginx"
STOP_GRACE = 5.0
#: Answered by nginx itself (never proxied), so start() can tell nginx from another listener.
HEALTH_PATH = "/__nginx_health"
#: How SidRouting's upstream picks a node for a new connection.
Balance = Literal["hash", "least_conn", "round_robin"]
_BALANCE: dict[str, str] = {
    "hash": "hash $hubbub_affinity consistent;",
    "least_conn": "least_conn;",
    "round_robin": "",
}


class NginxError(RuntimeError):
    """nginx rejected its config or did not come up; the message carries nginx's own error."""


class Routing(Protocol):
    """What goes into nginx's `http {}` block after the shared part: maps, upstreams and servers.

    Every server that listens on `port` must answer `health_location(port)` (start() and reload()
    tell their nginx from another listener by it)."""

    def http_block(self, port: int, upstreams: list[int]) -> str: ...


def health_location(port: int) -> str:
    """The location nginx answers itself, for start() to tell this nginx from another listener."""
    return f"""\
        location = {HEALTH_PATH} {{
            access_log off;
            return 200 "nginx {port}\\n";
        }}
"""


class SidRouting:
    """Sticky by `?sid=<id>` (`hash ... consistent`), spread otherwise; see the module docstring."""

    def __init__(self, balance: Balance = "hash") -> None:
        self.balance = balance

    def http_block(self, port: int, upstreams: list[int]) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
        return f"""\
    # Sticky by ?sid=<id>; without a sid, spread by client address and port.
    map $arg_sid $hubbub_affinity {{
        ''      $remote_addr:$remote_port;
        default $arg_sid;
    }}

    upstream hubbub {{
        {_BALANCE[self.balance]}
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};

{health_location(port)}
        location / {{
            proxy_pass http://hubbub;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            proxy_next_upstream error timeout;
        }}
    }}
"""


class Nginx:
    """nginx on 127.0.0.1:`port` load-balancing HTTP and WebSocket over 127.0.0.1:`upstreams`."""

    def __init__(
        self,
        workdir: Path,
        upstreams: list[int],
        *,
        port: int | None = None,
        routing: Routing | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        if not upstreams:
            raise ValueError("nginx needs at least one upstream port")
        self.shutdown_timeout = shutdown_timeout
        self.workdir = Path(workdir)
        self.upstreams = list(upstreams)
        self.routing: Routing = routing if routing is not None else SidRouting()
        self._port = port if port is not None else free_port()
        self.config_path = self.workdir / "nginx.conf"
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.pid_path = self.workdir / "nginx.pid"
        self.output_path = self.workdir / "nginx.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running and self._proc else "stopped"
        return f"Nginx(127.0.0.1:{self._port} -> {self.upstreams}, {state})"

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws"

    @property
    def pid(self) -> int:
        """The master process."""
        if self._proc is None:
            raise RuntimeError("nginx was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def worker_pids(self) -> list[int]:
        if not self.running:
            return []
        with contextlib.suppress(psutil.Error):
            return [child.pid for child in psutil.Process(self.pid).children()]
        return []

    def log(self, lines: int = 40) -> str:
        return f"--- {self.error_log} ---\n{tail(self.error_log, lines)}\n--- {self.output_path} ---\n" + tail(
            self.output_path, lines
        )

    # -- config -----------------------------------------------------------------------------

    def config_text(self) -> str:
        tmp = self.workdir / "tmp"
        # The master runs as whoever runs the tests; as root, nginx would switch the workers to
        # `nobody`, which cannot reach a private temp dir, so keep them as the same user.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout {self.shutdown_timeout:g}s;
{user}
pid {quote(self.pid_path)};
lock_file {quote(self.workdir / "nginx.lock")};
error_log {quote(self.error_log)} info;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstream '$remote_addr:$remote_port "$request" $status upstream=$upstream_addr';
    access_log {quote(self.access_log)} upstream;
    client_body_temp_path {quote(tmp / "client_body")};
    proxy_temp_path {quote(tmp / "proxy")};
    fastcgi_temp_path {quote(tmp / "fastcgi")};
    uwsgi_temp_path {quote(tmp / "uwsgi")};
    scgi_temp_path {quote(tmp / "scgi")};

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

{self.routing.http_block(self._port, self.upstreams)}}}
"""

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(self.error_log), *extra]

    def check_config(self) -> None:
        """`nginx -t`; raises NginxError with nginx's message when the config is rejected."""
        result = subprocess.run(self._argv("-t"), capture_output=True, timeout=20, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise NginxError(f"nginx -t failed for {self.config_path}:\n{output}\n{tail(self.error_log)}")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> Nginx:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._write_config()
        self.check_config()
        self._out = self.output_path.open("ab")
        self._proc = subprocess.Popen(
            self._argv(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise NginxError(f"nginx exited with {code} during start\n{self.log()}")
            if self._answers():
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise NginxError(f"nginx did not accept connections on {self._port} within {timeout:g}s\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """True once *this* nginx answers its health path (not just anything on the port)."""
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=1) as sock:
                sock.sendall(f"GET {HEALTH_PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.1 200") and reply.endswith(f"nginx {self._port}\n".encode())

    def reload(self, upstreams: list[int], timeout: float = 10) -> None:
        """Rewrite the config for the new upstreams, `nginx -t` it, SIGHUP, and wait until a new
        worker runs and the old ones no longer accept connections (they finish their open ones
        within `worker_shutdown_timeout`, 2 s)."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        if not upstreams:
            raise ValueError("nginx needs at least one upstream port")
        previous = self.upstreams
        self.upstreams = list(upstreams)
        self._write_config()
        try:
            self.check_config()
        except NginxError:
            self.upstreams = previous
            self._write_config()
            raise
        before = set(self.worker_pids())
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not (set(self.worker_pids()) - before and self._retired(before)):
            if not self.running:
                raise NginxError(f"nginx exited during reload\n{self.log()}")
            if time.monotonic() >= deadline:
                raise NginxError(f"nginx did not switch workers within {timeout:g}s of SIGHUP\n{self.log()}")
            time.sleep(0.05)

    def _retired(self, workers: set[int]) -> bool:
        """Every one of `workers` has exited or closed its listening socket, so new connections reach new
        workers only. (Its "gracefully shutting down" log line comes before it closes the socket: on a
        loaded machine an old worker can still accept connections for a while after it.)"""
        return not any(self._listening(pid) for pid in workers)

    def _listening(self, pid: int) -> bool:
        """Whether process `pid` holds a socket listening on this nginx's port."""
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:  # gone (or a zombie): it accepts nothing
            return False
        return any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == self._port for s in sockets)

    def stop(self) -> None:
        """SIGQUIT (graceful, bounded by `worker_shutdown_timeout 2s`), SIGKILL the whole process
        group after 5 s so no orphaned worker survives."""
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGQUIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(STOP_GRACE)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(STOP_GRACE)
        if self._out is not None:
            self._out.close()
            self._out = None

    def kill(self) -> None:
        """SIGKILL master and workers at once."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self.stop()
