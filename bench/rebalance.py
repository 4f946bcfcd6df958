"""Rebalancing after a scale-out, measured: connections per node before and after, and time to balance.

    .venv/bin/python bench/rebalance.py                          # 1,000 connections, 2 → 4 nodes
    .venv/bin/python bench/rebalance.py --connections 400 --before 2 --after 3 --period 5

Real processes on 127.0.0.1: a private redis-server, `--after` hubbub nodes, and nginx in front of the
first `--before` of them (round robin, as a Service spreads connections; `--balance least_conn` for a
load-aware proxy). hubbub_client clients (reconnecting, recovering) join one room through nginx while a
publisher sends a numbered publication to it every `--interval` seconds. Then nginx gets every node (the
scale-out: the new nodes start empty) and the operator's Rebalancer (hubbub_operator.rebalance) runs in
rounds, as the operator does after each cooldown: it asks the loaded nodes (POST /api/shed) to close their
excess with 1012 over `--period` seconds; the next round starts once those clients are back. At the end
every client must hold every publication once, in order.

Time to balance: from the first shed request until the counts are within `--tolerance` percent of the
mean and every client is connected again. Exit 1 on a loss, a duplicate, or no balance within `--rounds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import pwd
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

# The harness package is in bench/ (as for run.py): make sure it is first on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.config import API_KEY, SECRET
from harness.processes import Proc, free_port, http_ok, stop_all, wait_until
from harness.targets import Redis, hubbub_argv
from hubbub.auth import mint_token
from hubbub_client import Client, ConnectionState, Message, Rejoin
from hubbub_operator.rebalance import HttpPods, Pod, Rebalancer, plan_sheds

ROOM = "bench:rebalance"


def node_config(redis_url: str, name: str) -> dict[str, object]:
    return {
        "mode": "production",
        "jwt_secret": SECRET,
        "api_key": API_KEY,
        "redis_url": redis_url,
        "node_name": name,
        "namespaces": {"bench": {"history_size": 1000}},
        "max_connections": 100000,
        "log_level": "warning",
    }


def nginx_config(workdir: Path, port: int, upstreams: list[int], balance: str) -> str:
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
    method = "least_conn;" if balance == "least_conn" else ""
    tmp = workdir / "tmp"
    return f"""daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
# The old worker keeps its connections across the reload, as a Service's stay on their pods.
worker_shutdown_timeout 600s;
{user}
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream hubbub {{
    {method}
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://hubbub;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
    }}
  }}
}}
"""


class Nginx:
    def __init__(self, workdir: Path, balance: str) -> None:
        self.workdir = workdir
        self.balance = balance
        self.port = free_port()
        self.conf = workdir / "nginx.conf"
        self.proc: Proc | None = None

    def write(self, upstreams: list[int]) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(nginx_config(self.workdir, self.port, upstreams, self.balance))

    def start(self, upstreams: list[int]) -> None:
        self.write(upstreams)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-p", str(self.workdir), "-c", str(self.conf), "-e", str(self.workdir / "error.log")]
        self.proc = Proc("nginx", argv, self.workdir / "nginx.out", None, stop_signal=signal.SIGQUIT).start()
        # Any answer (a 502 from an upstream path is one) says nginx listens.
        wait_until(lambda: _answers(self.port), 10, "nginx", [self.proc])

    def reload(self, upstreams: list[int]) -> None:
        self.write(upstreams)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)


def _answers(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return True
    return False


class Member:
    """One client: what it received of the room, and its re-joins."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.received: list[int] = []
        self.rejoins: list[Rejoin] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        room = await self.client.join(ROOM)

        async def listen() -> None:
            async for event in room.events():
                if isinstance(event, Message) and isinstance(event.data, int):
                    self.received.append(event.data)
                elif isinstance(event, Rejoin):
                    self.rejoins.append(event)

        self.task = asyncio.create_task(listen())


async def counts(http: httpx.AsyncClient, nodes: dict[str, int]) -> dict[str, int]:
    found = {}
    for name, port in nodes.items():
        info = (await http.get(f"http://127.0.0.1:{port}/api/info")).json()
        found[name] = next(n["connections"] for n in info["nodes"] if n["name"] == name)
    return found


async def shed_total(http: httpx.AsyncClient, nodes: dict[str, int]) -> int:
    total = 0.0
    for port in nodes.values():
        for line in (await http.get(f"http://127.0.0.1:{port}/metrics")).text.splitlines():
            if line.startswith("hubbub_shed_connections_total "):
                total += float(line.split()[1])
    return int(total)


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def show(counts: dict[str, int]) -> str:
    return "  ".join(f"{name} {count:>5}" for name, count in counts.items())


