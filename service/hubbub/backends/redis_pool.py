"""Redis clients for one node: one pooled client for commands, one dedicated client for pub/sub.

Every command has a timeout (`redis_timeout`): a slow or unreachable Redis fails a call, it never
hangs a node. Supports `redis://`, `rediss://` (TLS), credentials and ACL users in the URL,
Sentinel (`redis_sentinels` + `redis_sentinel_service`) and Redis Cluster (`redis_cluster_nodes`:
redis-py's cluster client for presence and the node registry, and a connection factory per node
address for the broker's own Links, `redis_shards`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from hubbub.backends.redis_internals import PYTHON_PARSER
from hubbub.metrics import RedisErrorKind
from hubbub.settings import Settings

#: Pooled command connections per node; more callers wait (up to redis_timeout) for a free one.
POOL_SIZE = 64


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool with the blocking pool's behaviour at its size: callers wait, they do not fail."""


Address = tuple[str, int]


@dataclass
class RedisClients:
    #: redis-py's client: a RedisCluster when `seeds` are set (same commands, routed by slot).
    commands: aioredis.Redis
    subscriber: aioredis.Redis
    #: A Redis Cluster's seed addresses; empty for a single Redis (or one found by Sentinel).
    seeds: tuple[Address, ...] = ()
    #: Options of a connection to one cluster node (credentials, TLS, timeouts), not its address.
    node_options: dict[str, object] | None = None

    def connection_factory(self, *, subscriber: bool = False) -> Callable[[], AbstractConnection]:
        """New unpooled connections configured like the client's (URL, TLS, credentials, Sentinel)."""
        pool = (self.subscriber if subscriber else self.commands).connection_pool
        # RESP3 (Redis 6+): pub/sub messages are typed pushes, never mistaken for a command's reply.
        kwargs = {**pool.connection_kwargs, "protocol": 3}
        return lambda: pool.connection_class(**kwargs)

    def node_factory(self, *, subscriber: bool = False) -> Callable[[Address], AbstractConnection]:
        """New connections to the cluster node at an address, configured like every other (a cluster only)."""
        assert self.node_options is not None
        options = dict(self.node_options)
        connection_class = options.pop("connection_class")
        if subscriber:
            options["client_name"] = str(options.get("client_name", "hubbub")).replace("hubbub-", "hubbub-sub-", 1)
        return lambda address: connection_class(host=address[0], port=address[1], protocol=3, **options)  # type: ignore[operator]

    async def aclose(self) -> None:
        await self.commands.aclose()
        if self.subscriber is not self.commands:
            await self.subscriber.aclose()


def _options(settings: Settings, client_name: str) -> dict[str, object]:
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "health_check_interval": 10,
        "client_name": client_name,
        # redis-py's own parser, which it used before hiredis became our dependency (for the Link,
        # which uses hiredis directly): the pool is off the hot path and stays on the tested parser.
        # Private to redis-py: see redis_internals.
        "parser_class": PYTHON_PARSER,
        # One quick retry smooths over a dropped pooled connection; anything longer is the caller's 503.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), 1),
    }


def addresses(entries: Iterable[str]) -> list[Address]:
    """`host:port` entries (of redis_sentinels, redis_cluster_nodes) as pairs; ValueError names a bad one."""
    found = []
    for address in entries:
        host, _, port = address.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r} is not host:port (e.g. redis-0.redis:6379)")
        found.append((host.strip("[]") or "127.0.0.1", int(port)))
    return found


def _url_options(settings: Settings) -> dict[str, object]:
    """What `redis_url` says beyond the address, for Sentinel and cluster: credentials, db and TLS."""
    if not settings.redis_url:
        return {}
    parsed = aioredis.connection.parse_url(settings.redis_url)
    wanted = ("username", "password", "db")
    options = {k: v for k, v in parsed.items() if k in wanted or k.startswith("ssl_")}
    # parse_url marks `rediss://` with an SSLConnection class, never `ssl`: the Sentinel pool needs `ssl`.
    if parsed.get("connection_class") is aioredis.connection.SSLConnection:
        options["ssl"] = True
    return options


def _connect_cluster(settings: Settings) -> RedisClients:
    seeds = addresses(settings.redis_cluster_nodes)
    url_options = _url_options(settings)
    url_options.pop("db", None)  # a cluster has only database 0
    tls = bool(url_options.pop("ssl", False))
    options = {k: v for k, v in _options(settings, f"hubbub-{settings.node_name}").items() if k != "parser_class"}
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        ssl=tls,
        **url_options,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    node_options: dict[str, object] = {
        "connection_class": aioredis.connection.SSLConnection if tls else aioredis.connection.Connection,
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "client_name": f"hubbub-{settings.node_name}",
        **url_options,
    }
    # redis-py's cluster client serves presence and the registry (a cluster client is a drop-in for them);
    # its pub/sub (the registry's control channel) picks a node each time it subscribes.
    return RedisClients(commands=client, subscriber=client, seeds=tuple(seeds), node_options=node_options)  # type: ignore[arg-type]


def connect(settings: Settings) -> RedisClients:
    """Build (not connect) the node's clients; connections are made on first use."""
    node = settings.node_name
    if settings.redis_cluster_nodes:
        return _connect_cluster(settings)
    if settings.redis_sentinels:
        sentinels = addresses(settings.redis_sentinels)
        url_options = _url_options(settings)
        sentinel = Sentinel(sentinels, socket_timeout=settings.redis_timeout, **url_options)  # type: ignore[no-untyped-call]
        service = settings.redis_sentinel_service
        return RedisClients(
            commands=sentinel.master_for(
                service,
                connection_pool_class=BlockingSentinelPool,
                max_connections=POOL_SIZE,
                timeout=settings.redis_timeout,
                **_options(settings, f"hubbub-{node}"),  # type: ignore[arg-type]
            ),
            subscriber=sentinel.master_for(service, **_options(settings, f"hubbub-sub-{node}")),  # type: ignore[arg-type]
        )
    assert settings.redis_url is not None
    # A burst of joins must wait its turn for a pooled connection (within redis_timeout), not fail
    # with "too many connections" as the default pool does past its size.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE,
        timeout=settings.redis_timeout,
        **_options(settings, f"hubbub-{node}"),
    )
    return RedisClients(
        commands=aioredis.Redis.from_pool(pool),
        subscriber=aioredis.Redis.from_url(settings.redis_url, **_options(settings, f"hubbub-sub-{node}")),  # type: ignore[arg-type]
    )


async def stop_tasks(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel background loops and wait for them; a loop caught mid-command may end with a Redis error."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
            await task


def error_kind(exc: BaseException) -> RedisErrorKind:
    """What a failed Redis call counts as (hubbub_redis_errors_total's `kind`)."""
    # Before OSError: the built-in TimeoutError is one.
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    if isinstance(exc, ResponseError):
        return "response"
    return "other"
