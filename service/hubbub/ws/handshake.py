"""The WebSocket upgrade (RFC 6455 §4), pure: the request, what makes it an upgrade, the two answers.

uvicorn parses the request head (with httptools, behind hubbub's gate, which bounds its size and
time for every HTTP request: `hubbub.gate`) and hands the connection over with the head written out
again; `parse_request` reads that. `check_upgrade` and `check_origin` say why a request is refused,
as a `Refusal` (an HTTP status, the reason in the JSON body, and what the refusal counts as in
hubbub_handshake_refusals_total); `accept` builds the 101 with the subprotocol and the compression
it agrees to, and `http_response` the answer to a refused one. Nothing here does I/O: the
connection writes the answers, `admission` logs and counts.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hubbub import protocol, rules
from hubbub.ws import deflate

if TYPE_CHECKING:
    from hubbub.metrics import HandshakeRefusal
    from hubbub.settings import Settings

#: The only path that upgrades (protocol.md).
PATH: Final = "/ws"
#: RFC 6455 §1.3: what the client's key is concatenated with before it is hashed into the answer.
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_PHRASES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    method: str
    path: str
    #: The query string, without its `?`.
    query: str
    #: Lower-case names; a header sent several times is one value, joined by ", " (RFC 9110 §5.3).
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade request is answered with an HTTP error instead of a 101."""

    status: int
    #: The body's `reason`: what the client did wrong or should do, in a sentence.
    reason: str
    #: What hubbub_handshake_refusals_total counts it as; None when it is counted elsewhere.
    why: HandshakeRefusal | None
    #: Header lines to add to the answer, each ending with CRLF.
    extra_headers: str = ""


def parse_request(raw: bytes) -> UpgradeRequest:
    """The method, path, query and headers of a request head (as uvicorn writes it out again)."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    path, _, query = target.partition("?")
    return UpgradeRequest(method, path, query, headers)


def check_upgrade(request: UpgradeRequest) -> Refusal | None:
    """Why the request is not a WebSocket upgrade hubbub can answer (RFC 6455 §4.2.1), or None."""
    headers = request.headers
    if request.path != PATH:
        return Refusal(404, f"WebSocket endpoint is {PATH}", "not_websocket")
    if request.method != "GET" or "websocket" not in headers.get("upgrade", "").lower():
        return Refusal(400, "not a WebSocket upgrade", "not_websocket")
    if headers.get("sec-websocket-version") != "13":
        return Refusal(426, "WebSocket version 13 is required", "not_websocket", "sec-websocket-version: 13\r\n")
    if not valid_key(headers.get("sec-websocket-key", "")):
        return Refusal(400, "missing or invalid Sec-WebSocket-Key", "not_websocket")
    return None


def check_origin(request: UpgradeRequest, settings: Settings) -> Refusal | None:
    """A 403 unless the request's Origin is allowed (the allowed_origins setting; any in development)."""
    if rules.origin_permitted(request.headers.get("origin"), request.headers.get("host"), settings):
        return None
    return Refusal(403, "origin not allowed: add it to the allowed_origins setting", "origin")


def accept(request: UpgradeRequest, *, permessage_deflate: bool) -> tuple[bytes, deflate.Agreement | None]:
    """The 101 answer to an upgrade request `check_upgrade` passed, and the compression it agrees to.

    The subprotocol is named when the client offered it (clients that offer none get none). With
    `permessage_deflate` off no extension is answered, whatever the client offers.
    """
    headers = request.headers
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-accept: {accept_key(headers['sec-websocket-key'])}",
    ]
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    if protocol.SUBPROTOCOL in offered:
        lines.append(f"sec-websocket-protocol: {protocol.SUBPROTOCOL}")
    offers = headers.get("sec-websocket-extensions")
    agreement = deflate.negotiate(offers) if offers and permessage_deflate else None
    if agreement is not None:
        lines.append(f"sec-websocket-extensions: {agreement.answer}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), agreement


def http_response(status: int, reason: str, extra_headers: str = "") -> bytes:
    """An HTTP error answer with hubbub's JSON error body, after which the connection closes."""
    body = protocol.dumps(protocol.error_body(status, reason)).encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def refusal_response(refusal: Refusal) -> bytes:
    return http_response(refusal.status, refusal.reason, refusal.extra_headers)


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def valid_key(key: str) -> bool:
    """Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 says: 16 bytes, base64-encoded."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False
