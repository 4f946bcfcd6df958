"""Application factory: the node's lifespan, the HTTP routes and the `/ws` endpoint."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from hubbub import api, pages
from hubbub.backends import create_backends
from hubbub.node import Node
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
    for problem in settings.problems():
        log.warning("configuration: %s", problem)


class HubbubApp:
    """ASGI entry point for HTTP. WebSockets never reach it under `hubbub serve`: uvicorn hands every
    upgrade to hubbub.connection.WebSocketConnection, which reads `self.node`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node: Node | None = None

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            announce(settings)
            node = Node(settings, create_backends(settings))
            await node.start()
            app.state.node = self.node = node
            try:
                yield
            finally:
                await node.stop()

        self.http = Starlette(routes=api.routes() + pages.routes(), lifespan=lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # Only under another ASGI server: hubbub's WebSocket endpoint needs its own protocol.
            await receive()
            await send({"type": "websocket.close", "code": 1011, "reason": "serve hubbub with `hubbub serve`"})
            return
        await self.http(scope, receive, send)


def create_app(settings: Settings | None = None, **overrides: Any) -> HubbubApp:
    if settings is None:
        from hubbub.settings import load_settings

        settings = load_settings(overrides=overrides)
    return HubbubApp(settings)
