"""Backend selection: the one place that picks implementations from settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass, field

from hubbub.backends.base import Broker, BrokerEventHandler, ClusterView, History, LocalNode, Presence
from hubbub.backends.cluster_local import LocalCluster
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.metrics import Metrics, RedisMetrics
from hubbub.settings import Settings

__all__ = ["Backends", "create_backends"]


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class Backends:
    broker: Broker
    history: History
    presence: Presence
    cluster: ClusterView = field(default_factory=LocalCluster)
    kind: str = "memory"
    #: Extra start/stop steps of the implementation (background refreshers, shared clients).
    on_start: Callable[[], None] = field(default=lambda: None)
    on_close: Callable[[], Awaitable[None]] = field(default=_nothing)

    async def start(self, handler: BrokerEventHandler, local: LocalNode) -> None:
        await self.broker.start(handler)
        await self.cluster.start(local)
        self.on_start()

    async def aclose(self) -> None:
        await self.on_close()
        await self.cluster.aclose()
        await self.broker.aclose()

    def internals(self) -> dict[str, int]:
        """Sizes of the backends' local state (zero for remote backends), for leak checks."""
        return {
            name: len(backend)
            for name, backend in (("streams", self.history), ("presence_rooms", self.presence))
            if isinstance(backend, Sized)
        }


def create_backends(settings: Settings, metrics: Metrics | None = None) -> Backends:
    """The backends `settings` ask for; the Redis ones count into `metrics.redis` (else numbers nobody reads)."""
    if settings.redis_url or settings.redis_sentinels or settings.redis_cluster_nodes:
        from hubbub.backends.redis_broker import RedisEngine
        from hubbub.backends.redis_cluster import RedisCluster
        from hubbub.backends.redis_pool import connect
        from hubbub.backends.redis_presence import RedisPresence

        clients = connect(settings)
        counts = metrics.redis if metrics is not None else RedisMetrics()
        engine = RedisEngine(
            clients,
            prefix=settings.redis_prefix,
            timeout=settings.redis_timeout,
            position_check_interval=settings.position_check_interval,
            metrics=counts,
        )
        presence = RedisPresence(
            clients.commands,
            prefix=settings.redis_prefix,
            ttl=settings.presence_ttl,
            timeout=settings.redis_timeout,
            node=settings.node_name,
            metrics=counts,
        )
        return Backends(
            broker=engine,
            history=engine,
            presence=presence,
            cluster=RedisCluster(
                clients.commands,
                clients.subscriber,
                prefix=settings.redis_prefix,
                name=settings.node_name,
                metrics=counts,
                on_node_gone=presence.purge,
                sharded=bool(clients.seeds),
            ),
            kind="redis",
            on_start=presence.start,
            on_close=presence.aclose,
        )
    engine_memory = MemoryEngine()
    return Backends(broker=engine_memory, history=engine_memory, presence=MemoryPresence())
