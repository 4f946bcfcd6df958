"""A node whose open-file limit cannot hold max_connections: a clear warning, and 1013 at the limit it can hold."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from hubbub import fdlimit
from tests.support.server import ServerProcess, server_config
from tests.support.wsclient import RawClient

LIMIT = 256
PENDING = 100


def connection_limit(proc: ServerProcess) -> float:
    for line in httpx.get(proc.http_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("hubbub_connection_limit "):
            return float(line.split()[1])
    raise AssertionError("no hubbub_connection_limit in /metrics")


def soft_open_file_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return int(next(line.split()[3] for line in limits if line.startswith("Max open files")))


async def test_a_node_short_of_file_descriptors_says_so_and_closes_connections_beyond_them_with_1013(
    tmp_path: Path,
) -> None:
    config = server_config(max_connections=1000, max_pending_handshakes=PENDING)
    proc = ServerProcess(tmp_path, config, nofile=(LIMIT, LIMIT)).start()
    clients: list[RawClient] = []
    try:
        expected = fdlimit.budget(LIMIT, 1000, PENDING)
        assert expected.short and expected.max_connections == LIMIT - LIMIT // 4 - fdlimit.RESERVE
        warning = proc.wait_for_log("open-file limit")
        assert f"open-file limit ({LIMIT})" in warning
        assert f"holds at most {expected.max_connections} connections" in warning
        assert connection_limit(proc) == expected.max_connections

        # Up to the limit every connection is served; the next is closed 1013 (try again later), the way a
        # node at max_connections closes it, not left hanging by an accept() out of descriptors.
        # (16 at a time: more handshakes at once than the pending limit would shed some, as they should.)
        while len(clients) < expected.max_connections:
            batch = min(16, expected.max_connections - len(clients))
            clients += await asyncio.gather(*(RawClient.open(proc.ws_url) for _ in range(batch)))
        extra = await RawClient.open(proc.ws_url)
        assert (await extra.closed()).code == 1013
        await clients.pop().close()
        again = await RawClient.connected(proc.ws_url, "again")
        clients.append(again)
        assert "Traceback" not in proc.log()
        assert "out of system resource" not in proc.log()
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        proc.stop()


async def test_a_node_raises_its_soft_open_file_limit_to_what_max_connections_needs(tmp_path: Path) -> None:
    # Soft limit below the need, hard limit above it: the node raises the soft one and keeps its settings.
    config = server_config(max_connections=5000, max_pending_handshakes=PENDING)
    proc = ServerProcess(tmp_path, config, nofile=(1024, 8192)).start()
    try:
        assert connection_limit(proc) == 5000
        assert "open-file limit" not in proc.log()
        assert soft_open_file_limit(proc.pid) >= fdlimit.needed(5000, PENDING)
    finally:
        proc.stop()
