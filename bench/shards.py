"""Publishing on a Redis Cluster of 1, 2 and 3 masters: the publish rate, and Redis CPU per publication.

    .venv/bin/python bench/shards.py                         # 1, 2, 3 masters, 10 s each
    .venv/bin/python bench/shards.py --masters 1,3 --seconds 5 --json /tmp/shards.json

One Redis master bounds a deployment's publish rate: every publication is a script call on the master
of its room's slot (the room's stream, its position, its idempotency key, the SPUBLISH). With the rooms
spread over N masters each master runs 1/N of them, so the ceiling grows with N, as far as cores go.

Real processes on 127.0.0.1, for each N: N `redis-server`s in cluster mode (no replicas; the slots split
evenly; `redis-cli --cluster create` wants 3 masters at least, so the cluster is made by hand), one
subscriber process (hubbub's Redis broker, subscribed to every room: each publication is delivered once,
as to a node with one member per room) and `--publishers` publisher processes (the same broker, each
publishing as fast as `--inflight` concurrent publishes allow, round robin over the rooms, with history
and an idempotency key, as hubbub's API publishes).

Measured over `--seconds` after a warm-up: publications acknowledged per second, deliveries, every
master's CPU seconds from /proc (so µs of Redis CPU per publication, and the busiest master's share of
one core) and the publishers' CPU per publication. On a machine with fewer cores than processes the
publishers bound the rate; the busiest master's utilisation says where its own ceiling is:
`rate / utilisation`, the rate at which it would be busy all the time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

# The harness package is in bench/ (as for run.py): make sure it is first on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.processes import Proc, free_port, stop_all, wait_until
from hubbub.backends import create_backends
from hubbub.backends.base import StreamOptions
from hubbub.loader import load_settings
from hubbub.types import Room

SLOTS = 16384
OPTIONS = StreamOptions(history_size=100, history_ttl=300, idempotency_window=60, meta_ttl=600)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Masters:
    """`count` cluster-mode redis-servers owning the slots in equal ranges, no replicas."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(count)]
        self.bus_ports = [free_port() for _ in range(count)]
        self.procs: list[Proc] = []

    def start(self) -> Masters:
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            node_dir = self.workdir / f"node-{port}"
            node_dir.mkdir(parents=True)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(node_dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-port", str(bus_port), "--maxclients", "10000"]
            proc = Proc(f"redis-{port}", argv, node_dir / "redis.log", None).start()
            self.procs.append(proc)
            wait_until(functools.partial(self._ping, port), 30, f"redis-server on {port}", [proc])
        share = SLOTS // len(self.ports)
        for index, port in enumerate(self.ports):
            first = index * share
            last = SLOTS - 1 if index == len(self.ports) - 1 else first + share - 1
            self.command(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
            if index:
                self.command(port, "CLUSTER", "MEET", "127.0.0.1", self.ports[0], self.bus_ports[0])
        wait_until(self._settled, 30, "the cluster to settle", self.procs)
        return self

    def command(self, port: int, *args: Any) -> Any:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, decode_responses=True)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def _ping(self, port: int) -> bool:
        try:
            return bool(self.command(port, "PING"))
        except redis.RedisError:
            return False

    def _settled(self) -> bool:
        for port in self.ports:
            info = self.command(port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.ports)}" not in info:
                return False
        return True

    def cpu(self) -> list[float]:
        return [cpu_seconds(proc.pid) for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def settings(seeds: list[str]) -> Any:
    return load_settings(env={}, overrides={"redis_cluster_nodes": seeds, "redis_prefix": "bench"})


# --- the child processes (this script, run again with --role) ---------------------------------------------


async def subscriber(seeds: list[str], rooms: int) -> None:
    """Subscribe every room and print the number of deliveries each time a line comes on stdin."""

    class Counter:
        delivered = 0

        def on_publication(self, room: Room, epoch: str, pub: Any) -> None:
            self.delivered += 1

        def on_join(self, room: Room, info: Any) -> None: ...

        def on_leave(self, room: Room, info: Any) -> None: ...

        def on_insufficient_state(self, room: Room, cause: Any) -> None: ...

    counter = Counter()
    backends = create_backends(settings(seeds))
    await backends.broker.start(counter)
    while not backends.broker.available:
        await asyncio.sleep(0.05)
    for index in range(rooms):
        await backends.broker.subscribe(Room(f"bench:{index}"))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(counter.delivered, flush=True)
    await backends.aclose()


async def publisher(seeds: list[str], rooms: int, inflight: int, seconds: float, name: str) -> None:
    """Publish for `seconds` with `inflight` publishes in flight; print how many were acknowledged."""
    backends = create_backends(settings(seeds))

    class Nothing:
        def on_publication(self, *args: Any) -> None: ...

        def on_join(self, *args: Any) -> None: ...

        def on_leave(self, *args: Any) -> None: ...

        def on_insufficient_state(self, *args: Any) -> None: ...

    await backends.broker.start(Nothing())
    while not backends.broker.available:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the start signal
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, errors
        index = offset
        while time.monotonic() < deadline:
            room = Room(f"bench:{index % rooms}")
            try:
                await backends.broker.publish(
                    room, {"n": index}, info=None, idempotency_key=f"{name}-{index}", options=OPTIONS
                )
                done += 1
            except Exception:  # counted: the bench reports them
                errors += 1
            index += inflight

    await asyncio.gather(*(worker(i) for i in range(inflight)))
    print(json.dumps({"published": done, "errors": errors}), flush=True)
    await backends.aclose()


# --- the run ---------------------------------------------------------------------------------------------


def child(role: str, args: argparse.Namespace, seeds: list[str], log: Path, name: str = "") -> Any:
    import subprocess

    argv = [sys.executable, __file__, "--role", role, "--seeds", ",".join(seeds), "--rooms", str(args.rooms)]
    argv += ["--inflight", str(args.inflight), "--seconds", str(args.seconds), "--name", name]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True, bufsize=1
    )


