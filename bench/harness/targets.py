"""The targets: the table of servers benchmarked, the private Redis they share, and starting one
target's processes until they are ready.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import API_KEY, BENCH, READY_TIMEOUT, SECRET, STOP_GRACE, TARGETS_DIR
from .errors import BenchError
from .processes import Proc, free_port, http_ok, printed_ready, tcp_open, wait_until


@dataclass(frozen=True)
class Target:
    name: str  # the --targets name and the key in the results
    label: str  # how the docs call it
    proto: str  # the load generator's --proto
    uses_redis: bool
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("hubbub", "hubbub", "hubbub", True, "two `hubbub serve` nodes sharing Redis"),
        Target(
            "socketio",
            "socket.io",
            "socketio",
            True,
            "two Node socket.io 4 processes on `@socket.io/redis-adapter` (`redis` client)",
        ),
        Target(
            "pysocketio",
            "python-socketio",
            "socketio",
            True,
            "two python-socketio `AsyncServer` processes with `AsyncRedisManager`, ASGI on uvicorn",
        ),
        Target("ws", "ws", "ws", False, "one bare Node `ws` broadcast process, no broker (the ceiling)"),
    )
}
TARGET_ALIASES = {"socket.io": "socketio", "python-socketio": "pysocketio", "py-socketio": "pysocketio"}


class Redis:
    """A private redis-server, no persistence, on a free port, pinned with the servers."""

    def __init__(self, workdir: Path, cpu: int | None) -> None:
        self.workdir = workdir
        self.cpu = cpu
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--maxclients", "10000"]
        self.proc = Proc("redis", argv, self.workdir / "redis.log", self.cpu).start()
        wait_until(lambda: self.command("PING") is not None, READY_TIMEOUT, "redis-server", [self.proc])
        return self

    def command(self, *args: str) -> Any:
        import redis  # hubbub's own dependency

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, decode_responses=True)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@dataclass
class Running:
    target: Target
    procs: list[Proc]
    urls: list[str]

    def stop(self) -> None:
        """Every process at once: the stop signal to all, SIGKILL to those still there after 5 s."""
        for proc in self.procs:
            proc.signal_stop()
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs:
            proc.stop(deadline)


def hubbub_argv() -> list[str]:
    script = Path(sys.executable).parent / "hubbub"
    if script.is_file():
        return [str(script), "serve"]
    return [sys.executable, "-m", "hubbub", "serve"]


def start_target(
    target: Target, redis: Redis | None, logdir: Path, cpu: int | None, namespace: Mapping[str, bool] | None = None
) -> Running:
    procs: list[Proc] = []
    urls: list[str] = []
    try:
        if target.name == "hubbub":
            assert redis is not None
            for node in ("a", "b"):
                port = free_port()
                config = {
                    "mode": "production",
                    "jwt_secret": SECRET,
                    "api_key": API_KEY,
                    "redis_url": redis.url,
                    "node_name": f"bench-{node}",
                    "namespaces": {"bench": {"history_size": 100, "client_publish": True, **(namespace or {})}},
                    "command_rate": 100000,
                    "command_burst": 100000,
                    "max_queue_bytes": 8388608,
                    "max_connections": 100000,
                    "log_level": "warning",
                }
                config_path = logdir / f"hubbub-{node}.json"
                config_path.parent.mkdir(parents=True, exist_ok=True)
                config_path.write_text(json.dumps(config, indent=2))
                argv = [*hubbub_argv(), "--host", "127.0.0.1", "--port", str(port), "--config", str(config_path)]
                # SIGINT: hubbub stops at once (SIGTERM would drain for drain_delay + drain_period).
                proc = Proc(f"hubbub-{node}", argv, logdir / f"hubbub-{node}.log", cpu, stop_signal=signal.SIGINT)
                procs.append(proc.start())
                urls.append(f"ws://127.0.0.1:{port}/ws")
            for proc, url in zip(procs, urls, strict=True):
                readyz = url.replace("ws://", "http://").replace("/ws", "/readyz")
                wait_until(functools.partial(http_ok, readyz), READY_TIMEOUT, f"{proc.name} /readyz", procs)
        elif target.name == "socketio":
            assert redis is not None
            for node in ("a", "b"):
                port = free_port()
                argv = ["node", str(TARGETS_DIR / "socketio-server.mjs"), "--port", str(port)]
                argv += ["--redis", redis.url, "--secret", SECRET]
                procs.append(Proc(f"socketio-{node}", argv, logdir / f"socketio-{node}.log", cpu, BENCH).start())
                urls.append(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
            for proc in procs:
                wait_until(functools.partial(printed_ready, proc), READY_TIMEOUT, f"{proc.name} to print ready", procs)
        elif target.name == "pysocketio":
            assert redis is not None
            ports = []
            for node in ("a", "b"):
                port = free_port()
                argv = [sys.executable, str(TARGETS_DIR / "pysocketio_server.py"), "--port", str(port)]
                argv += ["--redis", redis.url, "--secret", SECRET]
                procs.append(Proc(f"pysocketio-{node}", argv, logdir / f"pysocketio-{node}.log", cpu).start())
                urls.append(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
                ports.append(port)
            for proc, port in zip(procs, ports, strict=True):
                wait_until(functools.partial(tcp_open, port), READY_TIMEOUT, f"{proc.name} to listen", procs)
        elif target.name == "ws":
            port = free_port()
            argv = ["node", str(TARGETS_DIR / "ws-server.mjs"), "--port", str(port), "--secret", SECRET]
            procs.append(Proc("ws", argv, logdir / "ws.log", cpu, BENCH).start())
            urls.append(f"ws://127.0.0.1:{port}/")
            wait_until(lambda: printed_ready(procs[0]), READY_TIMEOUT, "ws to print ready", procs)
        else:
            raise BenchError(f"unknown target {target.name}")
    except BaseException:
        Running(target, procs, urls).stop()
        raise
    return Running(target, procs, urls)
