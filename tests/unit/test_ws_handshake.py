"""The WebSocket upgrade (hubbub.ws.handshake, and the token policy of hubbub.ws.admission), pure: no sockets.

The size and time limits of the request head are the gate's, for every HTTP request
(tests/process/transport/test_gate.py);
permessage-deflate's grammar and each negotiation rule are tests/unit/test_ws_deflate.py's. Here: what
the connection makes of the head uvicorn hands over, what it refuses and with what, and the 101.
"""

from __future__ import annotations

import json

import pytest

from hubbub import protocol
from hubbub.settings import Settings
from hubbub.ws import admission, handshake
from hubbub.ws.handshake import Refusal, UpgradeRequest
from tests.support.ws_fakes import KEY, upgrade_request

PRODUCTION = Settings(mode="production", allowed_origins=("https://app.example", "https://*.example.org"))
DEVELOPMENT = Settings(mode="development")


def request(*headers: str, target: str = "/ws", method: str = "GET", key: str = KEY) -> UpgradeRequest:
    return handshake.parse_request(upgrade_request(target, *headers, method=method, key=key))


def edited(old: bytes, new: bytes) -> UpgradeRequest:
    """The default upgrade request with `old` replaced by `new`."""
    raw = upgrade_request()
    assert old in raw
    return handshake.parse_request(raw.replace(old, new))


def answer_headers(answer: bytes) -> tuple[str, dict[str, str]]:
    """The status line and headers of an answer (a 101 has no body; an error's is left out)."""
    head, _, _ = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines)


# --- the request ------------------------------------------------------------------------------------


def test_the_request_head_is_read_into_method_path_query_and_lower_case_headers() -> None:
    parsed = request("X-Custom:   spaced value  ", "Authorization: Bearer abc", target="/ws?token=t1&x=%20y")
    assert (parsed.method, parsed.path, parsed.query) == ("GET", "/ws", "token=t1&x=%20y")
    assert parsed.headers["x-custom"] == "spaced value"
    assert parsed.headers["authorization"] == "Bearer abc"
    assert parsed.headers["sec-websocket-key"] == KEY
    assert "X-Custom" not in parsed.headers


def test_a_header_sent_twice_is_one_list() -> None:
    parsed = request(
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10",
        "Sec-WebSocket-Extensions: permessage-deflate",
    )
    assert parsed.headers["sec-websocket-extensions"] == (
        "permessage-deflate; server_max_window_bits=10, permessage-deflate"
    )


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"GET\r\n\r\n", b"garbage without a line end"])
def test_a_head_that_is_not_a_request_parses_into_one_that_fails_the_checks(raw: bytes) -> None:
    parsed = handshake.parse_request(raw)
    refusal = handshake.check_upgrade(parsed)
    assert refusal is not None and refusal.status in (400, 404)


def test_what_follows_the_head_is_not_read_as_headers() -> None:
    parsed = handshake.parse_request(upgrade_request() + b"X-Not-A-Header: 1\r\n\r\n")
    assert "x-not-a-header" not in parsed.headers


# --- what is refused --------------------------------------------------------------------------------


def test_a_valid_upgrade_passes() -> None:
    assert handshake.check_upgrade(request()) is None
    # Header values are compared as RFC 6455 says: the upgrade token case-insensitively.
    assert (
        handshake.check_upgrade(handshake.parse_request(upgrade_request().replace(b"websocket", b"WebSocket"))) is None
    )


@pytest.mark.parametrize(
    ("parsed", "status", "reason"),
    [
        (request(target="/chat"), 404, "WebSocket endpoint is /ws"),
        (request(target="/ws/extra"), 404, "WebSocket endpoint is /ws"),
        (request(method="POST"), 400, "not a WebSocket upgrade"),
        (edited(b"Upgrade: websocket\r\n", b""), 400, "not a WebSocket upgrade"),
        (edited(b"Version: 13", b"Version: 8"), 426, "WebSocket version 13 is required"),
        (request(key="short"), 400, "missing or invalid Sec-WebSocket-Key"),
        (request(key="not base64 at all!!"), 400, "missing or invalid Sec-WebSocket-Key"),
        (edited(f"Sec-WebSocket-Key: {KEY}\r\n".encode(), b""), 400, "missing or invalid Sec-WebSocket-Key"),
    ],
    ids=["path", "path-below", "method", "no-upgrade", "version", "short-key", "bad-key", "no-key"],
)  # fmt: skip
def test_what_is_not_an_upgrade_is_refused_with_the_status_that_says_why(
    parsed: UpgradeRequest, status: int, reason: str
) -> None:
    refusal = handshake.check_upgrade(parsed)
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.why) == (status, reason, "not_websocket")