def measure(masters_count: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    masters = Masters(workdir / f"masters-{masters_count}", masters_count).start()
    seeds = [f"127.0.0.1:{port}" for port in masters.ports]
    procs = []
    try:
        sub = child("subscriber", args, seeds, workdir / f"subscriber-{masters_count}.log")
        procs.append(sub)
        assert sub.stdout is not None and sub.stdin is not None
        assert sub.stdout.readline().strip() == "ready", "the subscriber did not start"
        pubs = [
            child("publisher", args, seeds, workdir / f"publisher-{masters_count}-{i}.log", f"p{i}")
            for i in range(args.publishers)
        ]
        procs += pubs
        for pub in pubs:
            assert pub.stdout is not None and pub.stdout.readline().strip() == "ready", "a publisher did not start"
        redis_before = masters.cpu()
        publishers_before = sum(cpu_seconds(p.pid) for p in pubs)
        started = time.monotonic()
        for pub in pubs:
            assert pub.stdin is not None
            pub.stdin.write("go\n")
            pub.stdin.flush()
        results = []
        for pub in pubs:
            assert pub.stdout is not None
            results.append(json.loads(pub.stdout.readline()))
        wall = time.monotonic() - started
        redis_after = masters.cpu()
        publishers_cpu = sum(cpu_seconds(p.pid) for p in pubs) - publishers_before
        published = sum(r["published"] for r in results)
        deadline = time.monotonic() + 30
        delivered = 0
        while time.monotonic() < deadline:
            sub.stdin.write("count\n")
            sub.stdin.flush()
            delivered = int(sub.stdout.readline())
            if delivered >= published:
                break
            time.sleep(0.2)
        per_master = [after - before for before, after in zip(redis_before, redis_after, strict=True)]
        busiest = max(per_master) / wall
        rate = published / wall
        return {
            "masters": masters_count,
            "seconds": round(wall, 2),
            "published": published,
            "errors": sum(r["errors"] for r in results),
            "delivered": delivered,
            "publications_per_s": round(rate),
            "redis_cpu_us_per_publication": round(sum(per_master) / published * 1e6, 1),
            "master_utilisation": [round(cpu / wall, 3) for cpu in per_master],
            "busiest_master_utilisation": round(busiest, 3),
            "busiest_master_ceiling_per_s": round(rate / busiest) if busiest else None,
            "lost": max(0, published - delivered),
            "publisher_cpu_us_per_publication": round(publishers_cpu / published * 1e6, 1),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        masters.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", default="1,2,3", help="masters per run, comma-separated (default 1,2,3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per run (default 10)")
    parser.add_argument("--rooms", type=int, default=1000, help="rooms published to (default 1000)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    parser.add_argument("--inflight", type=int, default=64, help="publishes in flight per publisher (default 64)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--role", choices=["subscriber", "publisher"], help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "subscriber":
        asyncio.run(subscriber(args.seeds.split(","), args.rooms))
        return 0
    if args.role == "publisher":
        asyncio.run(publisher(args.seeds.split(","), args.rooms, args.inflight, args.seconds, args.name))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="hubbub-shards-") as tmp:
        try:
            for count in (int(n) for n in args.masters.split(",")):
                print(f"{count} master(s): publishing for {args.seconds:g} s ...", file=sys.stderr, flush=True)
                result = measure(count, args, Path(tmp))
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            stop_all()
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    lost = [r for r in results if r["delivered"] < r["published"] or r["errors"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
