"""The one settings model: defaults < config file < HUBBUB_* environment < CLI flags.

Every field is documented here once; `docs/configuration.md` is generated from these
descriptions (`hubbub config-doc`) and checked against them by a test.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ENV_PREFIX = "HUBBUB_"

#: Publicly known development credentials. Only ever used in development mode, and announced at start-up.
DEV_JWT_SECRET = "hubbub-development-secret-do-not-use-in-production"
DEV_API_KEY = "hubbub-dev-api-key"


class NamespaceOptions(BaseModel):
    """Options of one room namespace (the part of a room name before the first `:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_size: int = Field(0, ge=0, le=100_000, description="Publications kept per room for history and recovery.")
    history_ttl: float = Field(300.0, gt=0, description="Seconds a publication stays in history.")
    presence: bool = Field(False, description="Track who is in each room (`presence`, `presence_stats`).")
    join_leave: bool = Field(False, description="Send `join`/`leave` pushes to the other members.")
    client_publish: bool = Field(False, description="Allow clients (with a matching `publish` claim) to publish.")
    public: bool = Field(False, description="Any connected client may join, without a `rooms` claim.")


#: Development mode (protocol rule 14): every namespace behaves like this unless configured.
DEVELOPMENT_NAMESPACE = NamespaceOptions(
    history_size=100, history_ttl=300.0, presence=True, join_leave=True, client_publish=True
)


class Settings(BaseModel):
    """Everything an operator can set. Field names map to `HUBBUB_<NAME>` environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "development", "production"] = Field(
        "auto",
        description=(
            "`development` turns every namespace on and uses publicly known development credentials; "
            "`production` requires explicit configuration. `auto` means development only when no config "
            "file is given."
        ),
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (use 0.0.0.0 in a container).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    node_name: str = Field(default_factory=socket.gethostname, description="This node's name in `/api/info`.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log line format: `text` for people, `json` (one object per line) for log pipelines.",
    )

    jwt_secret: SecretStr | None = Field(None, description="HMAC secret for HS256/384/512 tokens.")
    jwt_public_key: str | None = Field(None, description="PEM public key (RSA, EC P-256 or Ed25519) for tokens.")
    jwt_public_key_file: Path | None = Field(None, description="File holding `jwt_public_key`.")
    jwt_jwks_url: str | None = Field(None, description="JWKS URL; keys are cached and refetched on rotation.")
    jwt_jwks_refresh: float = Field(300.0, gt=0, description="Seconds between JWKS refreshes.")
    jwt_jwks_min_refetch: float = Field(
        30.0, ge=0, description="Least seconds between JWKS refetches caused by unknown key ids (spares the IdP)."
    )
    jwt_audience: str | None = Field(None, description="Required `aud` claim, when set.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, when set.")
    jwt_leeway: float = Field(5.0, ge=0, le=300, description="Clock-skew allowance for `exp`/`nbf`, seconds.")
    allow_anonymous: bool = Field(False, description="Accept tokens without `sub` (user id becomes empty).")

    api_key: SecretStr | None = Field(None, description="Bearer key for the HTTP API; the API answers 401 without.")
    allowed_origins: tuple[str, ...] = Field(
        (),
        description=(
            "Origins (glob patterns such as `https://*.example.com`) allowed to open WebSockets and to import "
            "`/hubbub.js` (CORS). Requests without an Origin header (non-browser clients) and same-origin "
            "requests are always allowed; `*` allows every origin, and so does development mode. Refused "
            "origins are logged (WARNING)."
        ),
    )

    handshake_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Seconds a connection has to send its request line and headers (of a WebSocket upgrade or any HTTP "
            "request), from its accept or, on a keep-alive connection, from the previous response; then it is "
            "closed (408 if part of a request arrived)."
        ),
    )
    max_header_bytes: int = Field(
        16384,
        ge=1024,
        le=1_048_576,
        description=(
            "Largest request line plus headers of a WebSocket upgrade or HTTP request; beyond it 431 (414 while "
            "in the request line) and close, without reading further."
        ),
    )
    max_pending_handshakes: int = Field(
        2048,
        ge=1,
        description=(
            "Connections that may be sending their request line and headers at once; beyond it the one waiting "
            "longest is closed (503 if part of a request arrived). Keep the file-descriptor limit above "
            "`max_connections` plus this."
        ),
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds a new connection has to send `connect`.")
    ping_interval: float = Field(25.0, gt=0, description="Seconds between server `ping` pushes.")
    pong_timeout: float = Field(10.0, gt=0, description="Seconds to answer a ping before close 4010.")
    max_frame_bytes: int = Field(65536, ge=1024, description="Largest inbound WebSocket message (close 1009).")
    max_rooms_per_connection: int = Field(128, ge=1, description="Rooms one connection may join (reply 429).")
    command_rate: float = Field(100.0, gt=0, description="Sustained inbound commands per second per connection.")
    command_burst: int = Field(
        200, ge=1, description="Commands allowed above the rate before replies 429; twice that closes 4029."
    )
    max_queue_bytes: int = Field(
        1_048_576, ge=4096, description="Outbound bytes queued for one connection before close 4008."
    )
    max_connections: int = Field(
        20000,
        ge=1,
        description=(
            "Connections per node; beyond it new ones close 1013 and `/readyz` is 503. The node raises its "
            "open-file limit to fit this plus `max_pending_handshakes`; under a lower hard limit it holds fewer "
            "(`hubbub_connection_limit`, and a start-up warning, say how many)."
        ),
    )
    max_publication_bytes: int = Field(65536, ge=16, description="Largest encoded `data` of a publication (413).")
    idempotency_window: float = Field(300.0, gt=0, description="Seconds an idempotency key is remembered.")
    history_meta_ttl: float = Field(
        86400.0, gt=0, description="Seconds a room's epoch and offset outlive its last publication."
    )
    drain_delay: float = Field(5.0, ge=0, description="Seconds to keep serving after SIGTERM before closing.")
    drain_period: float = Field(20.0, ge=0, description="Seconds over which connections are closed with 1012.")
    permessage_deflate: bool = Field(False, description="Offer permessage-deflate compression to clients.")
    timer_resolution: float = Field(
        0.25, gt=0, le=5, description="Granularity of heartbeat and timeout checks (one timer per node)."
    )

    redis_url: str | None = Field(
        None,
        description=(
            "Redis for scale-out (`redis://` or `rediss://`, user and password in the URL). Unset: the embedded "
            "in-memory broker, one node only."
        ),
    )
    redis_sentinels: tuple[str, ...] = Field(
        (), description="Sentinel addresses (`host:port`); with them `redis_url` supplies credentials, db and TLS."
    )
    redis_sentinel_service: str = Field("mymaster", description="The Sentinel service name of the Redis master.")
    redis_cluster_nodes: tuple[str, ...] = Field(
        (),
        description="Redis Cluster seed addresses (`host:port`, any of its nodes); rooms are spread over its masters"
        " by hash slot. With them `redis_url` supplies credentials and TLS.",
    )
    redis_timeout: float = Field(2.0, gt=0, description="Seconds any Redis command may take before it fails.")
    redis_prefix: str = Field("hubbub", description="Prefix of every Redis key and channel this service uses.")
    presence_ttl: float = Field(
        30.0, gt=1, description="Seconds a presence entry outlives its node's last refresh (a crashed node's clients)."
    )
    position_check_interval: float = Field(
        5.0, gt=0, description="Seconds between checks that every subscribed room's stream has no undelivered gap."
    )

    otlp_endpoint: str = Field(
        "",
        description=(
            "OTLP/HTTP receiver of traces (an OpenTelemetry Collector, Jaeger, Tempo): `http://collector:4318` "
            "(`/v1/traces` is added to a URL without a path) or the full URL. Empty: tracing is off, unless "
            "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/tracing.md)."
        ),
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description=(
            "Share of new traces recorded (0 to 1); a request that carries a `traceparent` follows its "
            "caller's decision."
        ),
    )

    demo: bool | None = Field(
        None,
        description=(
            "Serve the demo chat at `/` and mint demo tokens at `/demo/token` (anyone may get one, for rooms of "
            "`demo_namespace` only). Unset: on in development mode, off otherwise."
        ),
    )
    demo_namespace: str = Field(
        "demo", pattern=r"^[A-Za-z0-9_\-.=@]{1,64}$", description="The namespace demo tokens may join and publish to."
    )
    demo_token_ttl: float = Field(300.0, ge=2, le=86400, description="Lifetime of a demo token, seconds.")
    demo_tokens_per_minute: int = Field(
        30,
        ge=1,
        le=100_000,
        description=(
            "Demo tokens one client address may get per minute (all addresses together: ten times that); "
            "beyond it /demo/token answers 429 with Retry-After."
        ),
    )

    default_namespace: NamespaceOptions | None = Field(
        None, description="Options for rooms without a `:` (absent: unknown namespace, 404, in production)."
    )
    namespaces: dict[str, NamespaceOptions] = Field(default_factory=dict, description="Options by namespace name.")

    # Not a setting: recorded by the loader so development mode is never entered silently with a file.
    config_file: Path | None = Field(None, description="The config file these settings were read from.")

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
            raise ValueError(
                "must be at least 32 bytes (RFC 7518 §3.2); generate one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return secret

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        if self.pong_timeout >= self.ping_interval * 4:
            raise ValueError(
                f"pong_timeout ({self.pong_timeout:g} s) must be well below 4 × ping_interval "
                f"({self.ping_interval:g} s): raise ping_interval or lower pong_timeout"
            )
        return self

    @property
    def development(self) -> bool:
        if self.mode == "auto":
            return self.config_file is None
        return self.mode == "development"

    def namespace(self, name: str) -> NamespaceOptions | None:
        """Options of namespace `name` ("" is the default namespace); None when unknown."""
        options = self.namespaces.get(name) if name else self.default_namespace
        if options is None and self.development:
            return DEVELOPMENT_NAMESPACE
        return options

    def effective_jwt_secret(self) -> str | None:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.development and not (self.jwt_public_key or self.jwt_public_key_file or self.jwt_jwks_url):
            return DEV_JWT_SECRET
        return None

    @property
    def demo_enabled(self) -> bool:
        return self.development if self.demo is None else self.demo

    def effective_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return DEV_API_KEY if self.development else None

    def public_key_pem(self) -> str | None:
        if self.jwt_public_key:
            return self.jwt_public_key
        if self.jwt_public_key_file is not None:
            return self.jwt_public_key_file.read_text()
        return None


class SettingsError(Exception):
    """Configuration that cannot be used; the message is meant for a human and names the setting."""
