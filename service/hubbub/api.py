"""The HTTP API for application backends, and the operational endpoints.

`Authorization: Bearer <api key>`; JSON in, JSON out; errors are `{"error": {code, reason}}`
with the matching HTTP status (protocol §8).
"""

from __future__ import annotations

import difflib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubbub import protocol, rules
from hubbub.backends.base import BackendUnavailable
from hubbub.codes import CLOSE_TABLE, CloseCode, CommandError, ErrorCode
from hubbub.metrics import HTTP_ROUTES, Metrics
from hubbub.node import Node
from hubbub.throttle import Throttle
from hubbub.types import JSONObject, Room

MAX_BROADCAST_ROOMS = 1000
#: A request body may carry one publication plus its envelope.
BODY_OVERHEAD = 4096

Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("hubbub.api")
#: Refused API keys: anyone can send requests, so at most a few lines a minute (with a count of the rest).
_refusals: Final = Throttle(log)


def json_response(body: object, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status_code=status, media_type="application/json")


def error_response(code: int, reason: str) -> Response:
    return json_response(protocol.error_body(code, reason), status=code)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def api_endpoint(handler: Callable[[Request, Node], Awaitable[object]]) -> Endpoint:
    """Wrap a handler with API-key auth and the error mapping shared by every API call."""

    async def endpoint(request: Request) -> Response:
        node = _node(request)
        if node.tracing is not None:
            return await node.tracing.api_call(request, lambda: respond(request, node))
        return await respond(request, node)

    async def respond(request: Request, node: Node) -> Response:
        expected = node.settings.effective_api_key()
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if (
            expected is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(presented.strip().encode(), expected.encode())
        ):
            _log_refusal(request, expected, scheme)
            return error_response(401, "missing or wrong API key")
        try:
            return json_response(await handler(request, node))
        except CommandError as exc:
            return error_response(int(exc.code), exc.reason)
        except BackendUnavailable as exc:
            return error_response(503, f"temporarily unavailable: {exc}")

    return endpoint


def _log_refusal(request: Request, expected: str | None, scheme: str) -> None:
    """An INFO line saying why a request was refused (never what it presented), rate-limited."""
    if expected is None:
        reason = "no api_key is configured"
    elif not scheme:
        reason = "no Authorization header"
    elif scheme.lower() != "bearer":
        reason = "the Authorization header is not `Bearer <api key>`"
    else:
        reason = "wrong API key"
    peer = request.client.host if request.client else "?"
    _refusals.log(
        logging.INFO,
        "api_key",
        "API request refused (401): %s (%s %s from %s)",
        reason,
        request.method,
        request.url.path,
        peer,
    )


async def json_body(request: Request, limit: int) -> JSONObject:
    """The request's JSON object, read no further than `limit` bytes (413 beyond, 400 if not an object)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise CommandError(ErrorCode.TOO_LARGE, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise CommandError(ErrorCode.TOO_LARGE, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    try:
        body = protocol.loads(b"".join(chunks))
    except ValueError:
        raise CommandError(ErrorCode.BAD_REQUEST, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


async def _body(request: Request, node: Node, fields: Collection[str]) -> JSONObject:
    body = await json_body(request, node.settings.max_publication_bytes + BODY_OVERHEAD)
    check_names(body, fields, "field")
    return body


def check_names(given: Iterable[str], known: Collection[str], what: str) -> None:
    """400 for a name outside `known`: a misspelled `idempotency_key` silently ignored would turn a
    retry into a duplicate publication."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            allowed = ", ".join(f"`{k}`" for k in known)
            raise CommandError(ErrorCode.BAD_REQUEST, f"unknown {what} `{name[:64]}`{hint} (known: {allowed})")


def _room_param(request: Request) -> Room:
    return rules.check_room(request.path_params["room"])


async def publish(request: Request, node: Node) -> object:
    body = await _body(request, node, ("room", "data", "idempotency_key"))
    room = rules.check_room(body.get("room"))
    if "data" not in body:
        raise CommandError(ErrorCode.BAD_REQUEST, "`data` is required")
    options = rules.room_options(node.settings, room)
    key = protocol.param_idempotency_key(body.get("idempotency_key"))
    result = await node.publish(room, body["data"], key, options, info=None, source="api")
    return {"epoch": result.epoch, "offset": result.offset}


async def broadcast(request: Request, node: Node) -> object:
    body = await _body(request, node, ("rooms", "data", "idempotency_key"))
    rooms = body.get("rooms")
    if not isinstance(rooms, list) or not rooms or len(rooms) > MAX_BROADCAST_ROOMS:
        raise CommandError(ErrorCode.BAD_REQUEST, f"`rooms` must be a list of 1-{MAX_BROADCAST_ROOMS} rooms")
    if "data" not in body:
        raise CommandError(ErrorCode.BAD_REQUEST, "`data` is required")
    protocol.encode_data(body["data"], node.settings.max_publication_bytes)
    key = protocol.param_idempotency_key(body.get("idempotency_key"))
    results: dict[str, Any] = {}
    for name in rooms:
        try:
            room = rules.check_room(name)
            options = rules.room_options(node.settings, room)
            result = await node.publish(room, body["data"], key, options, info=None, source="api")
            results[room] = {"epoch": result.epoch, "offset": result.offset}
        except CommandError as exc:
            results[str(name)] = protocol.error_body(int(exc.code), exc.reason)
        except BackendUnavailable as exc:
            results[str(name)] = protocol.error_body(503, f"temporarily unavailable: {exc}")
    return {"results": results}


