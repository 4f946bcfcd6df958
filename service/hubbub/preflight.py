"""The checks `serve` and `check-config` share: everything the configuration must make possible,
done before anything binds or connects.

Where `serve` would build something from a setting (the token verifier from a key file, the Redis
clients from a URL), this builds it the same way and throws it away, so `check-config` can never
call a configuration OK that `serve` then refuses. Errors stop `serve` (exit 2); warnings describe
configuration that starts but will not work as an operator probably expects.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hubbub import rules
from hubbub.jwks import Authenticator
from hubbub.settings import Settings, SettingsError


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the configuration: the setting it is about (None: several) and what to do."""

    setting: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}" if self.setting else self.message


class ConfigurationError(SettingsError):
    """Settings that load but that `serve` cannot run with; lists every error found."""

    def __init__(self, errors: Sequence[Finding]) -> None:
        self.errors = tuple(errors)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {error}" for error in self.errors))


@dataclass(frozen=True)
class Preflight:
    """Settings that passed every check, with the warnings to show at start-up."""

    settings: Settings
    warnings: tuple[Finding, ...]


def preflight(settings: Settings) -> Preflight:
    """Check everything `serve` will build from `settings`; raises ConfigurationError listing every error."""
    errors: list[Finding] = []
    for check in (_keys, _jwks_url, _redis, _origins, _namespaces, _names, _host, _otlp_endpoint):
        errors.extend(check(settings))
    if errors:
        raise ConfigurationError(errors)
    return Preflight(settings, tuple(warnings(settings)))


def make_authenticator(settings: Settings) -> Authenticator:
    return Authenticator(
        hmac_secret=settings.effective_jwt_secret(),
        public_key_pem=settings.public_key_pem(),
        jwks_url=settings.jwt_jwks_url,
        jwks_refresh_interval=settings.jwt_jwks_refresh,
        jwks_min_refetch_interval=settings.jwt_jwks_min_refetch,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
        allow_anonymous=settings.allow_anonymous,
    )


