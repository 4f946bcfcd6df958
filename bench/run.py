"""The hubbub benchmark: hubbub and its peers side by side on this machine, one load generator.

    .venv/bin/python bench/run.py            # full: 4 targets x 5 runs x 3 repeats; rewrites docs/benchmarks.md
    .venv/bin/python bench/run.py --smoke    # CI-sized (a few minutes): fails on a crash or on any hubbub loss
    .venv/bin/python bench/run.py --targets hubbub,ws --repeat 1 --out /tmp/bench --no-docs
    .venv/bin/python bench/run.py --report bench/results/<stamp>.json   # redraw docs/benchmarks.md from saved results

Targets (each started here, fresh for every scenario run, on 127.0.0.1):

- hubbub: two `hubbub serve` nodes sharing one Redis;
- socketio: two Node socket.io 4 processes on @socket.io/redis-adapter (bench/targets/socketio-server.mjs);
- pysocketio: two python-socketio AsyncServer + AsyncRedisManager processes on uvicorn
  (bench/targets/pysocketio_server.py);
- ws: one bare Node `ws` broadcast process, no broker (bench/targets/ws-server.mjs): the ceiling.

With two or more cores the servers and Redis are pinned to CPU 0 and the load generator (Go,
bench/loadgen, built here and cached by source hash) to CPU 1, so every server figure is per core.
Results go to `<out>/<UTC stamp>.json` (every run, medians, environment); see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TARGETS_DIR = BENCH / "targets"
LOADGEN_DIR = BENCH / "loadgen"
DOCS = ROOT / "docs"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubbub" / "bench"
SECRET = "hubbub-bench-jwt-secret-0123456789abcdef0123456789abcdef"
API_KEY = "hubbub-bench-api-key-0123456789abcdef"
SERVER_CPU = 0
LOADGEN_CPU = 1
STOP_GRACE = 5.0
READY_TIMEOUT = 30.0

# ---------------------------------------------------------------------------------------------
# Targets and scenarios


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


@dataclass(frozen=True)
class Scenario:
    key: str  # the key in the results: fanout, idle, connect_1, connect_50, rooms
    command: str  # the load generator's scenario
    flags: dict[str, int | float]
    budget_s: int  # the generator's --timeout; it is killed 30 s after that

    def argv(self) -> list[str]:
        out: list[str] = []
        for name, value in self.flags.items():
            out += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
        return out


def scenarios(smoke: bool) -> list[Scenario]:
    if smoke:
        fan = {"subscribers": 200, "rate": 1000, "rate-seconds": 3, "window": 64, "max-seconds": 3, "flood": 500}
        idle = {"connections": 500, "rooms": 10, "settle": 2}
        count = 200
        rooms = {"rooms": 1000, "connections": 300, "rate": 1000, "seconds": 3, "seed": 1}
    else:
        fan = {"subscribers": 1000, "rate": 5000, "rate-seconds": 10, "window": 64, "max-seconds": 10, "flood": 2000}
        idle = {"connections": 5000, "rooms": 100, "settle": 5}
        count = 2000
        rooms = {"rooms": 10000, "connections": 2000, "rate": 2000, "seconds": 10, "seed": 1}
    # The flood's deliveries may take a slow target a while: wait for them at 16,000 deliveries/s
    # (python-socketio manages about 20,000 on one core), 10 to 120 s, before counting the rest lost.
    fan["flood-wait"] = min(120, max(10, fan["flood"] * fan["subscribers"] // 16000))
    fan_budget = 60 + fan["subscribers"] // 50 + fan["rate-seconds"] + fan["max-seconds"] + 10 + fan["flood-wait"]
    return [
        Scenario("fanout", "fanout", dict(fan), fan_budget),
        Scenario("idle", "idle", dict(idle), 60 + idle["connections"] // 50 + idle["settle"]),
        Scenario("connect_1", "connect", {"count": count, "concurrency": 1}, 60 + count // 25),
        Scenario("connect_50", "connect", {"count": count, "concurrency": 50}, 60 + count // 25),
        Scenario(
            "rooms", "rooms", dict(rooms), 60 + rooms["connections"] // 25 + rooms["rooms"] // 100 + rooms["seconds"]
        ),
    ]


# Pairs the bench does not run, and why.
NOT_APPLICABLE = {
    ("ws", "rooms"): "the bare ws server holds one room per connection (the one in its URL)",
}

SCENARIO_TITLES = {
    "fanout": "Fan-out",
    "idle": "Idle memory",
    "connect_1": "Connect rate, one at a time",
    "connect_50": "Connect rate, 50 in flight",
    "rooms": "Many rooms",
}

# ---------------------------------------------------------------------------------------------
# Processes: every one started here is in its own session, pinned, with the fd limit raised,
# killed with the runner (PR_SET_PDEATHSIG) and stopped by PID (SIGTERM, then SIGKILL after 5 s).


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pinning_available() -> bool:
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return SERVER_CPU in cpus and LOADGEN_CPU in cpus


def child_setup(cpu: int | None) -> Callable[[], None]:
    """Runs in the child between fork and exec."""

    def setup() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the runner

    return setup


class Proc:
    """One child process, output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpu: int | None,
        cwd: Path = ROOT,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.log_path = log_path
        self.cpu = cpu
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(self.cpu),
        )
        PROCS.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)

    def stop(self, deadline: float | None = None) -> None:
        """The stop signal (unless sent already), SIGKILL at `deadline` (default: 5 s from now)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            if deadline is None:
                self.signal_stop()
                deadline = time.monotonic() + STOP_GRACE
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Not reaped yet, so its PID is still its own process group's id (it leads its own
                # session): SIGKILL it with anything it started.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in PROCS:
            PROCS.remove(self)


PROCS: list[Proc] = []


def stop_all() -> None:
    for proc in reversed(list(PROCS)):
        proc.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, procs: Iterable[Proc]) -> None:
    deadline = time.monotonic() + timeout
    watched = list(procs)
    while True:
        for proc in watched:
            if not proc.alive:
                raise BenchError(f"{proc.name} exited while starting:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            details = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in watched)
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}\n{details}")
        time.sleep(0.05)


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return int(response.status) == 200


def printed_ready(proc: Proc) -> bool:
    return any(line.strip() == "ready" for line in proc.log_path.read_text(errors="replace").splitlines())


class BenchError(RuntimeError):
    pass


class GeneratorFailed(BenchError):
    """The load generator exited 1; `partial` is what it measured until then (kept in the results)."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


