"""hubbub.auth: pure JWT verification. No sockets, no clock: every check runs at the fixed instant NOW."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import random
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from hubbub.auth import (
    AUTH_FAILURE_REASONS,
    AuthError,
    KeySet,
    Principal,
    mint_token,
    parse_jwks,
    verify_token,
)

NOW = 1_700_000_000.0
SECRET = "k" * 64  # long enough for HS512 (RFC 7518 §3.2)
OTHER_SECRET = "o" * 64

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_PEM = public_pem(RSA_KEY)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 3600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: str | PrivateKey = SECRET, alg: str = "HS256", **header: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=header or None)


def hand_signed(payload: dict[str, Any] | bytes, secret: bytes, alg: str = "HS256", **header: Any) -> str:
    """HMAC-signed without PyJWT, which (rightly) refuses PEM bytes or short keys: this is the attacker's token."""
    head = b64url(json.dumps({"alg": alg, "typ": "JWT", **header}).encode())
    body = b64url(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), getattr(hashlib, f"sha{alg[2:]}")).digest()
    return f"{head}.{body}.{b64url(mac)}"


def hmac_keys(secret: str = SECRET) -> KeySet:
    return KeySet.from_config(hmac_secret=secret, public_key_pem=None)


def pem_keys(*keys: PrivateKey) -> KeySet:
    return KeySet.from_config(hmac_secret=None, public_key_pem="".join(public_pem(key) for key in keys))


def rejected(token: str, keys: KeySet, **kwargs: Any) -> str:
    with pytest.raises(AuthError) as caught:
        verify_token(token, keys, now=kwargs.pop("now", NOW), **kwargs)
    assert caught.value.reason in AUTH_FAILURE_REASONS
    return caught.value.reason


# --- accepted tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_are_accepted_for_every_hs_algorithm(alg: str) -> None:
    principal = verify_token(sign(claims(), alg=alg), hmac_keys(), now=NOW)
    assert principal.user == "alice"