def redact(url: str) -> str:
    """`url` with any password replaced by `***`, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "(unparsable URL)"


def warnings(settings: Settings) -> list[Finding]:
    """Configuration that starts but will not work as an operator probably expects."""
    found: list[Finding] = []
    if settings.effective_api_key() is None:
        found.append(Finding("api_key", "not set: the HTTP API answers 401 to every request"))
    if not settings.development and settings.default_namespace is None and not settings.namespaces:
        found.append(Finding("namespaces", "none configured: every join answers 404"))
    if settings.demo_enabled:
        if settings.effective_jwt_secret() is None:
            found.append(Finding("demo", "the demo is on but no jwt_secret signs demo tokens: /demo/token answers 503"))
        demo_ns = settings.namespace(settings.demo_namespace)
        if demo_ns is None or not (demo_ns.client_publish and demo_ns.presence and demo_ns.history_size):
            found.append(
                Finding(
                    "demo",
                    f"the demo is on but namespace {settings.demo_namespace!r} is not configured with "
                    "client_publish, presence and history_size: the demo chat will not work",
                )
            )
    return found


def _keys(settings: Settings) -> list[Finding]:
    if settings.jwt_public_key and settings.jwt_public_key_file is not None:
        return [Finding("jwt_public_key_file", "set either jwt_public_key or jwt_public_key_file, not both")]
    has_key = settings.effective_jwt_secret() or settings.jwt_public_key or settings.jwt_public_key_file
    if not (has_key or settings.jwt_jwks_url or settings.allow_anonymous):
        return [
            Finding(
                None,
                "no JWT key to verify tokens with: set jwt_secret (HUBBUB_JWT_SECRET, at least 32 bytes), "
                "jwt_public_key_file or jwt_jwks_url (or allow_anonymous: true to accept tokens without one)",
            )
        ]
    setting = "jwt_public_key_file" if settings.jwt_public_key_file is not None else "jwt_public_key"
    try:
        make_authenticator(settings)
    except OSError as exc:
        return [Finding(setting, f"cannot read {settings.jwt_public_key_file}: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return [Finding(setting, f"{settings.jwt_public_key_file} is not a text (PEM) file")]
    except ValueError as exc:
        detail = str(exc).removeprefix("public_key_pem: ").replace("public_key_pem ", "it ")
        if settings.jwt_secret is not None and "secret" in detail:
            return [Finding("jwt_secret", detail)]
        what = settings.jwt_public_key_file if setting == "jwt_public_key_file" else "the value"
        return [Finding(setting, f"{what} is not a usable public key: {detail}")]
    return []


def _jwks_url(settings: Settings) -> list[Finding]:
    url = settings.jwt_jwks_url
    if url is None:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [Finding("jwt_jwks_url", f"must be an http:// or https:// URL, got {redact(url)!r}")]
    return []


def _redis(settings: Settings) -> list[Finding]:
    if not (settings.redis_url or settings.redis_sentinels or settings.redis_cluster_nodes):
        return []
    from hubbub.backends.redis_pool import addresses, connect

    found: list[Finding] = []
    if settings.redis_sentinels and settings.redis_cluster_nodes:
        return [Finding("redis_cluster_nodes", "set either redis_sentinels or redis_cluster_nodes, not both")]
    for name in ("redis_sentinels", "redis_cluster_nodes"):
        try:
            addresses(getattr(settings, name))
        except ValueError as exc:
            return [Finding(name, str(exc))]
    url = settings.redis_url
    if url is not None:
        shown = redact(url)
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            return [Finding("redis_url", f"must start with redis://, rediss:// or unix://, got {shown!r}")]
        for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            for value in _query_values(url, option):
                if not Path(value).is_file():
                    found.append(Finding("redis_url", f"{option}={value}: no such file"))
    if found:
        return found
    try:
        clients = connect(settings)
        # What the node does on its first command: make a connection object from the URL's options
        # (it fails on an unknown or malformed option), without connecting.
        if clients.seeds:
            clients.node_factory()(clients.seeds[0])
        else:
            clients.connection_factory()()
            clients.connection_factory(subscriber=True)()
    except (ValueError, TypeError, LookupError) as exc:
        detail = str(exc).replace("AbstractConnection.__init__() got an ", "")
        return [Finding("redis_url", f"{redact(url or '')!r}: {detail}")]
    except Exception as exc:  # redis-py reports some option errors as RedisError
        return [Finding("redis_url", f"{redact(url or '')!r}: {exc}")]
    return []


def _query_values(url: str, name: str) -> list[str]:
    from urllib.parse import parse_qs

    return parse_qs(urlsplit(url).query).get(name, [])


def _origins(settings: Settings) -> list[Finding]:
    found: list[Finding] = []
    for pattern in settings.allowed_origins:
        if pattern == "*":
            continue
        scheme, sep, rest = pattern.partition("://")
        if not sep or scheme not in ("http", "https", "*") or not rest or "/" in rest:
            found.append(
                Finding(
                    "allowed_origins",
                    f"{pattern!r} is not an origin: browsers send scheme://host[:port], e.g. "
                    "https://app.example.com or http://localhost:3000 (no path, no trailing slash)",
                )
            )
    return found


def _namespaces(settings: Settings) -> list[Finding]:
    found: list[Finding] = []
    for name in settings.namespaces:
        if not rules.is_valid_namespace(name):
            found.append(
                Finding(
                    f"namespaces.{name}",
                    "not a namespace name: the part of a room name before its first ':', "
                    "letters, digits and _ - . = @ (e.g. `chat` for rooms `chat:lobby`)",
                )
            )
    return found


def _names(settings: Settings) -> list[Finding]:
    found: list[Finding] = []
    # Both end up in Redis client names and keys, which must not hold spaces or hash-tag braces.
    if not rules.is_plain_name(settings.node_name):
        found.append(Finding("node_name", "may hold only letters, digits and _ - . = @ (up to 253 characters)"))
    if not rules.is_plain_name(settings.redis_prefix):
        found.append(Finding("redis_prefix", "may hold only letters, digits and _ - . = @ (up to 253 characters)"))
    return found


def _host(settings: Settings) -> list[Finding]:
    try:
        ipaddress.ip_address(settings.host)
        return []
    except ValueError:
        pass
    try:
        socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [Finding("host", f"{settings.host!r} is neither an IP address nor a name this machine resolves")]
    return []


def _otlp_endpoint(settings: Settings) -> list[Finding]:
    from hubbub.tracing import configured_endpoint

    found = configured_endpoint(settings)
    if found is None:
        return []
    source, url = found
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (a property that raises on a port out of range or not a number)
    except ValueError:
        return [Finding(source, f"{redact(url)!r} has no usable port")]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            Finding(
                source,
                f"must be an http:// or https:// URL of an OTLP/HTTP receiver (e.g. http://otel-collector:4318), "
                f"got {redact(url)!r}",
            )
        ]
    return []
