"""The `/ws` endpoint: the upgrade checks, then the read loop that feeds a Session.

It is a raw ASGI application mounted ahead of Starlette's middleware, so every outbound
message goes straight to the server's `send` with no wrapper on the per-delivery path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from hubbub import protocol, rules
from hubbub.auth import AuthError, Principal
from hubbub.codes import CloseCode
from hubbub.node import Node
from hubbub.outbox import ASGISend
from hubbub.session import Session

log = logging.getLogger("hubbub.transport")

Scope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def upgrade_token(scope: Scope) -> str | None:
    """A token from `Authorization: Bearer` or the `token` query parameter."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


async def deny(send: ASGISend, status: int, reason: str) -> None:
    """Refuse the upgrade with an HTTP response (the ASGI websocket denial extension)."""
    body = protocol.dumps(protocol.error_body(status, reason)).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def websocket_endpoint(node: Node, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    settings = node.settings
    if not rules.origin_allowed(_header(scope, b"origin"), _header(scope, b"host"), settings.allowed_origins):
        await deny(send, 403, "origin not allowed")
        return
    principal: Principal | None = None
    token = upgrade_token(scope)
    if token is not None:
        try:
            principal = await node.auth.authenticate(token)
        except AuthError as exc:
            node.metrics.auth_failures.add(1, {"reason": exc.reason})
            await deny(send, 401, exc.message)
            return
    subprotocol = protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in scope.get("subprotocols", ()) else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})

    session = Session(node, send, principal=principal)
    node.attach(session)
    if node.closing:
        session.close(CloseCode.DRAINING)
    elif len(node.sessions) > settings.max_connections:
        session.close(CloseCode.OVERLOADED)
    code = 1006
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await session.handle_text(text)
                else:
                    session.handle_binary()
            elif kind == "websocket.disconnect":
                code = int(message.get("code", 1006))
                break
    except Exception:
        log.exception("connection %s failed", session.client_id)
        session.close(CloseCode.INTERNAL_ERROR)
        code = int(CloseCode.INTERNAL_ERROR)
        # The push and close frame go out before the ASGI app returns and the server drops the socket.
        await session.outbox.wait_flushed()
    finally:
        await node.detach(session, code)
