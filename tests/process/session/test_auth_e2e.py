"""Authentication through a real server: asymmetric keys from PEM files and a rotating JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import ServerFactory
from tests.inprocess.test_jwks import KEY_1, KEY_2, FakeIdp, idp  # noqa: F401 - the fixture is used by name
from tests.support.conversation import Closed
from tests.support.wsclient import RawClient

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def sign(key: PrivateKey | str, alg: str, *, sub: str = "alice", kid: str | None = None, **claims: object) -> str:
    payload = {"sub": sub, "rooms": ["chat:*"], "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def outcome(url: str, token: str) -> str:
    client = await RawClient.open(url)
    await client.send({"id": 1, "op": "connect", "token": token})
    try:
        reply = await client.reply(1)
    except Closed as closed:
        return f"closed {closed.code}"
    await client.close()
    return "ok" if "ok" in reply else f"error {reply['error']['code']}"


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
async def test_asymmetric_tokens_verified_with_a_pem_key_file(
    server_factory: ServerFactory, tmp_path: Path, key: PrivateKey, alg: str
) -> None:
    key_file = tmp_path / "public.pem"
    key_file.write_text(pem(key))
    srv = server_factory(jwt_secret=None, jwt_public_key_file=str(key_file), jwt_audience="hubbub")
    assert await outcome(srv.ws_url, sign(key, alg, aud="hubbub")) == "ok"
    assert await outcome(srv.ws_url, sign(key, alg, aud="other")) == "closed 4001"
    assert await outcome(srv.ws_url, sign(key, alg)) == "closed 4001"  # aud required when configured
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await outcome(srv.ws_url, sign(other, "RS256", aud="hubbub")) == "closed 4001"
    # HS/RS confusion: an HS256 token whose "secret" is the public key must never pass.
    confused = hs256_by_hand(key_file.read_bytes(), {"sub": "mallory", "aud": "hubbub", "rooms": ["*"]})
    assert await outcome(srv.ws_url, confused) == "closed 4001"


def hs256_by_hand(secret: bytes, payload: dict[str, object]) -> str:
    """PyJWT refuses to sign with a public key as HMAC secret; an attacker would not ask it."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


async def test_jwks_rotation_is_followed_without_a_restart(server_factory: ServerFactory, idp: FakeIdp) -> None:  # noqa: F811
    idp.publish(k1=KEY_1)
    srv = server_factory(
        jwt_secret=None, jwt_jwks_url=idp.url, jwt_issuer="https://idp.test/", jwt_jwks_min_refetch=0.2
    )
    assert await outcome(srv.ws_url, sign(KEY_1, "RS256", kid="k1", iss="https://idp.test/")) == "ok"
    assert await outcome(srv.ws_url, sign(KEY_1, "RS256", kid="k1", iss="https://evil/")) == "closed 4001"
    idp.publish(k2=KEY_2)  # the identity provider rotates its signing key
    await asyncio.sleep(0.3)  # the subject is time passing: the server may refetch 0.2 s after its last fetch
    assert await outcome(srv.ws_url, sign(KEY_2, "RS256", kid="k2", iss="https://idp.test/")) == "ok"
    assert await outcome(srv.ws_url, sign(KEY_1, "RS256", kid="k1", iss="https://idp.test/")) == "closed 4001"


async def test_upgrade_with_a_token_of_another_issuer_is_refused_with_401(
    server_factory: ServerFactory,
    idp: FakeIdp,  # noqa: F811
) -> None:
    idp.publish(k1=KEY_1)
    srv = server_factory(jwt_secret=None, jwt_jwks_url=idp.url)
    bad = sign(KEY_2, "RS256", kid="k1")
    with pytest.raises(Exception, match="401"):
        await RawClient.open(srv.ws_url + f"?token={bad}")
