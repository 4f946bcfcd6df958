"""Application factory: the node's lifespan, the HTTP routes and the `/ws` endpoint."""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from hubbub import api, pages
from hubbub.backends import create_backends
from hubbub.metrics import Metrics
from hubbub.node import Node
from hubbub.preflight import warnings
from hubbub.settings import DEV_API_KEY, DEV_JWT_SECRET, Settings

log = logging.getLogger("hubbub")


def announce(settings: Settings) -> None:
    if settings.development:
        log.warning(
            "DEVELOPMENT MODE: no configuration given. Every namespace has history, presence, join/leave and "
            "client publish on. Pages from any origin may connect and import /hubbub.js. JWT secret: %s. "
            "API key: %s. Never expose this node; start with a config "
            "file or HUBBUB_MODE=production for real use.",
            "HUBBUB_JWT_SECRET" if settings.jwt_secret else repr(DEV_JWT_SECRET),
            "HUBBUB_API_KEY" if settings.api_key else repr(DEV_API_KEY),
        )
    for finding in warnings(settings):
        log.warning("configuration: %s", finding)


class HubbubApp:
    """ASGI entry point for HTTP and the lifespan. WebSockets never reach it under `hubbub serve`: uvicorn
    hands every upgrade to hubbub.ws.connection.WebSocketConnection, which reads `self.node`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node: Node | None = None
        #: Why start-up failed, in one line (None while it has not).
        self.failure: str | None = None
        #: Made before the node: the server's gate and refused upgrades count into it before (or without) one.
        self.metrics = Metrics(settings.node_name)
        self.http = Starlette(routes=api.routes() + pages.routes())
        self.http.state.demo_tokens = pages.demo_token_limiter(settings)
        self._counted_http = api.counted(self.http, self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            # Only under another ASGI server: hubbub's WebSocket endpoint needs its own protocol.
            await receive()
            await send({"type": "websocket.close", "code": 1011, "reason": "serve hubbub with `hubbub serve`"})
        else:
            await self._counted_http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Handled here rather than by Starlette, which reports a failed start-up as a traceback: the
        # operator gets one line saying what failed (the traceback only at debug level).
        await receive()  # lifespan.startup
        try:
            announce(self.settings)
            node = Node(self.settings, create_backends(self.settings, self.metrics), metrics=self.metrics)
            await node.start()
        except Exception as exc:
            self.failure = f"start-up failed: {exc}" if str(exc) else f"start-up failed: {type(exc).__name__}"
            log.error("%s", self.failure)
            log.debug("start-up failure", exc_info=True)
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        self.http.state.node = self.node = node
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await node.stop()
        except Exception as exc:
            log.error("shutdown failed: %s", exc)
            log.debug("shutdown failure", exc_info=True)
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings | None = None, **overrides: Any) -> HubbubApp:
    if settings is None:
        from hubbub.loader import load_settings

        settings = load_settings(overrides=overrides)
    return HubbubApp(settings)