# ---------------------------------------------------------------------------------------------
# Setup: npm packages, the load generator, Redis


def run_step(
    argv: Sequence[str], what: str, timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise BenchError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def ensure_npm() -> None:
    """`npm ci` in bench/ when package.json/package-lock.json changed (the stamp scripts/install uses too)."""
    stamp = ROOT / ".venv" / ".stamps" / "bench-npm"
    digest = hashlib.sha256((BENCH / "package.json").read_bytes() + (BENCH / "package-lock.json").read_bytes())
    wanted = digest.hexdigest()
    with contextlib.suppress(OSError):
        if stamp.read_text().strip() == wanted and (BENCH / "node_modules").is_dir():
            return
    if shutil.which("npm") is None:
        raise BenchError("npm is required (scripts/install installs it)")
    log("npm ci in bench/")
    run_step(["npm", "ci", "--silent", "--no-audit", "--no-fund"], "npm ci in bench/", 600, cwd=BENCH)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted + "\n")


def find_go() -> str:
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("Go is required to build bench/loadgen (scripts/build-k8s needs it too)")


def loadgen_hash() -> str:
    digest = hashlib.sha256()
    files = sorted(LOADGEN_DIR.rglob("*.go")) + [LOADGEN_DIR / "go.mod", LOADGEN_DIR / "go.sum"]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(LOADGEN_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_loadgen() -> tuple[Path, str]:
    """The load generator binary, rebuilt only when its sources changed (HUBBUB_BENCH_LOADGEN overrides)."""
    override = os.environ.get("HUBBUB_BENCH_LOADGEN")
    if override:
        return Path(override).resolve(), f"override {override}"
    if not any(LOADGEN_DIR.glob("*.go")):
        raise BenchError(f"no load generator sources in {LOADGEN_DIR}")
    source_hash = loadgen_hash()
    binary = CACHE / f"loadgen-{source_hash}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, source_hash
    CACHE.mkdir(parents=True, exist_ok=True)
    go = find_go()
    log(f"building the load generator ({source_hash})")
    partial = binary.with_suffix(".tmp")
    env = dict(os.environ, PATH=f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run_step([go, "build", "-trimpath", "-o", str(partial), "."], "go build in bench/loadgen", 900, LOADGEN_DIR, env)
    partial.replace(binary)
    for old in CACHE.glob("loadgen-*"):  # keep the cache to the current build
        if old != binary:
            with contextlib.suppress(OSError):
                old.unlink()
    return binary, source_hash


def check_tools(targets: Sequence[Target]) -> None:
    needed = ["redis-server"] if any(t.uses_redis for t in targets) else []
    if any(t.name in ("socketio", "ws") for t in targets):
        needed.append("node")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)} (scripts/install installs them)")


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


# ---------------------------------------------------------------------------------------------
# Starting a target


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


def start_target(target: Target, redis: Redis | None, logdir: Path, cpu: int | None) -> Running:
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
                    "namespaces": {"bench": {"history_size": 100, "client_publish": True}},
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


# ---------------------------------------------------------------------------------------------
# One generator run


def parse_generator_output(stdout: str) -> dict[str, Any]:
    text = stdout.strip()
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.startswith("{")]
    for candidate in candidates:
        with contextlib.suppress(ValueError):
            value = json.loads(candidate)
            if isinstance(value, dict):
                return value
    raise BenchError(f"the load generator printed no JSON object: {text[-500:]!r}")


def run_generator(
    loadgen: Path, scenario: Scenario, running: Running, redis: Redis | None, log_path: Path, cpu: int | None
) -> dict[str, Any]:
    pids = [proc.pid for proc in running.procs]
    if running.target.uses_redis and redis is not None and redis.proc is not None:
        pids.append(redis.proc.pid)
    argv = [str(loadgen), scenario.command, "--proto", running.target.proto, "--urls", ",".join(running.urls)]
    argv += ["--secret", SECRET, "--pids", ",".join(map(str, pids)), "--timeout", str(scenario.budget_s)]
    argv += scenario.argv()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as stderr:
        stderr.write(("$ " + " ".join(argv) + "\n").encode())
        stderr.flush()
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=scenario.budget_s + 30,
                preexec_fn=child_setup(cpu),
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"the load generator did not finish within {scenario.budget_s + 30} s") from exc
    stdout = done.stdout.decode(errors="replace")
    with log_path.open("a") as out:
        out.write(stdout + "\n")
    result: dict[str, Any] = {}
    with contextlib.suppress(BenchError):
        result = parse_generator_output(stdout)
    if done.returncode != 0 or "error" in result:
        reason = result.get("error") or f"exit code {done.returncode}"
        raise GeneratorFailed(f"the load generator failed: {reason}", result)
    if not result:
        raise BenchError("the load generator printed nothing")
    return result


