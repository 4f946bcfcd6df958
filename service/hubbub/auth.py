"""JWT verification for the connect handshake: pure functions, no network I/O, no clock reads.

The key decides the algorithm, never the token: an HMAC secret verifies HS256/HS384/HS512, an RSA key RS256, an
EC P-256 key ES256, an Ed25519 key EdDSA. The header `alg` is checked against that and PyJWT is then called with
exactly one algorithm, so `alg: none` and key confusion (an RSA public key used as an HMAC secret) cannot pass.
Header parameters that point at keys (`jku`, `x5u`, `jwk`) are ignored. The I/O half (JWKS) is `hubbub.jwks`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeGuard

import jwt
import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

logger = logging.getLogger("hubbub.auth")

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

AUTH_FAILURE_REASONS: Final[tuple[str, ...]] = (
    "malformed",
    "bad_algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_audience",
    "bad_issuer",
    "missing_sub",
    "bad_claims",
    "missing_token",
)

MAX_TOKEN_LENGTH: Final = 16 * 1024
MAX_SUB_LENGTH: Final = 255
MAX_INFO_BYTES: Final = 1024
MIN_RSA_KEY_BITS: Final = 2048
#: alg -> minimum secret length in bytes: RFC 7518 §3.2 says the key MUST be at least as long as the hash output.
HMAC_ALGORITHMS: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}
SUPPORTED_ALGORITHMS: Final = frozenset({*HMAC_ALGORITHMS, "RS256", "ES256", "EdDSA"})

# Only PyJWT's JWS layer is used for verification: its JWT layer reads the wall clock for exp/nbf/iat, while
# verify_token must judge them against the caller's `now`.
_JWS: Final = jwt.PyJWS()
#: HMAC tokens (the common case, checked on every connect) are verified here without PyJWT, which
#: re-validates the key and re-parses the header on every call (about 4x the cost).
_HMAC_DIGESTS: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


#: Header and payload are never empty; the signature may be (a forgery, refused as bad_signature).
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _b64url(segment: str) -> bytes:
    """Strict base64url without padding, as JWS requires (RFC 7515 §2)."""
    if "=" in segment:
        raise ValueError("padded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # integers beyond 64 bits, which orjson refuses; claims are checked for range later
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_PEM_BLOCK: Final = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_SYNTHETIC_KID_PREFIX: Final = "_unnamed-"


class AuthError(Exception):
    """A rejected token. `reason` is one of `AUTH_FAILURE_REASONS` (bounded: used as a metrics label);
    `message` is human readable and safe to show to the client (never contains key material)."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in AUTH_FAILURE_REASONS:
            raise ValueError(f"unknown auth failure reason {reason!r}")
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    rooms: tuple[str, ...]
    publish: tuple[str, ...]
    info: dict[str, Any] | None
    expires_at: float | None


