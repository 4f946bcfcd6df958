"""Running the app under uvicorn, with SIGTERM wired to the node's paced drain (protocol §9)."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from hubbub import __version__, fdlimit
from hubbub.app import HubbubApp
from hubbub.codes import CloseCode
from hubbub.gate import Gate
from hubbub.node import Node
from hubbub.preflight import Preflight
from hubbub.settings import Settings
from hubbub.ws.connection import WebSocketConnection

log = logging.getLogger("hubbub")

#: Seconds uvicorn waits for tasks after the drain (the drain itself has already closed the sockets).
SHUTDOWN_GRACE = 5
#: Allocations between young collections, and how rarely the older generations follow (CPython: 700, 10, 10).
GC_THRESHOLDS = (7_000, 20, 500)


class DrainingServer(uvicorn.Server):
    """SIGTERM: readyz 503, serve `drain_delay`, close over `drain_period`, then exit. SIGINT: stop now."""

    def __init__(self, config: uvicorn.Config, app: HubbubApp) -> None:
        super().__init__(config)
        self.hubbub_app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the node's start-up, then listen() on the bound sockets
        if not self.should_exit and sockets:
            for address in sorted({_url(sock) for sock in sockets}):
                log.info("hubbub %s listening on %s (WebSocket: /ws)", __version__, address)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        node = self.hubbub_app.node
        if sig == signal.SIGTERM and node is not None and not self.should_exit:
            if not node.draining:
                node.loop.call_soon_threadsafe(self._drain, node)
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes what is still open with a bare 1012; say goodbye first (rule 9: the `disconnect`
        # push precedes every close), as on a SIGINT that skips the paced drain.
        node = self.hubbub_app.node
        if node is not None:
            for listener in self.servers:
                listener.close()  # no reconnect may land here while we say goodbye
            await node.close_all(CloseCode.DRAINING, grace=1.0)
        await super().shutdown(sockets)

    def _drain(self, node: Node) -> None:
        node.begin_drain()

        async def stop_when_drained() -> None:
            await node.drained.wait()
            self.should_exit = True

        asyncio.get_running_loop().create_task(stop_when_drained())


class StartupError(Exception):
    """The node could not start (the address is taken, start-up failed); the message says why and what to do."""


def uvicorn_config(app: HubbubApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvicorn's messages go through hubbub's logging set-up (one format), at warning and above.
        log_config=None,
        log_level="warning" if settings.log_level == "info" else settings.log_level,
        access_log=False,
        # uvicorn's httptools protocol, pinned (not "auto"), with the request head timed and measured:
        # uvicorn itself has no deadline and no size limit for it (hubbub.gate).
        http=Gate(settings, metrics=app.metrics).protocol(),
        # hubbub's own WebSocket protocol (frames straight to the Session, no ASGI, no task per
        # connection); it enforces max_frame_bytes and permessage_deflate itself.
        ws=WebSocketConnection,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )


def tune_collector() -> None:
    """Fewer and shorter pauses of the cyclic garbage collector.

    A full collection scans every long-lived object: a node's connections, rooms and queues. With
    10,000 rooms it stalled every connection for ~120 ms (the many-rooms bench: p99 77 ms, 16 ms
    with these settings). What the process imported and built before serving lives as long as the
    process, so it is frozen out of every scan; full collections become rare, and the young
    generation is collected after 7,000 allocations instead of 700 (3-8 ms each).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def bind(host: str, port: int) -> list[socket.socket]:
    """Bound, not yet listening, sockets for every address of `host` (connections are refused until
    start-up is done and uvicorn listens). Raises StartupError with the fix when the address is taken."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        raise StartupError(f"cannot listen on {host}: no such address or host name (set host / --host)") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen or (port == 0 and sockets):
            continue  # with port 0 every socket would get a different port: one is enough
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            for other in sockets:
                other.close()
            raise StartupError(_bind_failure(host, port, exc)) from None
        sockets.append(sock)
    return sockets


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {_join(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the address is already in use; stop the other process or choose another --port (HUBBUB_PORT)"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose a --port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has that address; use 127.0.0.1 or 0.0.0.0 (--host)"
    return f"{where}: {exc.strerror or exc}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{_join(host, port)}"


def fit_open_file_limit(settings: Settings) -> Settings:
    """Raise the open-file limit to what the connection limits need; when the hard limit is lower, the
    settings this node can keep (fewer connections: the next one is closed 1013), said once."""
    wanted = fdlimit.needed(settings.max_connections, settings.max_pending_handshakes)
    found = fdlimit.budget(fdlimit.raise_soft_limit(wanted), settings.max_connections, settings.max_pending_handshakes)
    if not found.short:
        return settings
    log.warning("%s", fdlimit.describe(found))
    return settings.model_copy(
        update={"max_connections": found.max_connections, "max_pending_handshakes": found.max_pending_handshakes}
    )


def run(plan: Preflight, *, summary: str | None = None) -> int:
    """Serve until stopped; 0 after a drain or Ctrl-C. Raises StartupError when the node cannot start.

    `summary` (hubbub.logs.summary) is logged once the address is bound: a node that cannot bind says
    only that, in one line."""
    sockets = bind(plan.settings.host, plan.settings.port)
    if summary is not None:
        log.info("%s", summary)
    # After the summary: a node that cannot bind says only that, and the start-up line stays first.
    settings = fit_open_file_limit(plan.settings)
    tune_collector()
    app = HubbubApp(settings)
    try:
        DrainingServer(uvicorn_config(app, settings), app).run(sockets=sockets)
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it captured once shutdown is complete: nothing left to report.
        pass
    except SystemExit as exc:
        # uvicorn exits this way when start-up failed; the reason is already logged in one line.
        if exc.code not in (None, 0):
            raise StartupError(app.failure or "start-up failed") from None
    finally:
        for sock in sockets:
            sock.close()
    return 0