async def history(request: Request, node: Node) -> object:
    room = _room_param(request)
    options = rules.room_options(node.settings, room)
    query = request.query_params
    check_names(query.keys(), ("since", "epoch", "limit"), "query parameter")
    since = None
    if "since" in query or "epoch" in query:
        # A position is an offset within an epoch: an offset alone could silently mean another
        # epoch's publications (or none), so both or neither.
        if "since" not in query or "epoch" not in query:
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                "`since` and `epoch` go together: the offset and epoch of a position from an earlier reply",
            )
        raw_offset = query["since"]
        if not raw_offset.isdigit():
            raise CommandError(ErrorCode.BAD_REQUEST, "`since` must be a non-negative integer")
        since = protocol.param_since({"epoch": query["epoch"], "offset": int(raw_offset)})
    raw_limit = query.get("limit")
    if raw_limit is not None and not raw_limit.isdigit():
        raise CommandError(ErrorCode.BAD_REQUEST, "`limit` must be a non-negative integer")
    limit = protocol.param_limit(int(raw_limit) if raw_limit is not None else None)
    return await node.history(room, since, limit, options)


def _presence_room(request: Request, node: Node) -> Room:
    check_names(request.query_params.keys(), (), "query parameter")
    room = _room_param(request)
    if not rules.room_options(node.settings, room).presence:
        raise CommandError(ErrorCode.FORBIDDEN, "presence is disabled in this namespace")
    return room


async def presence(request: Request, node: Node) -> object:
    room = _presence_room(request, node)
    return {"clients": await node.backends.presence.get(room)}


async def presence_stats(request: Request, node: Node) -> object:
    room = _presence_room(request, node)
    stats = await node.backends.presence.stats(room)
    return {"clients": stats.clients, "users": stats.users}


async def disconnect(request: Request, node: Node) -> object:
    body = await _body(request, node, ("user", "code", "reason"))
    user = body.get("user")
    if not isinstance(user, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "`user` must be a string")
    raw_code = body.get("code", int(CloseCode.DISCONNECTED_BY_API))
    try:
        code = CloseCode(raw_code)
    except ValueError:
        raise CommandError(ErrorCode.BAD_REQUEST, "`code` must be a close code of the protocol table") from None
    if code < 4000:
        raise CommandError(ErrorCode.BAD_REQUEST, "`code` must be a 4xxx close code")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason.encode()) > 123):
        raise CommandError(ErrorCode.BAD_REQUEST, "`reason` must be a string of at most 123 bytes")
    return {"disconnected": await node.backends.cluster.disconnect_user(user, int(code), reason)}


#: Longest period a shed may be spread over: the operator waits it out before looking again.
MAX_SHED_PERIOD: Final = 600.0


async def shed(request: Request, node: Node) -> object:
    """Close `connections` of this node's connections with 1012 evenly over `period` seconds (rebalancing)."""
    body = await _body(request, node, ("connections", "period"))
    count = body.get("connections")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CommandError(ErrorCode.BAD_REQUEST, "`connections` must be an integer of at least 1")
    period = body.get("period", min(node.settings.drain_period, MAX_SHED_PERIOD))
    if (
        not isinstance(period, int | float)
        or isinstance(period, bool)
        or not math.isfinite(period)
        or not 0 <= period <= MAX_SHED_PERIOD
    ):
        raise CommandError(ErrorCode.BAD_REQUEST, f"`period` must be a number of seconds from 0 to {MAX_SHED_PERIOD:g}")
    started = node.shed(count, float(period))
    return {
        "shedding": started.connections,
        "connections": len(node.sessions),
        "period": protocol.wire_number(float(period)),
        "replaced": started.replaced,
    }


async def info(request: Request, node: Node) -> object:
    nodes = await node.backends.cluster.nodes()
    own = node.settings.node_name
    return {"nodes": [{**n, "internals": node.internals()} if n.get("name") == own else n for n in nodes]}


#: Close codes a status page may show: the server's table plus what clients and networks cause.
CLOSE_CODE_MEANINGS: Final = {
    **{str(int(code)): info.reason for code, info in CLOSE_TABLE.items()},
    "1001": "going away (client left the page)",
    "1006": "connection lost (no close frame)",
}


async def status(request: Request, node: Node) -> object:
    """Everything the status page shows: every live node's figures, this node's always current."""
    return {
        "node": node.settings.node_name,
        "generated_at": int(time.time() * 1000),
        "close_codes": CLOSE_CODE_MEANINGS,
        "rooms": await node.backends.cluster.rooms(),
        "nodes": await node.backends.cluster.nodes(),
    }


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    ready, reason = _node(request).readiness()
    return json_response({"status": "ready" if ready else "unready", "reason": reason}, status=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(_node(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def routes() -> list[BaseRoute]:
    return [
        Route("/api/publish", api_endpoint(publish), methods=["POST"]),
        Route("/api/broadcast", api_endpoint(broadcast), methods=["POST"]),
        Route("/api/history/{room:path}", api_endpoint(history), methods=["GET"]),
        Route("/api/presence/{room:path}", api_endpoint(presence), methods=["GET"]),
        Route("/api/presence_stats/{room:path}", api_endpoint(presence_stats), methods=["GET"]),
        Route("/api/disconnect", api_endpoint(disconnect), methods=["POST"]),
        Route("/api/shed", api_endpoint(shed), methods=["POST"]),
        Route("/api/info", api_endpoint(info), methods=["GET"]),
        Route("/api/status", api_endpoint(status), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def counted(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    """`app`, with every answered request counted by route template and status (hubbub_api_requests_total).

    The template is that of the route Starlette matched (`scope["route"]`), from the fixed list in
    metrics.HTTP_ROUTES; anything else, 404s above all, is "other": never a raw path (a client could
    make up paths without end).
    """
    known = frozenset(HTTP_ROUTES)

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        finally:
            if status:
                route = getattr(scope.get("route"), "path", None)
                metrics.api_request(route if route in known else "other", status)

    return counting
