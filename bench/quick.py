"""Quick measurements of one hubbub node: memory per idle connection and fan-out cost.

    .venv/bin/python bench/quick.py [--connections 5000] [--subscribers 1000] [--seconds 10]

The server runs as a real `hubbub serve` process pinned to CPU 0; this load generator is pinned
to CPU 1 (on machines with two or more cores), so the server's figures are per core. Results
are printed as JSON. The full comparison with peers lives in a later benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

from hubbub.auth import mint_token

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = {
        "mode": "production",
        "jwt_secret": SECRET,
        "api_key": "bench",
        "max_connections": 200_000,
        "command_rate": 1_000_000,
        "command_burst": 1_000_000,
        "namespaces": {"bench": {"history_size": 100, "client_publish": True}},
    }
    path = workdir / "bench.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--config", str(path), "--log-level", "warning"],
        preexec_fn=raise_nofile,
    )
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(proc.pid, {0})
        os.sched_setaffinity(0, {1})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc
        time.sleep(0.05)
    raise RuntimeError("server did not start")


async def open_client(url: str, user: str, room: str) -> ClientConnection:
    ws = await connect(url, max_size=None, open_timeout=30, ping_interval=None)
    token = mint_token(SECRET, sub=user, rooms=["bench:*"], publish=["bench:*"], ttl=None)
    await ws.send(json.dumps({"id": 1, "op": "connect", "token": token, "rooms": {room: {}}}))
    reply = json.loads(str(await ws.recv()).split("\n")[0])
    assert "ok" in reply, reply
    return ws


async def open_many(url: str, count: int, room: str, concurrency: int = 100) -> list[ClientConnection]:
    clients: list[ClientConnection] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            clients.append(await open_client(url, f"user{i}", room))

    await asyncio.gather(*(one(i) for i in range(count)))
    return clients


def rss_kib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 1024


async def idle_memory(url: str, pid: int, count: int) -> dict[str, Any]:
    warm = await open_many(url, 200, "bench:warm")
    await asyncio.sleep(1)
    before = rss_kib(pid)
    clients = await open_many(url, count, "bench:idle")
    await asyncio.sleep(2)
    after = rss_kib(pid)
    for ws in clients + warm:
        await ws.close()
    return {
        "connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / count,
    }


async def fanout(url: str, pid: int, subscribers: int, seconds: float, window: int = 20) -> dict[str, Any]:
    clients = await open_many(url, subscribers, "bench:fanout")
    publisher = await open_client(url, "publisher", "bench:other")
    received = 0
    last_offset: dict[int, int] = {}
    gaps = 0
    stop = asyncio.Event()

    async def reader(index: int, ws: ClientConnection) -> None:
        nonlocal received, gaps
        with contextlib.suppress(Exception):
            async for frame in ws:
                for line in str(frame).split("\n"):
                    if line.startswith('{"push":"pub"'):
                        offset = json.loads(line)["offset"]
                        if offset != last_offset.get(index, offset - 1) + 1:
                            gaps += 1
                        last_offset[index] = offset
                        received += 1

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(clients)]
    server = psutil.Process(pid)
    me = psutil.Process()
    cpu0 = server.cpu_times()
    my0 = me.cpu_times()
    t0 = time.perf_counter()
    published = 0
    next_id = 2
    outstanding = 0
    payload = {"text": "x" * 64}

    async def replies() -> None:
        nonlocal outstanding
        async for frame in publisher:
            outstanding -= str(frame).count('"ok"')
            if stop.is_set() and outstanding <= 0:
                return

    reply_task = asyncio.create_task(replies())
    while time.perf_counter() - t0 < seconds:
        # Bounded in flight: publications sent but not yet fanned out to everyone.
        if outstanding < window and published * subscribers - received < window * subscribers:
            await publisher.send(json.dumps({"id": next_id, "op": "publish", "room": "bench:fanout", "data": payload}))
            next_id += 1
            published += 1
            outstanding += 1
        else:
            await asyncio.sleep(0.001)
    stop.set()
    deadline = time.perf_counter() + 10
    while received < published * subscribers and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    cpu1 = server.cpu_times()
    my1 = me.cpu_times()
    server_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    my_cpu = (my1.user + my1.system) - (my0.user + my0.system)
    reply_task.cancel()
    for ws in clients:
        await ws.close()
    await publisher.close()
    for task in readers:
        task.cancel()
    return {
        "subscribers": subscribers,
        "publications": published,
        "deliveries": received,
        "lost": published * subscribers - received,
        "gaps": gaps,
        "seconds": round(elapsed, 2),
        "deliveries_per_second": round(received / elapsed),
        "server_cpu_seconds": round(server_cpu, 2),
        "server_cpu_us_per_delivery": round(server_cpu / max(received, 1) * 1e6, 2),
        "server_cpu_utilisation": round(server_cpu / elapsed, 2),
        "generator_cpu_utilisation": round(my_cpu / elapsed, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    raise_nofile()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(Path(tmp), port)
        try:
            url = f"ws://127.0.0.1:{port}/ws"
            results = {
                "idle_memory": await idle_memory(url, proc.pid, args.connections),
                "fanout": await fanout(url, proc.pid, args.subscribers, args.seconds),
            }
            print(json.dumps(results, indent=2))
        finally:
            proc.send_signal(signal.SIGINT)  # stop at once, without the SIGTERM drain
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            proc.kill()


if __name__ == "__main__":
    asyncio.run(main())
