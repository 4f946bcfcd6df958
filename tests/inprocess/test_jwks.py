"""hubbub.jwks against a real HTTP identity provider on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hubbub import jwks
from hubbub.auth import AuthError
from hubbub.jwks import Authenticator, JwksCache
from tests.support.polling import until

KEY_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = "s" * 32


class FakeIdp:
    """Serves whatever document/status the test sets, and counts the requests it answered."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"keys": []}'
        self.requests = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                status, body = idp.status, idp.body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def publish(self, **keys: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        entries: list[dict[str, Any]] = []
        for kid, key in keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                entries.append({**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"})
            else:
                entries.append({**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"})
        self.respond(200, json.dumps({"keys": entries}).encode())

    def respond(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body


@pytest.fixture
def idp() -> Iterator[FakeIdp]:
    server = FakeIdp()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
async def make_authenticator() -> AsyncIterator[AuthFactory]:
    """Builds Authenticators with test-sized intervals and closes them (and their HTTP clients) afterwards."""
    created: list[Authenticator] = []

    def factory(**kwargs: Any) -> Authenticator:
        kwargs.setdefault("jwks_min_refetch_interval", 0.2)
        authenticator = Authenticator(**kwargs)
        created.append(authenticator)
        return authenticator

    yield factory
    for authenticator in created:
        await authenticator.aclose()


def token(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str | None, sub: str = "alice") -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    payload = {"sub": sub, "exp": int(time.time()) + 600}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Clock:
    """The monotonic clock hubbub.jwks reads, moved by the test: refresh and refetch intervals are crossed
    exactly when the test says, however slowly a loaded machine runs the steps in between."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(jwks, "time", fake)  # hubbub.jwks's own reference only; asyncio keeps the real clock
    return fake


async def test_keys_are_fetched_once_and_cached(idp: FakeIdp, make_authenticator: AuthFactory) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url)
    for index in range(50):
        principal = await auth.authenticate(token(KEY_1, "k1", sub=f"user-{index}"))
        assert principal.user == f"user-{index}"
    assert auth.jwks is not None
    assert auth.jwks.fetch_count == 1
    assert idp.requests == 1


async def test_concurrent_first_authentications_share_one_fetch(idp: FakeIdp, make_authenticator: AuthFactory) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url)
    principals = await asyncio.gather(*(auth.authenticate(token(KEY_1, "k1")) for _ in range(20)))
    assert {principal.user for principal in principals} == {"alice"}
    assert idp.requests == 1


async def test_rotated_key_is_accepted_after_an_automatic_refetch(
    idp: FakeIdp, make_authenticator: AuthFactory, clock: Clock
) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url)
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"

    idp.publish(k2=KEY_2)  # the IdP rotates: new kid, old key withdrawn
    clock.advance(0.25)  # past min_refetch_interval since the first fetch
    assert (await auth.authenticate(token(KEY_2, "k2", sub="bob"))).user == "bob"
    assert auth.jwks is not None
    assert auth.jwks.fetch_count == 2

    with pytest.raises(AuthError) as caught:
        await auth.authenticate(token(KEY_1, "k1"))
    assert caught.value.reason == "unknown_key"


async def test_random_unknown_kids_trigger_at_most_one_refetch_per_interval(
    idp: FakeIdp, make_authenticator: AuthFactory, clock: Clock
) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url, jwks_min_refetch_interval=0.5)
    await auth.authenticate(token(KEY_1, "k1"))
    clock.advance(0.55)

    async def spam(tokens: list[str]) -> None:
        for forged in tokens:
            with pytest.raises(AuthError) as caught:
                await auth.authenticate(forged)
            assert caught.value.reason == "unknown_key"

    def random_kid_tokens() -> list[str]:
        return [token(KEY_1, uuid.uuid4().hex) for _ in range(30)]

    # The whole burst inside one interval (the clock stands still), however long it takes to run.
    await asyncio.gather(*(spam(random_kid_tokens()) for _ in range(3)))
    assert idp.requests == 2  # the initial fetch plus exactly one refetch for the whole burst

    clock.advance(0.55)
    await spam(random_kid_tokens())
    assert idp.requests == 3
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"internal error"),
        (200, b"<html>not json</html>"),
        (200, b'{"not": "a jwks"}'),
        (200, b'{"keys": []}'),
        (404, b'{"keys": []}'),
    ],
)
async def test_idp_failures_keep_serving_the_last_good_keys(
    idp: FakeIdp,
    make_authenticator: AuthFactory,
    caplog: pytest.LogCaptureFixture,
    clock: Clock,
    status: int,
    body: bytes,
) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url, jwks_refresh_interval=0.1, jwks_min_refetch_interval=0.1)
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"

    idp.respond(status, body)
    clock.advance(0.15)
    with caplog.at_level(logging.WARNING, logger="hubbub.auth"):
        assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"  # starts a background refresh
        await until(lambda: idp.requests == 2 and "keeping the previous keys" in caplog.text, what="the failed refresh")
        # Within min_refetch_interval of that attempt: served from the cache, no new fetch.
        assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"
        clock.advance(0.15)
        with pytest.raises(AuthError) as caught:  # an unknown kid forces a foreground refetch, which fails too
            await auth.authenticate(token(KEY_2, "k2"))
    assert caught.value.reason == "unknown_key"
    assert idp.requests == 3
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"
    assert all(record.name == "hubbub.auth" for record in caplog.records if record.levelno >= logging.WARNING)


async def test_keys_are_refreshed_in_the_background_after_the_refresh_interval(
    idp: FakeIdp, make_authenticator: AuthFactory, clock: Clock
) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url, jwks_refresh_interval=0.1, jwks_min_refetch_interval=0.05)
    jwks_cache = auth.jwks
    assert jwks_cache is not None
    await auth.authenticate(token(KEY_1, "k1"))
    idp.publish(k1=KEY_1, k2=KEY_2)
    clock.advance(0.15)
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"  # served from cache while refreshing

    async def refreshed() -> bool:
        return "k2" in await jwks_cache.keys()

    await until(refreshed, what="the background refresh to pick up k2")
    assert (await auth.authenticate(token(KEY_2, "k2", sub="bob"))).user == "bob"
    assert jwks_cache.fetch_count == 2  # k2 came from the periodic refresh, not from an unknown-kid refetch


async def test_idp_down_from_the_start_is_unknown_key(make_authenticator: AuthFactory) -> None:
    auth = make_authenticator(jwks_url=f"http://127.0.0.1:{unused_port()}/jwks.json", jwks_min_refetch_interval=10)
    for _ in range(5):
        with pytest.raises(AuthError) as caught:
            await auth.authenticate(token(KEY_1, "k1"))
        assert (caught.value.reason, caught.value.message) == ("unknown_key", "signing keys unavailable")
    assert auth.jwks is not None
    assert auth.jwks.fetch_count == 1  # a dead IdP is not hammered either


async def test_idp_recovering_after_a_failed_first_fetch_serves_keys(
    idp: FakeIdp, make_authenticator: AuthFactory, clock: Clock
) -> None:
    idp.respond(503, b"starting up")
    auth = make_authenticator(jwks_url=idp.url, jwks_min_refetch_interval=0.1)
    with pytest.raises(AuthError):
        await auth.authenticate(token(KEY_1, "k1"))
    idp.publish(k1=KEY_1)
    clock.advance(0.15)
    assert (await auth.authenticate(token(KEY_1, "k1"))).user == "alice"


async def test_static_keys_keep_working_while_the_jwks_is_unavailable(make_authenticator: AuthFactory) -> None:
    auth = make_authenticator(hmac_secret=SECRET, jwks_url=f"http://127.0.0.1:{unused_port()}/jwks.json")
    hs_token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, SECRET.encode(), algorithm="HS256")
    assert (await auth.authenticate(hs_token)).user == "carol"
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(token(KEY_1, "k1"))
    assert (caught.value.reason, caught.value.message) == ("unknown_key", "signing keys unavailable")


async def test_garbage_tokens_are_rejected_without_fetching(idp: FakeIdp, make_authenticator: AuthFactory) -> None:
    idp.publish(k1=KEY_1)
    auth = make_authenticator(jwks_url=idp.url)
    for garbage in ("", "a.b", "x" * 20_000, "!!.!!.!!"):
        with pytest.raises(AuthError) as caught:
            await auth.authenticate(garbage)
        assert caught.value.reason == "malformed"
    assert idp.requests == 0


async def test_es256_jwks_key_with_an_rs256_header_is_rejected(idp: FakeIdp, make_authenticator: AuthFactory) -> None:
    idp.publish(ec=EC_KEY)
    auth = make_authenticator(jwks_url=idp.url)
    assert (await auth.authenticate(token(EC_KEY, "ec"))).user == "alice"
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(token(KEY_1, "ec"))
    assert caught.value.reason == "bad_algorithm"


async def test_oversized_jwks_document_is_refused(idp: FakeIdp) -> None:
    idp.respond(200, b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}')
    cache = JwksCache(idp.url)
    try:
        with pytest.raises(AuthError):
            await cache.keys()
    finally:
        await cache.aclose()


async def test_cache_leaves_a_caller_owned_client_open(idp: FakeIdp) -> None:
    idp.publish(k1=KEY_1)
    async with httpx.AsyncClient() as client:
        cache = JwksCache(idp.url, client=client, min_refetch_interval=0)
        keys = await cache.keys()
        assert list(keys) == ["k1"]
        assert await cache.refresh_for_unknown_kid() is True
        assert cache.fetch_count == 2
        await cache.aclose()
        assert not client.is_closed


def test_authenticator_requires_a_key_source_unless_anonymous() -> None:
    with pytest.raises(ValueError, match="no signing key"):
        Authenticator()
    with pytest.raises(ValueError, match="PEM"):
        Authenticator(public_key_pem="garbage")
    pem = KEY_1.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert Authenticator(public_key_pem=pem.decode()).jwks is None
    assert Authenticator(allow_anonymous=True).jwks is None
