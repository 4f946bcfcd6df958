"""The scenarios: their table (full and smoke sizes), running the load generator for one of them
against a running target, and one run of a target in a scenario, collected as a results entry.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SECRET
from .errors import BenchError, GeneratorFailed
from .processes import child_setup
from .targets import Redis, Running, Target, start_target


@dataclass(frozen=True)
class Scenario:
    key: str  # the key in the results: fanout, idle, idle_presence, connect_1, connect_50, rooms
    command: str  # the load generator's scenario
    flags: dict[str, int | float]
    budget_s: int  # the generator's --timeout; it is killed 30 s after that
    #: Settings of hubbub's `bench` namespace for this scenario (the peers have no such settings).
    hubbub_namespace: dict[str, bool] = field(default_factory=dict)
    #: Every connection goes to the target's first process (and only it and Redis are measured).
    one_node: bool = False
    #: Run only in the first repeat (a long scenario whose figure is not a median).
    once: bool = False

    def argv(self) -> list[str]:
        out: list[str] = []
        for name, value in self.flags.items():
            out += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
        return out


#: Masters of the Redis Clusters the shards scenario publishes on, one run each.
SHARD_MASTERS = (1, 2, 3)
#: Connections the scale scenario would hold on one node...
SCALE_TARGET = 100_000
#: ...less what the servers keep for themselves (hubbub: max_pending_handshakes, 2048, plus 64).
FD_MARGIN = 2_500
#: Connections one loopback source address can open towards one port (net.ipv4.ip_local_port_range).
PER_SOURCE = 25_000


def scale_connections(smoke: bool) -> tuple[int, str | None]:
    """Connections the scale scenario holds, and why not SCALE_TARGET (None: it is). One process holds a
    file descriptor per connection: the open-file hard limit of this process (which the servers and the
    generator inherit, and which only CAP_SYS_RESOURCE may raise) bounds it."""
    if smoke:
        return 1000, None
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard - FD_MARGIN >= SCALE_TARGET:
        return SCALE_TARGET, None
    held = max(1000, (hard - FD_MARGIN) // 1000 * 1000)
    return (
        held,
        f"the open-file hard limit here is {hard} (raising it needs CAP_SYS_RESOURCE),"
        f" so {held:,} connections, not {SCALE_TARGET:,}",
    )


def scenarios(smoke: bool) -> list[Scenario]:
    held, _ = scale_connections(smoke)
    scale: dict[str, int | float] = {
        "connections": held,
        "rooms": max(10, held // 100),
        "settle": 2 if smoke else 5,
        "window": 3 if smoke else 30,
        "rate": 1000 if smoke else 5000,
        "rate-seconds": 2 if smoke else 10,
        "inflight": 50,
        "sources": held // PER_SOURCE + 2,
    }
    if smoke:
        fan = {"subscribers": 200, "rate": 1000, "rate-seconds": 3, "window": 64, "max-seconds": 3, "flood": 500}
        idle = {"connections": 500, "rooms": 10, "settle": 2, "window": 3}
        count = 200
        rooms = {"rooms": 1000, "connections": 300, "rate": 1000, "seconds": 3, "seed": 1}
    else:
        fan = {"subscribers": 1000, "rate": 5000, "rate-seconds": 10, "window": 64, "max-seconds": 10, "flood": 2000}
        # The idle window is longer than hubbub's and Socket.IO's 25 s ping interval: every heartbeat is in it.
        idle = {"connections": 5000, "rooms": 100, "settle": 5, "window": 30}
        count = 2000
        rooms = {"rooms": 10000, "connections": 2000, "rate": 2000, "seconds": 10, "seed": 1}
    # Publishing on a Redis Cluster of 1, 2 and 3 masters (bench/shards.py): hubbub's broker, no WebSocket.
    shards: dict[str, int | float] = (
        {"seconds": 2, "rooms": 200, "publishers": 2, "inflight": 16}
        if smoke
        else {"seconds": 10, "rooms": 1000, "publishers": 2, "inflight": 64}
    )
    soak: dict[str, int | float] = (
        {"connections": 600, "rooms": 30, "rate": 300, "seconds": 10, "churn": 0.01, "sample": 2}
        if smoke
        else {"connections": 10000, "rooms": 1000, "rate": 1000, "seconds": 600, "churn": 0.01, "sample": 10}
    )
    # The flood's deliveries may take a slow target a while: wait for them at 16,000 deliveries/s
    # (python-socketio manages about 20,000 on one core), 10 to 120 s, before counting the rest lost.
    fan["flood-wait"] = min(120, max(10, fan["flood"] * fan["subscribers"] // 16000))
    fan_budget = 60 + fan["subscribers"] // 50 + fan["rate-seconds"] + fan["max-seconds"] + 10 + fan["flood-wait"]
    return [
        Scenario("fanout", "fanout", dict(fan), fan_budget),
        Scenario("idle", "idle", dict(idle), 60 + idle["connections"] // 50 + idle["settle"] + idle["window"]),
        # The same with presence on (the development-mode default): every joined connection has an entry in
        # Redis that its node keeps alive.
        Scenario(
            "idle_presence",
            "idle",
            dict(idle),
            60 + idle["connections"] // 50 + idle["settle"] + idle["window"],
            {"presence": True},
        ),
        # One node holding as many connections as it can here, idle and then at 5,000 deliveries/s.
        Scenario(
            "scale",
            "idle",
            scale,
            int(120 + held // 100 + scale["settle"] + scale["window"] + scale["rate-seconds"]),
            one_node=True,
        ),
        Scenario("connect_1", "connect", {"count": count, "concurrency": 1}, 60 + count // 25),
        Scenario("connect_50", "connect", {"count": count, "concurrency": 50}, 60 + count // 25),
        Scenario(
            "rooms", "rooms", dict(rooms), 60 + rooms["connections"] // 25 + rooms["rooms"] // 100 + rooms["seconds"]
        ),
        # Two nodes on Redis for ten minutes: steady traffic, 1 % of the connections reconnecting every
        # second, presence on (the development-mode default), the servers' RSS sampled throughout.
        Scenario(
            "soak",
            "soak",
            soak,
            int(120 + soak["connections"] // 50 + soak["seconds"]),
            {"presence": True},
            once=True,
        ),
        Scenario("shards", "shards", shards, int(60 + len(SHARD_MASTERS) * (shards["seconds"] + 40)), once=True),
    ]


# Pairs the bench does not run, and why.
NOT_APPLICABLE = {
    ("ws", "rooms"): "the bare ws server holds one room per connection (the one in its URL)",
    ("socketio", "idle_presence"): "Socket.IO has no presence",
    ("pysocketio", "idle_presence"): "python-socketio has no presence",
    ("ws", "idle_presence"): "the bare ws server has no presence",
    ("ws", "scale"): "the bare ws server's publisher reaches only the room in its URL",
    ("socketio", "soak"): "the soak is hubbub's endurance test (ten minutes a target)",
    ("pysocketio", "soak"): "the soak is hubbub's endurance test (ten minutes a target)",
    ("ws", "soak"): "the soak is hubbub's endurance test (ten minutes a target)",
    ("socketio", "shards"): "measures hubbub's own Redis broker on a Redis Cluster",
    ("pysocketio", "shards"): "measures hubbub's own Redis broker on a Redis Cluster",
    ("ws", "shards"): "measures hubbub's own Redis broker on a Redis Cluster",
}

SCENARIO_TITLES = {
    "fanout": "Fan-out",
    "idle": "Idle connections",
    "idle_presence": "Idle connections, presence on",
    "scale": "One node holding many connections",
    "soak": "Soak: ten minutes of traffic and reconnects",
    "connect_1": "Connect rate, one at a time",
    "connect_50": "Connect rate, 50 in flight",
    "rooms": "Many rooms",
    "shards": "Publishing on a Redis Cluster of 1, 2 and 3 masters",
}


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
    procs, urls = (running.procs[:1], running.urls[:1]) if scenario.one_node else (running.procs, running.urls)
    pids = [proc.pid for proc in procs]
    if running.target.uses_redis and redis is not None and redis.proc is not None:
        pids.append(redis.proc.pid)
    argv = [str(loadgen), scenario.command, "--proto", running.target.proto, "--urls", ",".join(urls)]
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


def run_shards(scenario: Scenario, logdir: Path) -> dict[str, Any]:
    """bench/shards.py with the scenario's flags: its runs by number of masters (`masters_1`, ...)."""
    logdir.mkdir(parents=True, exist_ok=True)
    out = logdir / "shards.json"
    argv = [sys.executable, str(Path(__file__).resolve().parents[1] / "shards.py"), "--json", str(out)]
    argv += ["--masters", ",".join(map(str, SHARD_MASTERS)), *scenario.argv()]
    with (logdir / "shards.log").open("ab") as log:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=scenario.budget_s,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"bench/shards.py did not finish within {scenario.budget_s} s") from exc
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    result = {f"masters_{r['masters']}": r for r in runs}
    if done.returncode != 0:
        reason = f"bench/shards.py failed (exit code {done.returncode}): see {logdir / 'shards.log'}"
        raise GeneratorFailed(reason, result)
    return result


def run_once(
    target: Target,
    scenario: Scenario,
    repeat: int,
    loadgen: Path,
    redis: Redis | None,
    logs: Path,
    cpu_servers: int | None,
    cpu_loadgen: int | None,
) -> dict[str, Any]:
    """One run of `target` in `scenario`, started fresh: the results entry, with its error and crashes."""
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
        if scenario.command == "shards":
            run["result"] = run_shards(scenario, logdir)  # its own Redis Clusters and processes
        else:
            if redis is not None and target.uses_redis:
                redis.flushall()
            running = start_target(
                target, redis if target.uses_redis else None, logdir, cpu_servers, scenario.hubbub_namespace
            )
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