def test_a_wrong_version_is_told_the_version_to_use() -> None:
    refusal = handshake.check_upgrade(edited(b"Version: 13", b"Version: 8"))
    assert refusal is not None
    status, headers = answer_headers(handshake.refusal_response(refusal))
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("https://app.example", True),
        ("https://chat.example.org", True),  # a glob of allowed_origins
        ("http://127.0.0.1", True),  # the node's own origin (Host: 127.0.0.1)
        ("https://evil.example", False),
        ("https://app.example.evil", False),
        ("null", False),
    ],
)
def test_the_origin_is_checked_against_allowed_origins(origin: str | None, allowed: bool) -> None:
    parsed = request(*([f"Origin: {origin}"] if origin is not None else []))
    refusal = handshake.check_origin(parsed, PRODUCTION)
    if allowed:
        assert refusal is None
    else:
        assert refusal == Refusal(403, "origin not allowed: add it to the allowed_origins setting", "origin")
    assert handshake.check_origin(parsed, DEVELOPMENT) is None  # development admits every origin


# --- the token sent with the upgrade ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "target", "token"),
    [
        ((), "/ws", None),
        (("Authorization: Bearer abc.def.ghi",), "/ws", "abc.def.ghi"),
        (("Authorization: bearer   abc  ",), "/ws", "abc"),
        (("Authorization: Basic dXNlcjpwYXNz",), "/ws", None),
        (("Authorization: Bearer ",), "/ws", None),
        ((), "/ws?token=from-query", "from-query"),
        (("Authorization: Bearer from-header",), "/ws?token=from-query", "from-header"),
        ((), "/ws?token=", None),
    ],
)
def test_a_token_comes_from_the_authorization_header_or_else_the_query(
    headers: tuple[str, ...], target: str, token: str | None
) -> None:
    assert admission.upgrade_token(request(*headers, target=target)) == token


# --- the answers ------------------------------------------------------------------------------------


def test_accept_key_matches_the_rfc_example() -> None:
    assert handshake.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert handshake.valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not handshake.valid_key("short") and not handshake.valid_key("not base64 at all!!")
    assert not handshake.valid_key("")


def test_the_101_answers_the_key_and_names_the_subprotocol_only_when_offered() -> None:
    answer, agreement = handshake.accept(request(), permessage_deflate=True)
    status, headers = answer_headers(answer)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers == {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-accept": handshake.accept_key(KEY),
    }
    assert agreement is None

    offered = request(f"Sec-WebSocket-Protocol: chat, {protocol.SUBPROTOCOL}")
    _, headers = answer_headers(handshake.accept(offered, permessage_deflate=True)[0])
    assert headers["sec-websocket-protocol"] == protocol.SUBPROTOCOL
    _, headers = answer_headers(handshake.accept(request("Sec-WebSocket-Protocol: chat"), permessage_deflate=True)[0])
    assert "sec-websocket-protocol" not in headers


def test_compression_is_agreed_only_when_offered_and_on() -> None:
    offer = request("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; client_max_window_bits")
    answer, agreement = handshake.accept(offer, permessage_deflate=True)
    assert agreement is not None and agreement.window_bits == 10
    assert answer_headers(answer)[1]["sec-websocket-extensions"] == agreement.answer
    assert answer.endswith(b"\r\n\r\n")

    answer, agreement = handshake.accept(offer, permessage_deflate=False)
    assert agreement is None and "sec-websocket-extensions" not in answer_headers(answer)[1]

    # A header outside RFC 6455's grammar: no compression, the upgrade still succeeds.
    answer, agreement = handshake.accept(
        request('Sec-WebSocket-Extensions: permessage-deflate; x="'), permessage_deflate=True
    )
    assert agreement is None and answer.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(400, "Bad Request"), (401, "Unauthorized"), (403, "Forbidden"), (431, "Request Header Fields Too Large"),
     (503, "Service Unavailable"), (599, "Error")],
)  # fmt: skip
def test_a_refusal_is_an_http_error_with_a_json_body_and_connection_close(status: int, phrase: str) -> None:
    answer = handshake.http_response(status, "what to do — in a sentence")
    status_line, headers = answer_headers(answer)
    body = answer.partition(b"\r\n\r\n")[2]
    assert status_line == f"HTTP/1.1 {status} {phrase}"
    assert headers == {"content-type": "application/json", "content-length": str(len(body)), "connection": "close"}
    assert json.loads(body) == {"error": {"code": status, "reason": "what to do — in a sentence"}}