# ---------------------------------------------------------------------------------------------
# Reading results: message accounting, medians


COUNT_KEYS = ("lost", "failed", "failures", "duplicates", "out_of_order", "connections_lost", "publish_errors")


def walk_phases(result: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in a result that accounts for messages (has `lost`), with its dotted path."""
    if isinstance(result, dict):
        if "lost" in result:
            yield path or "(top)", result
        for key, value in result.items():
            if isinstance(value, dict):
                yield from walk_phases(value, f"{path}.{key}" if path else key)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
        out[prefix] = value
    return out


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every number across repeats; sums of the counts (lost, failed...); any() of flags."""
    numbers: dict[str, list[float]] = {}
    flags: dict[str, list[bool]] = {}
    for result in results:
        for key, value in flatten(result).items():
            if isinstance(value, bool):
                flags.setdefault(key, []).append(value)
            else:
                numbers.setdefault(key, []).append(float(value))
    return {
        "runs": len(results),
        "median": {key: statistics.median(values) for key, values in numbers.items()},
        "total": {key: sum(values) for key, values in numbers.items() if key.rsplit(".", 1)[-1] in COUNT_KEYS},
        "any": {key: any(values) for key, values in flags.items()},
    }


# ---------------------------------------------------------------------------------------------
# Environment


def command_output(argv: Sequence[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, cwd=ROOT)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def npm_version(name: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        version = json.loads((BENCH / "node_modules" / name / "package.json").read_text())["version"]
        return str(version)
    return None


def environment(loadgen_source: str | None, pinned: bool) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release, re.M)
    redis_version = command_output(["redis-server", "--version"]) or ""
    redis_v = re.search(r"v=(\S+)", redis_version)
    go = None
    with contextlib.suppress(BenchError):
        go = command_output([find_go(), "version"])
    sha = command_output(["git", "rev-parse", "HEAD"])
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no", "--", "service", "pyproject.toml"])
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "os": pretty.group(1) if pretty else platform.platform(),
        "pinning": (
            f"servers and Redis on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}" if pinned else "none"
        ),
        "hubbub": {
            "version": package_version("hubbub"),
            "git_sha": sha,
            "git_dirty": bool(dirty),
        },
        "python": platform.python_version(),
        "python_packages": {
            name: package_version(name)
            for name in (
                "uvicorn",
                "python-socketio",
                "python-engineio",
                "websockets",
                "uvloop",
                "httptools",
                "redis",
                "PyJWT",
                "starlette",
            )
        },
        "node": command_output(["node", "--version"]),
        "npm_packages": {
            name: npm_version(name)
            for name in ("socket.io", "engine.io", "@socket.io/redis-adapter", "redis", "ws", "jsonwebtoken")
        },
        "redis_server": redis_v.group(1) if redis_v else redis_version or None,
        "go": go,
        "loadgen_source": loadgen_source,
    }


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Plan:
    targets: list[Target]
    scenarios: list[Scenario]
    repeat: int
    smoke: bool
    out: Path
    stamp: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def results_document(plan: Plan, env: dict[str, Any], started: float, finished: bool) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    for target in plan.targets:
        for scenario in plan.scenarios:
            ok = [
                r["result"]
                for r in plan.runs
                if r["target"] == target.name and r["scenario"] == scenario.key and r["result"] is not None
            ]
            if ok:
                summary.setdefault(target.name, {})[scenario.key] = summarize(ok)
    return {
        "mode": "smoke" if plan.smoke else "full",
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "finished": finished,
        "repeat": plan.repeat,
        "environment": env,
        "targets": {t.name: {"label": t.label, "description": t.description} for t in plan.targets},
        "scenarios": {
            s.key: {"command": s.command, "flags": s.flags, "title": SCENARIO_TITLES[s.key]} for s in plan.scenarios
        },
        "not_applicable": [
            {"target": t.name, "scenario": s.key, "reason": NOT_APPLICABLE[(t.name, s.key)]}
            for t in plan.targets
            for s in plan.scenarios
            if (t.name, s.key) in NOT_APPLICABLE
        ],
        "runs": plan.runs,
        "summary": summary,
        "problems": problems(plan.runs),
        "notes": notes(plan.runs),
    }


# Counts that fail a run when hubbub's are not zero: a message it accepted must reach everyone.
HUBBUB_FAILURES = {"lost": "deliveries lost", "publish_errors": "publications refused"}


def problems(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What fails the run: a crashed target, a failed generator run, hubbub losing a message."""
    found: list[str] = []
    for run in runs:
        where = f"{run['target']} {run['scenario']} #{run['repeat']}"
        if run["crashed"]:
            found.append(f"{where}: crashed: {', '.join(run['crashed'])}")
        if run["error"]:
            found.append(f"{where}: {run['error'].splitlines()[0]}")
        if run["target"] == "hubbub" and run["result"] is not None:
            for key, value in flatten(run["result"]).items():
                what = HUBBUB_FAILURES.get(key.rsplit(".", 1)[-1])
                if what and not isinstance(value, bool) and value > 0:
                    found.append(f"{where}: hubbub: {value:,.0f} {what} ({key})")
    return found


def notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What the generator saw go wrong without failing the run: error replies, failed connects, closes."""
    found: list[str] = []
    for run in runs:
        result = run["result"] or run.get("partial") or {}
        parts = []
        for key, label in (("errors", "errors"), ("disconnects", "closed by the server")):
            block = result.get(key) or {}
            if block.get("total"):
                kinds = ", ".join(f"{kind} ×{count}" for kind, count in sorted(block.get("by_kind", {}).items()))
                sample = f" (e.g. {block['samples'][0]!r})" if block.get("samples") else ""
                parts.append(f"{label}: {kinds}{sample}")
        if parts:
            found.append(f"{run['target']} {run['scenario']} #{run['repeat']}: " + "; ".join(parts))
    return found


def write_results(plan: Plan, document: dict[str, Any]) -> Path:
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / f"{plan.stamp}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    partial.replace(path)
    return path


def one_line(scenario: str, result: dict[str, Any]) -> str:
    """A progress line for one run."""
    flat = flatten(result)

    def pick(key: str) -> str:
        return fmt(float(flat[key])) if key in flat else "?"

    lost = sum(int(p.get("lost") or 0) for _, p in walk_phases(result))
    if scenario == "fanout":
        return (
            f"p99 {pick('phases.fixed.p99_ms')} ms at the fixed rate, max {pick('phases.max.deliveries_per_s')}/s"
            f" at {pick('phases.max.server_cpu_us_per_delivery')} µs/delivery, flood"
            f" {pick('phases.flood.received')}/{pick('phases.flood.expected')}, lost {lost}"
        )
    if scenario == "idle":
        return f"{pick('idle.rss_kib_per_connection')} KiB/connection, failed {pick('idle.failed')}"
    if scenario.startswith("connect"):
        return (
            f"{pick('connect.connects_per_s')}/s, {pick('connect.server_cpu_ms_per_connect')} ms CPU/connect,"
            f" failed {pick('connect.failures')}"
        )
    return (
        f"{pick('phases.fixed.deliveries_per_s')} deliveries/s, p99 {pick('phases.fixed.p99_ms')} ms,"
        f" {pick('phases.fixed.server_cpu_us_per_delivery')} µs/delivery, lost {lost}"
    )


def execute(plan: Plan, loadgen: Path, env: dict[str, Any], started: float) -> Path:
    cpu_servers = SERVER_CPU if pinning_available() else None
    cpu_loadgen = LOADGEN_CPU if pinning_available() else None
    if cpu_servers is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {LOADGEN_CPU})  # the runner itself stays off the servers' core
    logs = plan.out / "logs" / plan.stamp
    redis: Redis | None = None
    if any(t.uses_redis for t in plan.targets):
        redis = Redis(logs / "redis", cpu_servers).start()
    pairs = [(t, s) for t in plan.targets for s in plan.scenarios if (t.name, s.key) not in NOT_APPLICABLE]
    total = plan.repeat * len(pairs)
    done = 0
    path = write_results(plan, results_document(plan, env, started, False))
    try:
        # Repeats outermost, targets inside: a drift of the machine touches every target alike.
        for repeat in range(1, plan.repeat + 1):
            for target, scenario in pairs:
                done += 1
                run = run_once(plan, target, scenario, repeat, loadgen, redis, logs, cpu_servers, cpu_loadgen)
                plan.runs.append(run)
                summary = one_line(scenario.key, run["result"]) if run["result"] else run["error"]
                crashed = f" CRASHED: {', '.join(run['crashed'])}" if run["crashed"] else ""
                log(f"[{done}/{total}] {target.name} {scenario.key} #{repeat}: {summary}{crashed} ({run['seconds']} s)")
                path = write_results(plan, results_document(plan, env, started, False))
                if redis is not None and not (redis.proc and redis.proc.alive):
                    log("redis-server died: restarting it")
                    redis = Redis(logs / f"redis-{done}", cpu_servers).start()
    finally:
        if redis is not None:
            redis.stop()
    return path


def run_once(
    plan: Plan,
    target: Target,
    scenario: Scenario,
    repeat: int,
    loadgen: Path,
    redis: Redis | None,
    logs: Path,
    cpu_servers: int | None,
    cpu_loadgen: int | None,
) -> dict[str, Any]:
    logdir = logs / f"{repeat}-{target.name}-{scenario.key}"
    run: dict[str, Any] = {
        "target": target.name,
        "scenario": scenario.key,
        "repeat": repeat,
        "result": None,
        "error": None,
        "crashed": [],
        "seconds": 0.0,
    }
    t0 = time.monotonic()
    running: Running | None = None
    try:
        if redis is not None and target.uses_redis:
            redis.flushall()
        running = start_target(target, redis if target.uses_redis else None, logdir, cpu_servers)
        run["result"] = run_generator(loadgen, scenario, running, redis, logdir / "loadgen.log", cpu_loadgen)
    except BenchError as exc:
        run["error"] = str(exc)
        if isinstance(exc, GeneratorFailed) and exc.partial:
            run["partial"] = exc.partial
    finally:
        if running is not None:
            run["crashed"] = [proc.name for proc in running.procs if not proc.alive]
            for proc in running.procs:
                if not proc.alive:
                    run["error"] = (run["error"] or "") + f"\n--- {proc.name} exited ---\n{proc.tail()}"
            running.stop()
    run["seconds"] = round(time.monotonic() - t0, 1)
    if run["error"]:
        run["error"] = run["error"].strip()
    return run


# ---------------------------------------------------------------------------------------------
# Report: markdown tables, ratios, charts


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str  # dotted path into a result (see flatten)
    label: str
    unit: str
    lower_is_better: bool
    saturation: str | None = None  # dotted path of the `saturated` flag that qualifies the figure
    total: bool = False  # a count summed over repeats rather than a median


def metrics(flags: dict[str, dict[str, Any]]) -> list[Metric]:
    """The figures shown, by the load generator's key names (see bench/loadgen/README.md)."""
    fan = flags.get("fanout", {})
    rate = fan.get("rate", 5000)
    window = fan.get("window", 64)
    flood = fan.get("flood", 2000)
    rooms = flags.get("rooms", {})
    fixed, top, fld, rm = "phases.fixed", "phases.max", "phases.flood", "phases.fixed"
    return [
        Metric("fanout", f"{fixed}.p50_ms", f"p50 latency at {rate:,} deliveries/s", "ms", True),
        Metric("fanout", f"{fixed}.p99_ms", f"p99 latency at {rate:,} deliveries/s", "ms", True),
        Metric("fanout", f"{fixed}.server_cpu_us_per_delivery", f"server CPU per delivery at {rate:,}/s", "µs", True),
        Metric(
            "fanout", f"{top}.deliveries_per_s", f"max deliveries/s (window {window})", "/s", False, f"{top}.saturated"
        ),
        Metric("fanout", f"{top}.p99_ms", "p99 latency at max", "ms", True, f"{top}.saturated"),
        Metric(
            "fanout",
            f"{top}.server_cpu_us_per_delivery",
            "server CPU per delivery at max",
            "µs",
            True,
            f"{top}.saturated",
        ),
        Metric(
            "fanout",
            f"{fld}.deliveries_per_s",
            f"flood of {flood:,} publications: deliveries/s",
            "/s",
            False,
            f"{fld}.saturated",
        ),
        Metric("fanout", f"{fld}.p99_ms", "p99 latency in the flood", "ms", True, f"{fld}.saturated"),
        Metric("fanout", f"{fixed}.lost", "lost at the fixed rate (all runs)", "", True, total=True),
        Metric("fanout", f"{top}.lost", "lost at max (all runs)", "", True, total=True),
        Metric("fanout", f"{fld}.lost", "lost in the flood (all runs)", "", True, total=True),
        Metric("idle", "idle.rss_kib_per_connection", "RSS per idle connection", "KiB", True),
        Metric("idle", "idle.failed", "failed connects (all runs)", "", True, total=True),
        Metric("connect_1", "connect.connects_per_s", "connects/s", "/s", False, "connect.saturated"),
        Metric("connect_1", "connect.server_cpu_ms_per_connect", "server CPU per connect", "ms", True),
        Metric("connect_1", "connect.p50_ms", "connect latency p50", "ms", True),
        Metric("connect_1", "connect.failures", "failed connects (all runs)", "", True, total=True),
        Metric("connect_50", "connect.connects_per_s", "connects/s", "/s", False, "connect.saturated"),
        Metric("connect_50", "connect.server_cpu_ms_per_connect", "server CPU per connect", "ms", True),
        Metric("connect_50", "connect.p99_ms", "connect latency p99", "ms", True),
        Metric("connect_50", "connect.failures", "failed connects (all runs)", "", True, total=True),
        Metric(
            "rooms",
            f"{rm}.deliveries_per_s",
            f"deliveries/s ({rooms.get('rate', 2000):,} publications/s offered)",
            "/s",
            False,
            f"{rm}.saturated",
        ),
        Metric("rooms", f"{rm}.p50_ms", "p50 latency", "ms", True),
        Metric("rooms", f"{rm}.p99_ms", "p99 latency", "ms", True),
        Metric("rooms", f"{rm}.server_cpu_us_per_delivery", "server CPU per delivery", "µs", True),
        Metric("rooms", f"{rm}.lost", "lost (all runs)", "", True, total=True),
    ]


def lookup(summary: dict[str, Any], target: str, metric: Metric) -> tuple[float | None, bool]:
    """A target's figure for a metric (median, or total over runs) and whether the generator saturated."""
    scenario = summary.get(target, {}).get(metric.scenario)
    if scenario is None:
        return None, False
    table = scenario["total"] if metric.total else scenario["median"]
    value = float(table[metric.key]) if metric.key in table else None
    saturated = bool(metric.saturation and scenario["any"].get(metric.saturation))
    return value, saturated


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio_text(hub: float | None, peer: float | None) -> str | None:
    if hub is None or peer is None or peer == 0:
        return None
    ratio = hub / peer
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.0f}×"