async def run(args: argparse.Namespace, nodes: dict[str, int], nginx: Nginx) -> int:
    def token_for(user: str) -> str:
        return mint_token(SECRET, sub=user, rooms=("*",), publish=())

    members = []
    for i in range(args.connections):
        user = f"user{i}"

        async def fresh(user: str = user) -> str:
            return token_for(user)

        client = Client(f"ws://127.0.0.1:{nginx.port}/ws", token=fresh, command_timeout=60.0)
        members.append(Member(client))
    started = time.monotonic()
    for first in range(0, len(members), 50):
        await asyncio.gather(*(m.start() for m in members[first : first + 50]))
    print(f"{len(members)} clients connected in {time.monotonic() - started:.1f} s", file=sys.stderr)

    names = list(nodes)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
        published: list[int] = []
        stop = asyncio.Event()
        first_node = nodes[names[0]]

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                body = {"room": ROOM, "data": n, "idempotency_key": f"rebalance-{n}"}
                response = await http.post(f"http://127.0.0.1:{first_node}/api/publish", json=body)
                response.raise_for_status()
                published.append(n)
                n += 1
                await asyncio.sleep(args.interval)

        publisher = asyncio.create_task(publish())
        before = await counts(http, nodes)
        print(f"before   {show(before)}")

        nginx.reload(list(nodes.values()))  # the scale-out
        pods = [Pod(name, f"127.0.0.1:{port}") for name, port in nodes.items()]
        pod_api = HttpPods(API_KEY)
        rebalancer = Rebalancer(pod_api, tolerance=args.tolerance, period=args.period)
        began = time.monotonic()
        asked_total = 0
        balanced_at = None
        try:
            for round_ in range(1, args.rounds + 1):
                report = await rebalancer.rebalance(pods)
                if report.failed:
                    print(report.message(), file=sys.stderr)
                    return 1
                if not report.asked:
                    balanced_at = time.monotonic()
                    break
                asked_total += sum(report.asked.values())
                sheds = ", ".join(f"{name} {n}" for name, n in report.asked.items())
                print(f"round {round_}: shed {sheds}")

                async def closed(asked: int = asked_total) -> bool:
                    return await shed_total(http, nodes) >= asked

                async def back() -> bool:
                    now = await counts(http, nodes)
                    return sum(now.values()) == len(members) and all(
                        m.client.state is ConnectionState.CONNECTED for m in members
                    )

                await poll(closed, args.period + 60, "the shed")
                await poll(back, 120, "every shed client to reconnect")
                print(f"         {show(await counts(http, nodes))}  ({time.monotonic() - began:.1f} s)")
        finally:
            await pod_api.aclose()
        after = await counts(http, nodes)
        stop.set()
        await publisher
        total = len(published)

        async def delivered() -> bool:
            return all(len(m.received) >= total for m in members)

        with contextlib.suppress(SystemExit):
            await poll(delivered, 60, "every publication delivered")
    lost = sum(total - len(set(m.received) & set(range(total))) for m in members)
    duplicated = sum(len(m.received) - len(set(m.received)) for m in members)
    out_of_order = sum(1 for m in members if m.received != sorted(m.received))
    not_recovered = sum(1 for m in members for r in m.rejoins if not r.recovered)
    for m in members:
        if m.task is not None:
            m.task.cancel()
        await m.client.close()
    print(f"after    {show(after)}")
    result = {
        "connections": len(members),
        "nodes": f"{args.before} -> {args.after}",
        "before": before,
        "after": after,
        "balanced": balanced_at is not None and not plan_sheds(after, args.tolerance),
        "time_to_balance_s": round(balanced_at - began, 1) if balanced_at is not None else None,
        "shed": asked_total,
        "rejoins": sum(len(m.rejoins) for m in members),
        "publications": total,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order_clients": out_of_order,
        "not_recovered": not_recovered,
        "period_s": args.period,
        "tolerance_pct": args.tolerance,
        "balance": args.balance,
    }
    print(json.dumps(result, indent=2))
    return 0 if result["balanced"] and not (lost or duplicated or out_of_order or not_recovered) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--before", type=int, default=2, help="nodes behind nginx at first")
    parser.add_argument("--after", type=int, default=4, help="nodes after the scale-out")
    parser.add_argument("--tolerance", type=float, default=20.0, help="percent (spec.rebalance.tolerance)")
    parser.add_argument("--period", type=float, default=5.0, help="seconds (spec.rebalance.period)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two publications")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--balance", choices=("round_robin", "least_conn"), default="round_robin")
    args = parser.parse_args()
    if not 1 <= args.before < args.after:
        parser.error("--before must be at least 1 and less than --after")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per client
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-rebalance-"))
    code = 1
    try:
        redis = Redis(workdir / "redis", None).start()
        nodes: dict[str, int] = {}
        procs = []
        for i in range(args.after):
            name, port = f"node-{i}", free_port()
            config_path = workdir / f"{name}.json"
            config_path.write_text(json.dumps(node_config(redis.url, name)))
            argv = [*hubbub_argv(), "--host", "127.0.0.1", "--port", str(port), "--config", str(config_path)]
            procs.append(Proc(name, argv, workdir / f"{name}.log", None, stop_signal=signal.SIGINT).start())
            nodes[name] = port
        for proc, port in zip(procs, nodes.values(), strict=True):
            ready = functools.partial(http_ok, f"http://127.0.0.1:{port}/readyz")
            wait_until(ready, 30, f"{proc.name} /readyz", procs)
        nginx = Nginx(workdir / "nginx", args.balance)
        nginx.start(list(nodes.values())[: args.before])
        code = asyncio.run(run(args, nodes, nginx))
        return code
    finally:
        stop_all()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
