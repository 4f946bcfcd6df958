"""What the service serves to browsers: the client library, the demo chat and the status page.

The files live in `hubbub/static/` and are read once per process. Pages carry a strict
Content-Security-Policy: everything they load comes from this origin, nothing inline.
`/status` is a shell without data; its figures come from `/api/status`, behind the API key.

The client library (`/hubbub.js`, `/hubbub.d.ts`) is also for pages on other origins: browsers
fetch ES modules in CORS mode, so it carries `Access-Control-Allow-Origin` for the origins the
WebSocket check admits (`allowed_origins`; every origin in development mode).
"""

from __future__ import annotations

import functools
import hashlib
import html
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hubbub import api, rules
from hubbub.auth import mint_token
from hubbub.codes import CommandError, ErrorCode
from hubbub.node import Node
from hubbub.ratelimit import AddressLimiter
from hubbub.refusals import REFUSALS
from hubbub.settings import Settings

MEDIA_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: Served at `/static/<name>`; anything else there is a 404, so no path ever reaches the filesystem.
STATIC_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|mjs|ts|css|svg|png)$")

PAGE_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

DEV_KEY_META: Final = '<meta name="hubbub-dev-api-key" content="">'
DEMO_OFF: Final = "the demo is off (set `demo: true` to serve it)"
#: How long a browser may cache a preflight answer (Chromium caps it at 2 h).
PREFLIGHT_MAX_AGE: Final = "3600"
MAX_DEMO_NAME: Final = 32
DEMO_BODY_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def asset(name: str) -> Asset | None:
    path = resources.files("hubbub") / "static" / name
    if not path.is_file():
        return None
    body = path.read_bytes()
    suffix = name[name.rfind(".") :]
    return Asset(
        body, MEDIA_TYPES.get(suffix, "application/octet-stream"), '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    )


def serve(
    request: Request,
    found: Asset,
    *,
    body: bytes | None = None,
    page: bool = False,
    extra: dict[str, str] | None = None,
) -> Response:
    """A cacheable response that browsers revalidate (ETag), so a new release is picked up at once."""
    headers = {"cache-control": "no-cache", "etag": found.etag, **(PAGE_HEADERS if page else {}), **(extra or {})}
    if body is None and request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    if body is not None:
        headers.pop("etag")
    return Response(found.body if body is None else body, media_type=found.media_type, headers=headers)


def not_found(reason: str = "not found") -> Response:
    return api.error_response(404, reason)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def cors_headers(request: Request, what: str) -> dict[str, str]:
    """CORS for a public, credential-free resource: the requesting origin echoed when it is admitted.

    `Vary: Origin` goes on every answer (304s included), with or without the grant, so no cache
    hands one origin's answer to another. A refused origin gets no grant and a WARNING in the log.
    """
    headers = {"vary": "Origin"}
    origin = request.headers.get("origin")
    if origin is None:
        return headers
    settings = _node(request).settings
    if rules.origin_permitted(origin, request.headers.get("host"), settings):
        headers["access-control-allow-origin"] = origin
    else:
        REFUSALS.refused(origin, what, settings.allowed_origins)
    return headers


async def client_library(request: Request) -> Response:
    name = request.url.path.removeprefix("/")
    found = asset(name)
    if found is None:
        return not_found()
    if request.method == "OPTIONS":
        return preflight(request, f"/{name}")
    return serve(request, found, extra=cors_headers(request, f"/{name}"))


def preflight(request: Request, what: str) -> Response:
    """The answer to OPTIONS: a CORS preflight (a `fetch()` with headers of its own) or a plain one.

    A module import or a plain `fetch()` needs none; one that sends, say, `Authorization` asks first.
    The headers it asks for are granted: the resource is the same, whatever they say.
    """
    headers = cors_headers(request, what)
    headers["allow"] = "GET, HEAD, OPTIONS"
    if "access-control-allow-origin" in headers and "access-control-request-method" in request.headers:
        headers["vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        headers["access-control-allow-methods"] = "GET, HEAD"
        asked = request.headers.get("access-control-request-headers", "").strip()
        if asked:
            headers["access-control-allow-headers"] = asked
        headers["access-control-max-age"] = PREFLIGHT_MAX_AGE
    return Response(status_code=204, headers=headers)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    found = asset(name) if STATIC_NAME.match(name) else None
    return serve(request, found) if found else not_found()


async def demo_page(request: Request) -> Response:
    settings = _node(request).settings
    if not settings.demo_enabled:
        return demo_off(request, settings.demo_namespace)
    found = asset("demo.html")
    return serve(request, found, page=True) if found else not_found()


def demo_off(request: Request, namespace: str) -> Response:
    """404 either way: a page saying how to turn the demo on for browsers, the JSON error for the rest."""
    found = asset("demo-off.html")
    if found is None or "text/html" not in request.headers.get("accept", ""):
        response = not_found(DEMO_OFF)
        response.headers["vary"] = "Accept"
        return response
    body = found.body.replace(b"{namespace}", html.escape(namespace).encode())
    return Response(body, status_code=404, media_type=found.media_type, headers={**PAGE_HEADERS, "vary": "Accept"})


async def status_page(request: Request) -> Response:
    found = asset("status.html")
    if found is None:
        return not_found()
    settings = _node(request).settings
    if not settings.development:
        return serve(request, found, page=True)
    # The development key is public (printed at start-up); filling it in saves a newcomer a step.
    key = settings.effective_api_key() or ""
    body = found.body.replace(DEV_KEY_META.encode(), DEV_KEY_META.replace('""', f'"{key}"').encode())
    return serve(request, found, body=body, page=True)


def demo_name(raw: object) -> str:
    """A display name for the demo: 1-32 printable characters, surrounding spaces dropped."""
    if not isinstance(raw, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "`name` must be a string")
    name = raw.strip()
    if not name or len(name) > MAX_DEMO_NAME:
        raise CommandError(ErrorCode.BAD_REQUEST, f"`name` must be 1-{MAX_DEMO_NAME} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise CommandError(ErrorCode.BAD_REQUEST, "`name` must not contain control characters")
    return name


async def demo_token(request: Request) -> Response:
    """Anyone may get a short-lived token for the demo namespace: that is what the demo is for."""
    settings = _node(request).settings
    if not settings.demo_enabled:
        return not_found(DEMO_OFF)
    secret = settings.effective_jwt_secret()
    if secret is None:
        return api.error_response(503, "the demo needs jwt_secret to sign its tokens")
    limiter: AddressLimiter = request.app.state.demo_tokens
    wait = limiter.acquire(request.client.host if request.client else "", time.monotonic())
    if wait:
        _node(request).metrics.rate_limit("demo_token")
        retry_after = max(1, math.ceil(wait))
        refused = api.error_response(
            429, f"too many demo tokens from your address; try again in {retry_after} s (demo_tokens_per_minute)"
        )
        refused.headers["retry-after"] = str(retry_after)
        return refused
    try:
        body = await api.json_body(request, DEMO_BODY_LIMIT)
        api.check_names(body, ("name",), "field")
        name = demo_name(body.get("name"))
    except CommandError as exc:
        return api.error_response(int(exc.code), exc.reason)
    pattern = f"{settings.demo_namespace}:*"
    ttl = int(settings.demo_token_ttl)
    token = mint_token(
        secret,
        sub=name,
        rooms=[pattern],
        publish=[pattern],
        ttl=ttl,
        info={"name": name},
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    return api.json_response({"token": token, "user": name, "expires_in": ttl, "namespace": settings.demo_namespace})


def demo_token_limiter(settings: Settings) -> AddressLimiter:
    """Anyone may ask for a demo token, so each address gets a share: a page load or a reconnect
    takes one, a refresh every demo_token_ttl another; a script minting tokens in a loop gets 429s."""
    return AddressLimiter(settings.demo_tokens_per_minute / 60, settings.demo_tokens_per_minute)


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page, methods=["GET"]),
        Route("/status", status_page, methods=["GET"]),
        Route("/hubbub.js", client_library, methods=["GET", "OPTIONS"]),
        Route("/hubbub.d.ts", client_library, methods=["GET", "OPTIONS"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/demo/token", demo_token, methods=["POST"]),
    ]