def scenario_tables(document: dict[str, Any]) -> str:
    summary = document["summary"]
    targets = list(document["targets"])
    labels = {name: info["label"] for name, info in document["targets"].items()}
    flags = {key: info["flags"] for key, info in document["scenarios"].items()}
    peers = [t for t in targets if t != "hubbub"]
    skipped = {(s["target"], s["scenario"]): s["reason"] for s in document.get("not_applicable", [])}
    out: list[str] = []
    for scenario_key, info in document["scenarios"].items():
        rows = [m for m in metrics(flags) if m.scenario == scenario_key]
        out.append(f"### {info['title']}\n")
        header = ["", *(labels[t] for t in targets)]
        if "hubbub" in targets and peers:
            header.append("hubbub ÷ peer")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" + "---:|" * len(targets) + ("---|" if len(header) > len(targets) + 1 else ""))
        for metric in rows:
            cells = [f"{metric.label}" + (f" ({metric.unit})" if metric.unit else "")]
            values: dict[str, float | None] = {}
            for target in targets:
                value, saturated = lookup(summary, target, metric)
                values[target] = value
                cell = (f"{value:,.0f}" if metric.total and value is not None else fmt(value)) + (
                    " †" if saturated else ""
                )
                if (target, scenario_key) in skipped:
                    cell = "n/a"
                cells.append(f"**{cell}**" if target == "hubbub" and value is not None else cell)
            if len(header) > len(targets) + 1:
                ratios = []
                if not metric.total:
                    for peer in peers:
                        text = ratio_text(values.get("hubbub"), values.get(peer))
                        if text:
                            ratios.append(f"{text} {labels[peer]}")
                cells.append(", ".join(ratios) if ratios else "")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


