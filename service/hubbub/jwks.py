"""The I/O half of authentication: a cached, rotating JWKS fetcher and the `Authenticator` the handshake uses.

Failure policy: the identity provider being slow, down or returning garbage must never take authentication
down with it. A failed fetch logs a warning on the "hubbub.auth" logger and keeps serving the last good keys;
fetches are rate-limited so neither token spam nor an outage turns into a request storm against the IdP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx

from hubbub.auth import AuthError, KeySet, Principal, PublicKey, parse_jwks, read_header, verify_token

logger = logging.getLogger("hubbub.auth")

MAX_JWKS_BYTES: Final = 1024 * 1024
_NO_KEYS: Final[Mapping[str, PublicKey]] = {}


class JwksCache:
    """Keys of one JWKS URL, fetched on first use and refreshed every `refresh_interval` seconds.

    A stale cache is refreshed in the background: callers keep getting the current keys meanwhile, so a slow
    IdP never stalls the handshake. No fetch of any kind starts within `min_refetch_interval` seconds of the
    previous attempt, successful or not. Concurrent callers share one in-flight fetch.
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = 300.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if refresh_interval <= 0 or min_refetch_interval < 0 or timeout <= 0:
            raise ValueError("refresh_interval and timeout must be > 0, min_refetch_interval >= 0")
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self.fetch_count = 0
        self._client = client
        self._owns_client = client is None
        self._closed = False
        self._keys: Mapping[str, PublicKey] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._refresh_task: asyncio.Task[None] | None = None

    async def keys(self) -> Mapping[str, PublicKey]:
        """The current kid -> key mapping; the same object until a fetch changes it.

        The first call fetches. Later calls return at once and, when the keys are older than
        `refresh_interval`, start a background refresh. Raises AuthError("unknown_key", ...) only when no
        fetch has ever succeeded.
        """
        current = self._keys
        if current is None:
            async with self._lock:
                if self._keys is None and self._may_attempt():
                    await self._fetch()
            if self._keys is None:
                raise AuthError("unknown_key", "signing keys unavailable")
            return self._keys
        stale = time.monotonic() - self._fetched_at >= self.refresh_interval
        if stale and self._refresh_task is None and self._may_attempt():
            self._refresh_task = asyncio.create_task(self._refresh_in_background(), name="hubbub-jwks-refresh")
        return current

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch now, unless any fetch started less than `min_refetch_interval` ago (token spam with random
        kids must not turn into IdP spam). Waits for an in-flight fetch. Returns True if it fetched new keys
        successfully; either way `keys()` then returns the freshest keys available."""
        async with self._lock:
            if not self._may_attempt():
                return False
            return await self._fetch()

    async def aclose(self) -> None:
        self._closed = True
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _may_attempt(self) -> bool:
        return self._attempted_at is None or time.monotonic() - self._attempted_at >= self.min_refetch_interval

    async def _refresh_in_background(self) -> None:
        try:
            async with self._lock:
                if time.monotonic() - self._fetched_at >= self.refresh_interval and self._may_attempt():
                    await self._fetch()
        finally:
            self._refresh_task = None

    async def _fetch(self) -> bool:
        """One fetch attempt; the caller holds the lock. Never raises (except cancellation)."""
        self.fetch_count += 1
        self._attempted_at = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                keys = parse_jwks(await self._download())
            if not keys:
                raise ValueError("the document holds no usable signature keys")
        except Exception as exc:
            # Whatever went wrong (network, HTTP status, JSON, JWKS shape) the outcome is the same: keep the
            # keys we have, and say why in one line without a traceback per attempt.
            outcome = "keeping the previous keys" if self._keys is not None else "no signing keys available yet"
            detail = str(exc) or type(exc).__name__
            logger.warning("JWKS fetch from %s failed (%s); %s", self.url, detail, outcome)
            return False
        if self._keys is None or set(keys) != set(self._keys):
            logger.info("JWKS from %s loaded: key ids %s", self.url, sorted(keys))
        self._keys = keys
        self._fetched_at = time.monotonic()
        return True

    async def _download(self) -> Any:
        if self._closed:
            raise RuntimeError("JwksCache is closed")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        headers = {"Accept": "application/json"}
        async with self._client.stream("GET", self.url, headers=headers, timeout=self.timeout) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP status {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"document larger than {MAX_JWKS_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("response is not JSON") from None


class Authenticator:
    """Token -> Principal with the configured keys: an HMAC secret, PEM public key(s), and/or a JWKS URL.

    Raises ValueError at construction for unusable key configuration (see `KeySet.from_config`), and when no
    key source is configured at all unless `allow_anonymous` is set.
    """

    def __init__(
        self,
        *,
        hmac_secret: str | None = None,
        public_key_pem: str | None = None,
        jwks_url: str | None = None,
        jwks_refresh_interval: float = 300.0,
        jwks_min_refetch_interval: float = 30.0,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 5.0,
        allow_anonymous: bool = False,
        clock: Callable[[], float] = time.time,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._static = KeySet.from_config(hmac_secret=hmac_secret, public_key_pem=public_key_pem)
        if self._static.empty and not jwks_url and not allow_anonymous:
            raise ValueError("no signing key configured: set an HMAC secret, a public key PEM or a JWKS URL")
        self.jwks: JwksCache | None = None
        if jwks_url:
            self.jwks = JwksCache(
                jwks_url,
                refresh_interval=jwks_refresh_interval,
                min_refetch_interval=jwks_min_refetch_interval,
                client=http_client,
            )
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._allow_anonymous = allow_anonymous
        self._clock = clock
        self._merged: tuple[Mapping[str, PublicKey], KeySet] = (_NO_KEYS, self._static)

    async def authenticate(self, token: str) -> Principal:
        """Verify `token`; raises AuthError. With a JWKS, a token whose kid is unknown triggers one
        (rate-limited) refetch and a retry, which is how key rotation at the IdP is picked up."""
        if self.jwks is None:
            return self._verify(token, self._static)
        read_header(token)  # garbage is rejected before it can cause a JWKS fetch
        try:
            jwks_keys = await self.jwks.keys()
        except AuthError as unavailable:
            # Static keys keep working while the IdP is unreachable; anything they cannot judge is blamed on
            # the missing JWKS rather than reported as a bad algorithm.
            try:
                return self._verify(token, self._static)
            except AuthError as exc:
                if exc.reason in ("unknown_key", "bad_algorithm"):
                    raise unavailable from None
                raise
        try:
            return self._verify(token, self._with_jwks(jwks_keys))
        except AuthError as exc:
            if exc.reason != "unknown_key":
                raise
            await self.jwks.refresh_for_unknown_kid()
            fresh = await self.jwks.keys()
            if fresh is jwks_keys:
                raise
        return self._verify(token, self._with_jwks(fresh))

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()

    def _with_jwks(self, jwks_keys: Mapping[str, PublicKey]) -> KeySet:
        if self._merged[0] is not jwks_keys:
            self._merged = (jwks_keys, dataclasses.replace(self._static, jwks_keys=jwks_keys))
        return self._merged[1]

    def _verify(self, token: str, keys: KeySet) -> Principal:
        return verify_token(
            token,
            keys,
            now=self._clock(),
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._leeway,
            allow_anonymous=self._allow_anonymous,
        )