@dataclass(frozen=True)
class KeySet:
    """Verification keys. HMAC secrets only ever verify HS*, public keys only their own algorithm."""

    hmac_secret: bytes | None = None
    public_keys: tuple[PublicKey, ...] = ()
    jwks_keys: Mapping[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def from_config(cls, *, hmac_secret: str | None, public_key_pem: str | None) -> KeySet:
        """Build from configuration. `public_key_pem` may hold several PEM blocks (public keys or X.509
        certificates). Raises ValueError with a clear message for: an unparsable PEM, a private key, an
        unsupported key type (only RSA >= 2048 bits, EC P-256 and Ed25519), an HMAC secret shorter than
        32 bytes, or an HMAC secret that is itself key material."""
        secret = _hmac_secret_bytes(hmac_secret, "hmac_secret", 32) if hmac_secret is not None else None
        keys = _load_pem_keys(public_key_pem) if public_key_pem is not None else ()
        return cls(hmac_secret=secret, public_keys=keys)

    @property
    def empty(self) -> bool:
        return self.hmac_secret is None and not self.public_keys and not self.jwks_keys


def verify_token(
    token: str,
    keys: KeySet,
    *,
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = 5.0,
    allow_anonymous: bool = False,
) -> Principal:
    """Verify `token` against `keys` at time `now` (unix seconds) and map its claims.

    Pure: no I/O, no clock reads. Raises AuthError and nothing else for any input string.
    Key selection: a `kid` header selects `keys.jwks_keys[kid]` when a JWKS is loaded (an unknown kid is
    "unknown_key", which tells the caller a JWKS refetch may help); otherwise every configured key whose
    type matches the header alg is tried. `aud`/`iss` are checked only when `audience`/`issuer` are given.
    """
    alg, kid = read_header(token)
    payload = _verify_signature(token, alg, _candidate_keys(alg, kid, keys))
    exp = _numeric_date(payload, "exp")
    if exp is not None and now >= exp + leeway:
        raise AuthError("expired", "token has expired")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise AuthError("not_yet_valid", "token is not valid yet (nbf)")
    if audience is not None:
        aud = payload.get("aud")
        if audience not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
            raise AuthError("bad_audience", "token audience (aud) does not match")
    if issuer is not None and payload.get("iss") != issuer:
        raise AuthError("bad_issuer", "token issuer (iss) does not match")
    return Principal(
        user=_subject(payload.get("sub"), allow_anonymous),
        rooms=_patterns(payload, "rooms"),
        publish=_patterns(payload, "publish"),
        info=_info(payload.get("info")),
        expires_at=exp,
    )


def read_header(token: str) -> tuple[str, str | None]:
    """Structural check of an unverified token; returns its (alg, kid). Raises AuthError "malformed" or
    "bad_algorithm". Cheap: lets callers reject garbage before any key lookup or network I/O."""
    if not isinstance(token, str) or not token:
        raise AuthError("malformed", "token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("malformed", f"token is longer than {MAX_TOKEN_LENGTH} characters")
    if token.count(".") != 2 or not token.isascii():
        raise AuthError("malformed", "token is not three dot-separated base64url parts")
    if _COMPACT_JWS.fullmatch(token) is None:
        # JWS compact serialization is unpadded base64url (RFC 7515 §2, §7.1). Checked here, for every
        # algorithm: PyJWT, which verifies RS/ES/EdDSA signatures, tolerates padding, and a token that
        # verifies in two spellings is a token a cache or a deny-list keyed on the string can miss.
        raise AuthError("malformed", "token parts must be unpadded base64url (A-Z a-z 0-9 - _)")
    try:
        header = _json_object(_b64url(token.partition(".")[0]))
    except (ValueError, binascii.Error):
        header = None
    if header is None:
        raise AuthError("malformed", "token header is not valid base64url JSON")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AuthError("malformed", "token header has no alg")
    if alg not in SUPPORTED_ALGORITHMS:
        raise AuthError("bad_algorithm", "token algorithm is not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthError("malformed", "token header kid is not a string")
    return alg, kid


def parse_jwks(document: Mapping[str, Any]) -> dict[str, PublicKey]:
    """JWKS JSON document -> {kid: public key}. Raises ValueError unless it is an object with a "keys" array.

    Entries that cannot verify one of our algorithms are skipped, never fatal: other kty/crv, `use` other than
    "sig", `key_ops` without "verify", a declared `alg` other than the key type's, RSA under 2048 bits, garbage.
    Keys without a kid get a synthetic one (they serve kid-less tokens); for a duplicate kid the first key wins.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document: expected a JSON object with a 'keys' array")
    keys: dict[str, PublicKey] = {}
    for index, jwk in enumerate(document["keys"]):
        key = _parse_jwk(jwk)
        if key is None:
            logger.debug("JWKS entry %d skipped: not a usable signature verification key", index)
            continue
        kid = jwk.get("kid")
        keys.setdefault(kid if isinstance(kid, str) and kid else f"{_SYNTHETIC_KID_PREFIX}{index}", key)
    return keys


def mint_token(
    secret: str,
    *,
    sub: str,
    rooms: Sequence[str] = (),
    publish: Sequence[str] = (),
    ttl: float | None = 3600,
    info: Mapping[str, Any] | None = None,
    now: float | None = None,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """HS-signed development token (the `hubbub token` CLI). `ttl=None` omits `exp`. Raises ValueError for a
    non-HS algorithm, a secret shorter than the hash output (32/48/64 bytes), or rooms/publish given as a bare
    string (a common CLI slip that would otherwise grant one pattern per character)."""
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError(f"development tokens are HMAC-signed; algorithm must be one of {sorted(HMAC_ALGORITHMS)}")
    if isinstance(rooms, str) or isinstance(publish, str):
        raise ValueError("rooms and publish must be sequences of patterns, not a single string")
    key = _hmac_secret_bytes(secret, "secret", HMAC_ALGORITHMS[algorithm])
    issued_at = time.time() if now is None else now
    optional = {
        "exp": None if ttl is None else int(issued_at + ttl),
        "rooms": list(rooms) or None,
        "publish": list(publish) or None,
        "info": None if info is None else dict(info),
        "aud": audience,
        "iss": issuer,
    }
    claims = {"sub": sub, "iat": int(issued_at), **{name: v for name, v in optional.items() if v is not None}}
    return jwt.encode(claims, key, algorithm=algorithm)


def _algorithm_for_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    return "EdDSA"


def _check_public_key(key: object, where: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"{where}: RSA key has {key.key_size} bits; at least {MIN_RSA_KEY_BITS} are required")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{where}: EC curve {key.curve.name} is not supported (only P-256, for ES256)")
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key
    raise ValueError(f"{where}: unsupported key type {type(key).__name__} (use RSA, EC P-256 or Ed25519)")


def _hmac_secret_bytes(secret: str, name: str, min_length: int) -> bytes:
    key = secret.encode("utf-8")
    if len(key) < min_length:
        raise ValueError(f"{name} is {len(key)} bytes; at least {min_length} are required (RFC 7518 §3.2)")
    try:
        # PyJWT's own guard: PEM, SSH, DER and JWK-JSON look-alikes must never serve as HMAC secrets.
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
    except jwt.InvalidKeyError:
        raise ValueError(f"{name} looks like key material (PEM/SSH/DER/JWK), not an HMAC secret") from None
    return key


def _load_pem_keys(pem: str) -> tuple[PublicKey, ...]:
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        raise ValueError("public_key_pem contains no PEM block (expected '-----BEGIN PUBLIC KEY-----')")
    keys: list[PublicKey] = []
    for block in blocks:
        label = block.group(1)
        if "PRIVATE" in label:
            raise ValueError("public_key_pem holds a private key; configure only the public key")
        data = block.group(0).encode("ascii", "replace")
        try:
            if label == "CERTIFICATE":
                loaded: object = x509.load_pem_x509_certificate(data).public_key()
            else:
                loaded = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"public_key_pem: cannot parse the '{label}' PEM block") from None
        keys.append(_check_public_key(loaded, "public_key_pem"))
    return tuple(keys)


def _parse_jwk(jwk: object) -> PublicKey | None:
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    loaded: object
    try:
        if kty == "RSA":
            loaded = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC" and crv == "P-256":
            loaded = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP" and crv == "Ed25519":
            loaded = OKPAlgorithm.from_jwk(jwk)
        else:
            return None
    except Exception:
        # Untrusted remote input: any parse failure (bad base64, wrong sizes, off-curve points...) skips the key.
        return None
    if isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        loaded = loaded.public_key()
    try:
        key = _check_public_key(loaded, "jwks")
    except ValueError:
        return None
    declared_alg = jwk.get("alg")
    if declared_alg is not None and declared_alg != _algorithm_for_key(key):
        return None
    return key


def _candidate_keys(alg: str, kid: str | None, keys: KeySet) -> list[bytes | PublicKey]:
    if kid is not None and keys.jwks_keys:
        key = keys.jwks_keys.get(kid)
        if key is None:
            raise AuthError("unknown_key", "token key id (kid) is not known")
        if _algorithm_for_key(key) != alg:
            raise AuthError("bad_algorithm", f"algorithm {alg} does not match the type of key {kid!r}")
        return [key]
    if keys.empty:
        raise AuthError("unknown_key", "no signing keys are configured")
    if alg in HMAC_ALGORITHMS:
        if keys.hmac_secret is None:
            raise AuthError("bad_algorithm", f"algorithm {alg} is not accepted: no HMAC secret is configured")
        if len(keys.hmac_secret) < HMAC_ALGORITHMS[alg]:
            raise AuthError("bad_algorithm", f"algorithm {alg} is not accepted: the HMAC secret is too short for it")
        return [keys.hmac_secret]
    matching: list[bytes | PublicKey] = [
        key for key in (*keys.public_keys, *keys.jwks_keys.values()) if _algorithm_for_key(key) == alg
    ]
    if not matching:
        raise AuthError("bad_algorithm", f"algorithm {alg} is not accepted: no key of that type is configured")
    return matching


def _verify_hmac(token: str, alg: str, key: bytes) -> dict[str, Any] | None:
    """The payload when `key` signed `token` with HMAC `alg`; None when the signature does not match."""
    signing_input, _, signature = token.rpartition(".")
    try:
        presented = _b64url(signature)
    except (ValueError, binascii.Error):
        raise AuthError("malformed", "token could not be decoded") from None
    expected = hmac.new(key, signing_input.encode(), _HMAC_DIGESTS[alg]).digest()
    if not hmac.compare_digest(expected, presented):
        return None
    try:
        payload = _json_object(_b64url(signing_input.partition(".")[2]))
    except (ValueError, binascii.Error):
        raise AuthError("malformed", "token could not be decoded") from None
    if payload is None:
        raise AuthError("malformed", "token payload is not a JSON object")
    return payload


def _verify_signature(token: str, alg: str, candidates: list[bytes | PublicKey]) -> dict[str, Any]:
    for key in candidates:
        if isinstance(key, bytes) and alg in _HMAC_DIGESTS:
            payload = _verify_hmac(token, alg, key)
            if payload is None:
                continue
            return payload
        try:
            raw = _JWS.decode(token, key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError:
            raise AuthError("bad_algorithm", f"algorithm {alg} does not match the key") from None
        except jwt.PyJWTError:
            raise AuthError("malformed", "token could not be decoded") from None
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            raise AuthError("malformed", "token payload is not a JSON object")
        return payload
    raise AuthError("bad_signature", "token signature is invalid")


def _numeric_date(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    # The range test also rejects NaN and infinities (json.loads accepts both).
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1e18 < value < 1e18:
        raise AuthError("bad_claims", f"claim {name} must be a finite number")
    return float(value)


def _is_text(value: object) -> TypeGuard[str]:
    # Lone surrogates survive json.loads but break every UTF-8 encoder downstream.
    return isinstance(value, str) and _SURROGATE.search(value) is None


def _subject(sub: object, allow_anonymous: bool) -> str:
    if sub is None or sub == "":
        if allow_anonymous:
            return ""
        raise AuthError("missing_sub", "token has no subject (sub)")
    if not _is_text(sub):
        raise AuthError("bad_claims", "claim sub must be a string")
    if len(sub) > MAX_SUB_LENGTH:
        raise AuthError("bad_claims", f"claim sub is longer than {MAX_SUB_LENGTH} characters")
    return sub


def _patterns(payload: dict[str, Any], name: str) -> tuple[str, ...]:
    value = payload.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(_is_text(item) for item in value):
        raise AuthError("bad_claims", f"claim {name} must be a list of strings")
    return tuple(value)


def _info(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AuthError("bad_claims", "claim info must be a JSON object")
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (ValueError, RecursionError):
        raise AuthError("bad_claims", "claim info is not serializable JSON") from None
    if size > MAX_INFO_BYTES:
        raise AuthError("bad_claims", f"claim info is larger than {MAX_INFO_BYTES} bytes")
    return value