HUBBUB_GOALS = [
    # (label, metric finder, limit, unit)
    ("server CPU per delivery (fan-out at max)", "fanout", "phases.max.server_cpu_us_per_delivery", 10.0, "µs"),
    ("p99 latency at the fixed rate, two nodes", "fanout", "phases.fixed.p99_ms", 25.0, "ms"),
    ("RSS per idle authenticated connection", "idle", "idle.rss_kib_per_connection", 12.0, "KiB"),
    ("server CPU per connect, one at a time", "connect_1", "connect.server_cpu_ms_per_connect", 0.45, "ms"),
    ("server CPU per connect, 50 in flight", "connect_50", "connect.server_cpu_ms_per_connect", 0.45, "ms"),
]


def goals(document: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, the goal, hubbub's figure, met?) for each of hubbub's targets."""
    summary = document["summary"]
    rows: list[tuple[str, str, str, bool | None]] = []
    for label, scenario, key, limit, unit in HUBBUB_GOALS:
        value, _ = lookup(summary, "hubbub", Metric(scenario, key, label, unit, True))
        met = None if value is None else value <= limit
        rows.append((label, f"≤ {fmt(limit)} {unit}", f"{fmt(value)} {unit}" if value is not None else "—", met))
    lost = 0.0
    seen = False
    for run in document["runs"]:
        if run["target"] == "hubbub" and run["result"] is not None:
            for _, phase in walk_phases(run["result"]):
                seen = True
                lost += float(phase.get("lost") or 0)
    rows.append(
        ("messages lost, every phase of every run", "0", fmt(lost) if seen else "—", (lost == 0) if seen else None)
    )
    return rows


def chart_specs(document: dict[str, Any]) -> list[tuple[str, str, str, list[tuple[str, Metric]], float | None]]:
    """(file stem, title, y label, [(series name, metric)], hubbub goal)."""
    m = {(x.scenario, x.key): x for x in metrics({k: v["flags"] for k, v in document["scenarios"].items()})}
    rate = document["scenarios"].get("fanout", {}).get("flags", {}).get("rate", 5000)
    return [
        (
            "bench-cpu-per-delivery",
            "Fan-out: server CPU per delivery (lower is better)",
            "µs per delivery",
            [
                (f"at {rate:,}/s", m[("fanout", "phases.fixed.server_cpu_us_per_delivery")]),
                ("at max", m[("fanout", "phases.max.server_cpu_us_per_delivery")]),
            ],
            10.0,
        ),
        (
            "bench-p99",
            f"Fan-out: delivery latency at {rate:,} deliveries/s (lower is better)",
            "ms",
            [
                ("p50", m[("fanout", "phases.fixed.p50_ms")]),
                ("p99", m[("fanout", "phases.fixed.p99_ms")]),
            ],
            25.0,
        ),
        (
            "bench-max-deliveries",
            "Fan-out: max sustained deliveries/s (higher is better)",
            "deliveries/s",
            [("max", m[("fanout", "phases.max.deliveries_per_s")])],
            None,
        ),
        (
            "bench-kib-per-connection",
            "Idle: RSS per authenticated connection (lower is better)",
            "KiB per connection",
            [("idle", m[("idle", "idle.rss_kib_per_connection")])],
            12.0,
        ),
        (
            "bench-cpu-per-connect",
            "Connect: server CPU per JWT-authenticated connect (lower is better)",
            "ms per connect",
            [
                ("one at a time", m[("connect_1", "connect.server_cpu_ms_per_connect")]),
                ("50 in flight", m[("connect_50", "connect.server_cpu_ms_per_connect")]),
            ],
            0.45,
        ),
    ]


HUBBUB_COLOURS = ("#1f6feb", "#7aa7f0")
PEER_COLOURS = ("#6e7781", "#b6bcc3")


def draw_charts(document: dict[str, Any], image_dir: Path) -> list[tuple[str, str]]:
    """One PNG per chart spec in `image_dir`: bars per target, hubbub in blue, peers in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    image_dir.mkdir(parents=True, exist_ok=True)
    targets = list(document["targets"])
    labels = [document["targets"][t]["label"] for t in targets]
    drawn: list[tuple[str, str]] = []
    for stem, title, ylabel, series, goal in chart_specs(document):
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
        width = 0.8 / len(series)
        any_value = any_saturated = False
        for index, (_, metric) in enumerate(series):
            xs = [i - 0.4 + width * (index + 0.5) for i in range(len(targets))]
            for x, target in zip(xs, targets, strict=True):
                value, saturated = lookup(document["summary"], target, metric)
                if value is None:
                    continue
                any_value = True
                any_saturated |= saturated
                colour = (HUBBUB_COLOURS if target == "hubbub" else PEER_COLOURS)[index % 2]
                ax.bar(x, value, width * 0.92, color=colour, hatch="//" if saturated else None, edgecolor="white")
                ax.annotate(
                    fmt(value) + (" †" if saturated else ""),
                    (x, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        if not any_value:
            plt.close(fig)
            continue
        handles: list[Any] = []
        if len(series) > 1:
            handles += [
                Patch(color=HUBBUB_COLOURS[i % 2], label=f"{name}, hubbub") for i, (name, _) in enumerate(series)
            ]
            handles += [Patch(color=PEER_COLOURS[i % 2], label=f"{name}, peers") for i, (name, _) in enumerate(series)]
        if goal is not None and "hubbub" in targets:
            ax.axhline(goal, color="#d1242f", linestyle="--", linewidth=1)
            handles.append(Line2D([], [], color="#d1242f", linestyle="--", label=f"hubbub's goal: {fmt(goal)}"))
        if any_saturated:
            handles.append(Patch(facecolor="white", edgecolor="#6e7781", hatch="//", label="† generator saturated"))
        if handles:
            ax.legend(handles=handles, fontsize=7, frameon=False, ncols=2 if len(handles) > 3 else 1)
        ax.set_xticks(range(len(targets)), labels)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}"))
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.25)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        fig.savefig(image_dir / f"{stem}.png")
        plt.close(fig)
        drawn.append((stem, title))
    return drawn


def environment_table(env: dict[str, Any]) -> str:
    hub = env.get("hubbub", {})
    sha = (hub.get("git_sha") or "unknown")[:12] + (" (with uncommitted changes)" if hub.get("git_dirty") else "")
    py = env.get("python_packages", {})
    npm = env.get("npm_packages", {})
    rows = [
        ("machine", f"{env.get('cpu_model')}, {env.get('cpus')} CPUs, {env.get('memory_gib')} GiB"),
        ("system", f"{env.get('os')}, Linux {env.get('kernel')}"),
        ("pinning", env.get("pinning")),
        ("hubbub", f"{hub.get('version')} at {sha}"),
        (
            "Python",
            f"{env.get('python')}: uvicorn {py.get('uvicorn')}, websockets {py.get('websockets')},"
            f" uvloop {py.get('uvloop')}, httptools {py.get('httptools')}",
        ),
        (
            "python-socketio",
            f"{py.get('python-socketio')} (python-engineio {py.get('python-engineio')}, redis-py {py.get('redis')})",
        ),
        (
            "Node",
            f"{env.get('node')}: socket.io {npm.get('socket.io')} (engine.io {npm.get('engine.io')}), "
            f"@socket.io/redis-adapter {npm.get('@socket.io/redis-adapter')}, redis {npm.get('redis')}, "
            f"ws {npm.get('ws')}, jsonwebtoken {npm.get('jsonwebtoken')}",
        ),
        ("Redis", f"redis-server {env.get('redis_server')}"),
        ("load generator", f"bench/loadgen {env.get('loadgen_source')}, {env.get('go')}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def render_markdown(document: dict[str, Any], charts: Sequence[tuple[str, str]], results_name: str) -> str:
    env = document["environment"]
    fan = document["scenarios"].get("fanout", {}).get("flags", {})
    idle = document["scenarios"].get("idle", {}).get("flags", {})
    con = document["scenarios"].get("connect_1", {}).get("flags", {})
    rooms = document["scenarios"].get("rooms", {}).get("flags", {})
    target_lines = "\n".join(f"- **{info['label']}**: {info['description']}." for info in document["targets"].values())
    goal_rows = "\n".join(
        f"| {label} | {goal} | {value} | {'yes' if met else 'no' if met is not None else 'not measured'} |"
        for label, goal, value, met in goals(document)
    )
    chart_md = "\n\n".join(f"![{title}](images/{stem}.png)" for stem, title in charts)
    problems_md = "\n".join(f"- {p}" for p in document["problems"]) or (
        "None: no target crashed, every run finished, hubbub lost nothing."
    )
    if document.get("notes"):
        problems_md += (
            "\n\nAlso seen by the load generator (error replies, failed connects, connections the server\nclosed):\n\n"
        )
        problems_md += "\n".join(f"- {n}" for n in document["notes"])
    started = document["started"].replace("T", " ").replace("+00:00", " UTC")
    if env.get("pinning", "none") != "none":
        pinning = (
            f"The servers and Redis run on CPU {SERVER_CPU}, the load generator on CPU {LOADGEN_CPU}"
            " (`sched_setaffinity`, as `taskset -c`)."
        )
    else:
        pinning = "None: this machine has fewer than two CPUs, so the servers and the generator shared them."
    method = [
        f"**Pinning.** {pinning} Every server figure is therefore **per core**: the server CPU counted is"
        " that of every server process plus Redis, read from `/proc` by the generator at the start and the"
        " end of each phase (10 ms ticks). The ws ceiling has no Redis to pay for.",
        f"**Fan-out.** {fan.get('subscribers', 1000):,} subscribers in one room, split across the two"
        f" processes, one publisher. *Fixed*: {fan.get('rate', 5000):,} deliveries/s for"
        f" {fan.get('rate-seconds', 10)} s; latency is publish → receive, per delivery. *Max*: as fast as"
        f" the target delivers with at most {fan.get('window', 64)} publications not yet received by every"
        f" subscriber, for {fan.get('max-seconds', 10)} s. *Flood*: {fan.get('flood', 2000):,} publications"
        " sent open loop, all at once. Server CPU per delivery = server CPU time ÷ deliveries. Lost ="
        " expected − received when the phase's wait ends (5 s after the last publication;"
        f" {fan.get('flood-wait', 10)} s for the flood).",
        f"**Idle memory.** {idle.get('connections', 5000):,} authenticated connections, each joined to one"
        f" of {idle.get('rooms', 100)} rooms; the growth of the servers' summed RSS ÷ connections after"
        f" {idle.get('settle', 5)} s of settling.",
        f"**Connect rate.** {con.get('count', 2000):,} JWT-authenticated connects (WebSocket upgrade, token"
        " check and the protocol's handshake, no join), one at a time and 50 in flight; connects/s and"
        " server CPU time per connect.",
        f"**Many rooms.** {rooms.get('rooms', 10000):,} rooms of 1–5 members over"
        f" {rooms.get('connections', 2000):,} connections; {rooms.get('rate', 2000):,} publications/s for"
        f" {rooms.get('seconds', 10)} s, each to a random room.",
    ]
    repeat = document["repeat"]
    runs_text = f"{len(document['runs'])} runs, " + ("one repeat" if repeat == 1 else f"median of {repeat} repeats")
    method_md = "\n".join(textwrap.fill(item, 100, initial_indent="- ", subsequent_indent="  ") for item in method)
    return f"""# Benchmarks

hubbub and three peers, measured side by side on one machine by one load generator, with
`.venv/bin/python bench/run.py` (see [bench/README.md](../bench/README.md)). This page is written
by that command; the raw figures of every run are in `bench/results/{results_name}` on the machine
that ran it. Run {started}: {runs_text}, {document["duration_s"] / 60:.0f} minutes in all.

**Every figure is the median of the repeats**; counts of lost messages and failed connections are
summed over all runs. "hubbub ÷ peer" is hubbub's figure divided by the peer's: below 1× hubbub
uses less (CPU, memory, latency), above 1× it does more (deliveries/s, connects/s). † marks a
figure where the load generator reported itself saturated: the server may do better than shown.

## hubbub's targets

| target | goal | hubbub | met |
|---|---|---|---|
{goal_rows}

## Machine and versions

{environment_table(env)}

## Targets

{target_lines}

Every target is started fresh for every scenario run (Redis is flushed before), listens on
127.0.0.1 and authenticates every connection with an HS256 JWT. The two-process targets get
half of the connections on each process, so every delivery of a room crosses the broker.

## Method

{method_md}

## Results

{scenario_tables(document)}
## Charts

{chart_md}

## Problems

What failed this run (a crash, a failed run, a hubbub loss):

{problems_md}
"""


def write_docs(document: dict[str, Any], results_path: Path) -> Path:
    charts = draw_charts(document, DOCS / "images")
    path = DOCS / "benchmarks.md"
    path.write_text(render_markdown(document, charts, results_path.name))
    return path


# ---------------------------------------------------------------------------------------------
# main


def parse_targets(text: str) -> list[Target]:
    chosen: list[Target] = []
    for raw in text.split(","):
        name = TARGET_ALIASES.get(raw.strip(), raw.strip())
        if name not in TARGETS:
            raise SystemExit(f"unknown target {raw!r}: choose from {', '.join(TARGETS)}")
        if TARGETS[name] not in chosen:
            chosen.append(TARGETS[name])
    return chosen


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="CI-sized runs, one repeat, no docs")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {','.join(TARGETS)}")
    parser.add_argument(
        "--scenarios", default=None, help="comma-separated subset of fanout,idle,connect_1,connect_50,rooms"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repeats per target and scenario (3 full, 1 smoke)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where results JSON and logs go")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md (full mode)")
    parser.add_argument("--report", type=Path, help="only redraw docs/benchmarks.md from a results JSON")
    args = parser.parse_args(argv)

    if args.report:
        document = json.loads(args.report.read_text())
        document["problems"] = problems(document["runs"])  # by this version's rules
        document["notes"] = notes(document["runs"])
        print(scenario_tables(document))
        log(f"wrote {write_docs(document, args.report)}")
        return 0

    targets = parse_targets(args.targets)
    chosen = scenarios(args.smoke)
    if args.scenarios:
        keys = [k.strip() for k in args.scenarios.split(",")]
        unknown = set(keys) - {s.key for s in chosen}
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.key in keys]
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = Plan(targets, chosen, max(1, repeat), args.smoke, args.out.resolve(), stamp)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    started = time.time()
    results_path: Path | None = None
    env: dict[str, Any] = {}
    try:
        check_tools(targets)
        if any(t.name in ("socketio", "ws") for t in targets):
            ensure_npm()
        loadgen, source_hash = ensure_loadgen()
        env = environment(source_hash, pinning_available())
        log(
            f"{'smoke' if args.smoke else 'full'} run: {', '.join(t.name for t in targets)} x "
            f"{', '.join(s.key for s in chosen)} x {plan.repeat}; pinning: {env['pinning']}"
        )
        results_path = execute(plan, loadgen, env, started)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
        if plan.runs:
            finished = results_path is not None
            results_path = write_results(plan, results_document(plan, env, started, finished))
            if not finished:
                log(f"results so far: {results_path}")
    document = results_document(plan, env, started, True)
    results_path = write_results(plan, document)
    print(scenario_tables(document))
    if not args.smoke and not args.no_docs:
        log(f"wrote {write_docs(document, results_path)}")
    for problem in document["problems"]:
        log(f"PROBLEM: {problem}")
    log(f"results: {results_path} ({document['duration_s']:.0f} s)")
    return 1 if document["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