@pytest.mark.parametrize(("alg", "key"), [("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)])
def test_asymmetric_tokens_are_accepted_with_their_public_key(alg: str, key: PrivateKey) -> None:
    principal = verify_token(sign(claims(), key, alg), pem_keys(key), now=NOW)
    assert principal.user == "alice"


def test_token_is_verified_against_the_matching_key_among_several_pems() -> None:
    keys = pem_keys(RSA_KEY, EC_KEY, ED_KEY)
    for alg, key in (("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)):
        assert verify_token(sign(claims(), key, alg), keys, now=NOW).user == "alice"


def test_claims_are_mapped_to_the_principal() -> None:
    token = sign(claims(rooms=["chat:*", "news"], publish=["chat:*"], info={"name": "Alice", "n": 1}))
    principal = verify_token(token, hmac_keys(), now=NOW)
    assert principal == Principal(
        user="alice",
        rooms=("chat:*", "news"),
        publish=("chat:*",),
        info={"name": "Alice", "n": 1},
        expires_at=NOW + 3600,
    )


def test_optional_claims_default_to_empty_and_no_expiry() -> None:
    principal = verify_token(sign(claims(exp=None)), hmac_keys(), now=NOW)
    assert (principal.rooms, principal.publish, principal.info, principal.expires_at) == ((), (), None, None)


def test_mint_token_round_trips_through_verify_token() -> None:
    token = mint_token(
        SECRET, sub="bob", rooms=["r:*"], publish=["r:1"], info={"a": 1}, now=NOW, ttl=60, audience="hb", issuer="me"
    )
    principal = verify_token(token, hmac_keys(), now=NOW + 30, audience="hb", issuer="me")
    assert principal == Principal(user="bob", rooms=("r:*",), publish=("r:1",), info={"a": 1}, expires_at=NOW + 60)


def test_mint_token_refuses_weak_or_misused_inputs() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        mint_token("short", sub="bob")
    with pytest.raises(ValueError, match="at least 64"):
        mint_token("k" * 32, sub="bob", algorithm="HS512")
    with pytest.raises(ValueError, match="HMAC"):
        mint_token(SECRET, sub="bob", algorithm="RS256")
    with pytest.raises(ValueError, match="sequences"):
        mint_token(SECRET, sub="bob", rooms="chat:*")


# --- time ---------------------------------------------------------------------------------------------------


def test_expired_token_is_rejected() -> None:
    assert rejected(sign(claims(exp=int(NOW) - 60)), hmac_keys()) == "expired"


def test_token_expired_within_the_leeway_is_accepted() -> None:
    token = sign(claims(exp=int(NOW) - 3))
    assert verify_token(token, hmac_keys(), now=NOW).user == "alice"
    assert rejected(token, hmac_keys(), leeway=0) == "expired"


def test_token_with_future_nbf_is_rejected_unless_within_leeway() -> None:
    assert rejected(sign(claims(nbf=int(NOW) + 60)), hmac_keys()) == "not_yet_valid"
    assert verify_token(sign(claims(nbf=int(NOW) + 3)), hmac_keys(), now=NOW).user == "alice"


# --- audience and issuer ------------------------------------------------------------------------------------


def test_audience_mismatch_is_rejected() -> None:
    assert rejected(sign(claims(aud="other")), hmac_keys(), audience="hubbub") == "bad_audience"


def test_missing_audience_is_rejected_when_configured() -> None:
    assert rejected(sign(claims()), hmac_keys(), audience="hubbub") == "bad_audience"


def test_audience_list_containing_the_configured_audience_is_accepted() -> None:
    token = sign(claims(aud=["other", "hubbub"]))
    assert verify_token(token, hmac_keys(), now=NOW, audience="hubbub").user == "alice"


def test_audience_is_ignored_when_not_configured() -> None:
    assert verify_token(sign(claims(aud="anything")), hmac_keys(), now=NOW).user == "alice"


def test_issuer_mismatch_and_missing_issuer_are_rejected_when_configured() -> None:
    assert rejected(sign(claims(iss="evil")), hmac_keys(), issuer="https://idp") == "bad_issuer"
    assert rejected(sign(claims()), hmac_keys(), issuer="https://idp") == "bad_issuer"
    assert verify_token(sign(claims(iss="https://idp")), hmac_keys(), now=NOW, issuer="https://idp").user == "alice"


# --- signatures and algorithms ------------------------------------------------------------------------------


def test_wrong_hmac_secret_is_rejected() -> None:
    assert rejected(sign(claims(), OTHER_SECRET), hmac_keys()) == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
def test_alg_none_token_is_rejected(alg: str, signature: str) -> None:
    token = f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64url(json.dumps(claims()).encode())}."
    token += signature
    for keys in (hmac_keys(), pem_keys(RSA_KEY), KeySet()):
        assert rejected(token, keys) == "bad_algorithm"


def test_hs256_token_using_the_rsa_public_pem_as_secret_is_rejected_with_only_the_rsa_key() -> None:
    forged = hand_signed(claims(), RSA_PEM.encode())
    assert rejected(forged, pem_keys(RSA_KEY)) == "bad_algorithm"


def test_hs256_token_using_the_rsa_public_pem_as_secret_is_rejected_with_secret_and_rsa_key() -> None:
    forged = hand_signed(claims(), RSA_PEM.encode())
    keys = KeySet.from_config(hmac_secret=SECRET, public_key_pem=RSA_PEM)
    assert rejected(forged, keys) == "bad_signature"


def test_hs256_token_using_a_jwks_key_as_secret_is_rejected() -> None:
    jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    forged = hand_signed(claims(), json.dumps(jwk).encode(), kid="k1")
    assert rejected(forged, KeySet(jwks_keys={"k1": RSA_KEY.public_key()})) == "bad_algorithm"


def test_es256_header_on_an_rsa_key_is_rejected() -> None:
    assert rejected(sign(claims(), EC_KEY, "ES256"), pem_keys(RSA_KEY)) == "bad_algorithm"


def test_algorithm_outside_the_supported_set_is_rejected() -> None:
    assert rejected(sign(claims(), RSA_KEY, "RS512"), pem_keys(RSA_KEY)) == "bad_algorithm"
    assert rejected(sign(claims(), RSA_KEY, "PS256"), pem_keys(RSA_KEY)) == "bad_algorithm"


def test_hs512_is_rejected_when_the_secret_is_shorter_than_its_hash() -> None:
    token = hand_signed(claims(), b"k" * 32, "HS512")
    assert rejected(token, hmac_keys("k" * 32)) == "bad_algorithm"


def test_token_without_any_configured_key_is_unknown_key() -> None:
    assert rejected(sign(claims()), KeySet()) == "unknown_key"


@pytest.mark.parametrize(("alg", "key"), [("HS256", SECRET), ("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)])
def test_tampered_payload_is_rejected(alg: str, key: str | PrivateKey) -> None:
    keys = KeySet.from_config(hmac_secret=SECRET, public_key_pem=RSA_PEM + public_pem(EC_KEY) + public_pem(ED_KEY))
    head, _, sig = sign(claims(), key, alg).split(".")
    forged = f"{head}.{b64url(json.dumps(claims(sub='mallory')).encode())}.{sig}"
    assert rejected(forged, keys) == "bad_signature"


@pytest.mark.parametrize(("alg", "key"), [("HS256", SECRET), ("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)])
def test_tampered_signature_is_rejected(alg: str, key: str | PrivateKey) -> None:
    keys = KeySet.from_config(hmac_secret=SECRET, public_key_pem=RSA_PEM + public_pem(EC_KEY) + public_pem(ED_KEY))
    head, body, sig = sign(claims(), key, alg).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    assert rejected(f"{head}.{body}.{b64url(bytes(raw))}", keys) == "bad_signature"
    assert rejected(f"{head}.{body}.{b64url(bytes(raw[:-1]))}", keys) == "bad_signature"
    assert rejected(f"{head}.{body}.", keys) == "bad_signature"


@pytest.mark.parametrize(("alg", "key"), [("HS256", SECRET), ("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)])
def test_a_token_spelled_with_base64_padding_or_the_standard_alphabet_is_malformed(
    alg: str, key: str | PrivateKey
) -> None:
    # The same signature in another spelling: a deny-list or cache keyed on the token string would miss it.
    keys = KeySet.from_config(hmac_secret=SECRET, public_key_pem=RSA_PEM + public_pem(EC_KEY) + public_pem(ED_KEY))
    token = sign(claims(), key, alg)
    assert verify_token(token, keys, now=NOW).user == "alice"
    head, body, sig = token.split(".")
    raw_sig = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    padded_sig = base64.urlsafe_b64encode(raw_sig).decode()
    assert padded_sig.endswith("="), "every algorithm's signature length here needs padding"
    standard_body = base64.b64encode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).decode().rstrip("=")
    for spelling in (
        f"{head}.{body}.{padded_sig}",
        f"{head}.{body}.{padded_sig.rstrip('=')}=",
        f"{head}.{body}=.{sig}" if len(body) % 4 else f"{head}.{body}====.{sig}",
        f"{head}==.{body}.{sig}",
    ):
        assert rejected(spelling, keys) == "malformed", spelling
    if standard_body != body:
        assert rejected(f"{head}.{standard_body}.{sig}", keys) == "malformed"


# --- kid and JWKS keys --------------------------------------------------------------------------------------


def test_kid_selects_the_jwks_key() -> None:
    keys = KeySet(jwks_keys={"rsa": RSA_KEY.public_key(), "ec": EC_KEY.public_key()})
    assert verify_token(sign(claims(), EC_KEY, "ES256", kid="ec"), keys, now=NOW).user == "alice"
    assert rejected(sign(claims(), EC_KEY, "ES256", kid="rsa"), keys) == "bad_algorithm"


def test_unknown_kid_is_reported_as_unknown_key() -> None:
    keys = KeySet(jwks_keys={"rsa": RSA_KEY.public_key()})
    assert rejected(sign(claims(), RSA_KEY, "RS256", kid="rotated"), keys) == "unknown_key"


def test_token_without_kid_is_tried_against_matching_jwks_keys() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = KeySet(jwks_keys={"a": other.public_key(), "b": RSA_KEY.public_key()})
    assert verify_token(sign(claims(), RSA_KEY, "RS256"), keys, now=NOW).user == "alice"


def test_kid_is_ignored_when_no_jwks_is_loaded() -> None:
    assert verify_token(sign(claims(), RSA_KEY, "RS256", kid="any"), pem_keys(RSA_KEY), now=NOW).user == "alice"


# --- claims -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, ""])
def test_missing_sub_is_rejected(sub: str | None) -> None:
    payload = claims()
    payload["sub"] = sub
    if sub is None:
        del payload["sub"]
    assert rejected(sign(payload), hmac_keys()) == "missing_sub"


def test_anonymous_access_maps_missing_sub_to_empty_user() -> None:
    payload = claims(rooms=["lobby"])
    del payload["sub"]
    principal = verify_token(sign(payload), hmac_keys(), now=NOW, allow_anonymous=True)
    assert (principal.user, principal.rooms) == ("", ("lobby",))


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": 42},
        {"sub": "x" * 256},
        {"rooms": "chat:*"},
        {"rooms": ["ok", 1]},
        {"publish": {"chat": True}},
        {"info": ["not", "an", "object"]},
        {"info": "text"},
        {"info": {"blob": "x" * 1020}},
        {"exp": "tomorrow"},
        {"exp": True},
        {"nbf": [1]},
    ],
)
def test_wrong_claim_types_are_bad_claims(overrides: dict[str, Any]) -> None:
    assert rejected(sign(claims(**overrides)), hmac_keys()) == "bad_claims"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_exp_is_bad_claims(literal: str) -> None:
    token = hand_signed(b'{"sub":"alice","exp":' + literal.encode() + b"}", SECRET.encode())
    assert rejected(token, hmac_keys()) == "bad_claims"


def test_info_at_the_size_limit_is_accepted() -> None:
    info = {"blob": "x" * (1024 - len('{"blob":""}'))}
    assert verify_token(sign(claims(info=info)), hmac_keys(), now=NOW).info == info
    assert rejected(sign(claims(info={"blob": info["blob"] + "x"})), hmac_keys()) == "bad_claims"


def test_sub_of_255_characters_is_accepted() -> None:
    assert verify_token(sign(claims(sub="é" * 255)), hmac_keys(), now=NOW).user == "é" * 255


# --- malformed input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a.b.c",
        "!!!.@@@.###",
        "é.é.é",
        "x" * (20 * 1024),
        "eyJhbGciOiJIUzI1NiJ9." + "A" * (20 * 1024) + ".sig",
        f"{b64url(b'not json')}.{b64url(b'{}')}.",
        f"{b64url(b'[1,2]')}.{b64url(b'{}')}.",
        f"{b64url(b'{}')}.{b64url(b'{}')}.",
        f"{b64url(json.dumps({'alg': 'HS256', 'kid': 7}).encode())}.{b64url(b'{}')}.",
    ],
)
def test_garbage_tokens_are_malformed(token: str) -> None:
    assert rejected(token, hmac_keys()) == "malformed"


def test_signed_payload_that_is_not_a_json_object_is_malformed() -> None:
    token = jwt.api_jws.encode(b"[1, 2, 3]", SECRET.encode(), algorithm="HS256")
    assert rejected(token, hmac_keys()) == "malformed"


def test_mutated_tokens_never_raise_anything_but_auth_error() -> None:
    rng = random.Random(1234)
    keys = KeySet.from_config(hmac_secret=SECRET, public_key_pem=RSA_PEM + public_pem(EC_KEY) + public_pem(ED_KEY))
    seeds = [sign(claims()), sign(claims(), RSA_KEY, "RS256"), sign(claims(), EC_KEY, "ES256")]
    alphabet = 'ABCxyz019-_.=+/ \x00é{}":'
    for _ in range(600):
        chars = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(chars))
            operation = rng.random()
            if operation < 0.4:
                chars[position] = rng.choice(alphabet)
            elif operation < 0.7:
                del chars[position]
            else:
                chars.insert(position, rng.choice(alphabet))
        try:
            verify_token("".join(chars), keys, now=NOW)
        except AuthError as exc:
            assert exc.reason in AUTH_FAILURE_REASONS


def test_auth_error_carries_a_bounded_reason() -> None:
    error = AuthError("expired", "token has expired")
    assert (error.reason, error.message) == ("expired", "token has expired")
    with pytest.raises(ValueError):
        AuthError("made_up", "nope")
    assert len(set(AUTH_FAILURE_REASONS)) == len(AUTH_FAILURE_REASONS) == 11


# --- parse_jwks ---------------------------------------------------------------------------------------------


def test_parse_jwks_keeps_supported_keys_and_skips_the_rest() -> None:
    def jwk(value: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**value, **extra}

    rsa_jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    document = {
        "keys": [
            jwk(rsa_jwk, kid="rsa", use="sig", alg="RS256"),
            jwk(ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), kid="ec"),
            jwk(OKPAlgorithm.to_jwk(ED_KEY.public_key(), as_dict=True), kid="ed"),
            jwk(rsa_jwk),  # no kid
            jwk(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True), kid="p384"),
            jwk(rsa_jwk, kid="enc", use="enc"),
            jwk(rsa_jwk, kid="ps", alg="PS256"),
            jwk(rsa_jwk, kid="ops", key_ops=["encrypt"]),
            jwk(RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), kid="weak"),
            {"kty": "oct", "k": b64url(b"s" * 32), "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)},
            "not an object",
            jwk(rsa_jwk, kid="rsa"),  # duplicate kid: the first one wins
        ]
    }
    keys = parse_jwks(document)
    assert sorted(keys) == ["_unnamed-3", "ec", "ed", "rsa"]
    assert isinstance(keys["rsa"], rsa.RSAPublicKey)
    assert isinstance(keys["ec"], ec.EllipticCurvePublicKey)
    assert isinstance(keys["ed"], ed25519.Ed25519PublicKey)


def test_parse_jwks_uses_only_the_public_half_of_a_leaked_private_jwk() -> None:
    private_jwk = {**RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "kid": "leaked"}
    del private_jwk["key_ops"]  # PyJWT marks private JWKs ["sign"], which parse_jwks would (rightly) skip
    keys = parse_jwks({"keys": [private_jwk]})
    assert isinstance(keys["leaked"], rsa.RSAPublicKey)


@pytest.mark.parametrize("document", [[], {}, {"keys": {}}, {"keys": "x"}, "keys"])
def test_parse_jwks_rejects_documents_that_are_not_jwks(document: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks(document)


# --- KeySet.from_config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        ("not a pem at all", "no PEM block"),
        ("-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n", "cannot parse"),
        (
            RSA_KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "private key",
        ),
        (public_pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
        (public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "2048"),
        (public_pem(RSA_KEY) + "-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n", "cannot parse"),
    ],
)
def test_from_config_rejects_unusable_pem(pem: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeySet.from_config(hmac_secret=None, public_key_pem=pem)


@pytest.mark.parametrize(
    ("secret", "message"), [("short", "at least 32"), ("", "at least 32"), (RSA_PEM, "key material")]
)
def test_from_config_rejects_unusable_hmac_secrets(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeySet.from_config(hmac_secret=secret, public_key_pem=None)


def test_from_config_accepts_a_certificate_pem() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(EC_KEY.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .sign(EC_KEY, hashes.SHA256())
    )
    keys = KeySet.from_config(
        hmac_secret=None, public_key_pem=certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert verify_token(sign(claims(), EC_KEY, "ES256"), keys, now=NOW).user == "alice"
