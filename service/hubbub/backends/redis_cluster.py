"""The ClusterView on Redis: a node registry with heartbeats and a control channel.

Every node writes its `info()` to `<prefix>:nodes` and its last heartbeat to `<prefix>:nodes:seen`
every `HEARTBEAT` seconds; a node not seen for `NODE_TTL` is not listed. Cluster-wide operations
are broadcast on `<prefix>:control`; each node answers by adding its result to a per-request
counter, and the caller waits (bounded) until every live node has answered.

On a Redis Cluster (`sharded`) the registry's keys are `{<prefix>}:nodes` and so on: one hash tag,
one slot, so the script that forgets a node still runs on one master. The control channel stays a
classic channel, which a Redis Cluster delivers to subscribers on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.exceptions import RedisError

from hubbub import protocol
from hubbub.backends.base import BackendUnavailable, LocalNode
from hubbub.backends.redis_pool import error_kind, stop_tasks
from hubbub.metrics import RedisMetrics
from hubbub.throttle import RepeatedError
from hubbub.types import JSONObject

T = TypeVar("T")

#: redis-py's name for "every master" of a Redis Cluster, for a command each must answer.
PRIMARIES = ClusterClient.PRIMARIES

log = logging.getLogger("hubbub.redis")

HEARTBEAT = 2.0
NODE_TTL = 6.0
#: Seconds one node holds the right to bury a dead one (clear its presence, forget it).
PURGE_LOCK = 30
#: How long a cluster-wide operation waits for the other nodes' answers.
ANSWER_TIMEOUT = 2.0
COUNT_CHANNELS = "return #redis.call('PUBSUB', 'CHANNELS', ARGV[1])"
COUNT_SHARD_CHANNELS = "return #redis.call('PUBSUB', 'SHARDCHANNELS', ARGV[1])"
FORGET = """
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
"""


class RedisCluster:
    def __init__(
        self,
        commands: aioredis.Redis,
        subscriber: aioredis.Redis,
        *,
        prefix: str,
        name: str,
        metrics: RedisMetrics | None = None,
        on_node_gone: Callable[[str], Awaitable[int]] | None = None,
        sharded: bool = False,
    ) -> None:
        self._redis = commands
        #: Clears what a dead node left behind (its presence entries); returns how much there was.
        self._on_node_gone = on_node_gone
        self._forget = commands.register_script(FORGET)
        self._metrics = metrics or RedisMetrics()
        self._subscriber = subscriber
        self._prefix = prefix
        self._sharded = sharded
        #: What the registry's keys start with: one hash tag on a Redis Cluster (see the module docstring).
        self._keys = f"{{{prefix}}}" if sharded else prefix
        self._name = name
        self._local: LocalNode | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._control_failed = RepeatedError(log, "control channel")

    @property
    def _control(self) -> str:
        return f"{self._prefix}:control"

    async def start(self, local: LocalNode) -> None:
        self._local = local
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_forever()), loop.create_task(self._listen_forever())]

    async def _call(self, reply: Awaitable[T], timeout: float) -> T:
        """One round trip, timed and, when it fails, counted (the caller handles the exception)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await asyncio.wait_for(reply, timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._metrics.error("cluster", error_kind(exc))
            raise
        self._metrics.latency["cluster"].observe(loop.time() - started)
        return result

    async def aclose(self) -> None:
        await stop_tasks(self._tasks)
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hdel(f"{self._keys}:nodes", self._name)
            pipe.zrem(f"{self._keys}:nodes:seen", self._name)
            await asyncio.wait_for(pipe.execute(), 1.0)

    async def _heartbeat_forever(self) -> None:
        while True:
            if self._local is not None:
                with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.hset(f"{self._keys}:nodes", self._name, protocol.dumps(self._local.info()))
                    pipe.zadd(f"{self._keys}:nodes:seen", {self._name: time.time()})
                    await self._call(pipe.execute(), HEARTBEAT)
                with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError, BackendUnavailable):
                    await self._bury_the_dead()
            await asyncio.sleep(HEARTBEAT)

    async def _bury_the_dead(self) -> None:
        """Clear what nodes not seen for NODE_TTL left behind, then forget them; one live node does each.

        A node stays listed as seen (though not live) until it is buried; the lock, held for PURGE_LOCK
        seconds, keeps the others from doing it twice, and a clear that failed is tried again once it expires.
        """
        cutoff = time.time() - NODE_TTL
        seen = f"{self._keys}:nodes:seen"
        dead = await self._call(self._redis.zrangebyscore(seen, "-inf", cutoff), HEARTBEAT)
        for raw in dead:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            lock = f"{self._keys}:burying:{name}"
            if name == self._name or not await self._call(
                self._redis.set(lock, self._name, nx=True, ex=PURGE_LOCK), HEARTBEAT
            ):
                continue
            cleared = await self._on_node_gone(name) if self._on_node_gone is not None else 0
            # Forgotten only if it did not come back meanwhile (a heartbeat newer than the cutoff).
            await self._call(self._forget(keys=[seen, f"{self._keys}:nodes"], args=[name, cutoff]), HEARTBEAT)
            log.warning("node %s stopped sending heartbeats: removed its %d presence entries", name, cleared)

    async def _live(self) -> list[str]:
        # Dead nodes stay in the set until one node has buried them (_bury_the_dead): only read here.
        names = await self._call(
            self._redis.zrangebyscore(f"{self._keys}:nodes:seen", time.time() - NODE_TTL, "+inf"), ANSWER_TIMEOUT
        )
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    async def nodes(self) -> list[JSONObject]:
        try:
            names = await self._live()
            raw = await self._call(self._redis.hmget(f"{self._keys}:nodes", names), ANSWER_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc
        found = {name: protocol.loads(value) for name, value in zip(names, raw, strict=True) if value}
        if self._local is not None:
            found[self._name] = self._local.info()  # this node's own figures are always current
        return [found[name] for name in sorted(found)]

    async def rooms(self) -> int:
        # Every node subscribes to a room's channel exactly while the room has members there, so
        # the channels with subscribers are the rooms in use cluster-wide, each counted once. Counted
        # inside Redis: only the number travels, not 10,000 channel names.
        pattern = f"{self._prefix}:{{*}}:ch"
        try:
            if self._sharded:
                # Shard channels live on the master of their slot: every master counts its own.
                counts = await self._call(
                    self._redis.execute_command(  # type: ignore[no-untyped-call]
                        "EVAL", COUNT_SHARD_CHANNELS, 0, pattern, target_nodes=PRIMARIES
                    ),
                    ANSWER_TIMEOUT,
                )
                return sum(int(n) for n in counts.values())
            count = await self._call(self._redis.eval(COUNT_CHANNELS, 0, pattern), ANSWER_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc
        return int(count)

    async def disconnect_user(self, user: str, code: int, reason: str | None) -> int:
        request = secrets.token_hex(8)
        key = f"{self._keys}:req:{request}"
        message = protocol.dumps({"op": "disconnect", "req": request, "user": user, "code": code, "reason": reason})
        try:
            live = set(await self._live()) | {self._name}
            await self._call(self._redis.publish(self._control, message), ANSWER_TIMEOUT)
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while True:
                answers = await self._call(self._redis.hgetall(key), ANSWER_TIMEOUT)
                answered = {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in answers.items()}
                if live <= answered.keys() or time.monotonic() > deadline:
                    return sum(answered.values())
                await asyncio.sleep(0.02)
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc

    async def _listen_forever(self) -> None:
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                if self._sharded:
                    # redis-py's cluster pub/sub picks the node from the slot map, which it reads only when
                    # a command needs it: maybe not yet. (After a failover, a new pubsub reads it again.)
                    await asyncio.wait_for(self._subscriber.initialize(), HEARTBEAT)
                await asyncio.wait_for(pubsub.subscribe(self._control), HEARTBEAT)
                self._control_failed.recovered()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        await self._answer(message["data"])
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError, ValueError) as exc:
                self._metrics.error("cluster", error_kind(exc))
                self._metrics.control_failures.add(1)
                self._control_failed.failed(str(exc) or type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.5)

    async def _answer(self, data: bytes) -> None:
        """Handle one control message. A malformed one, or an answer Redis did not take, is counted and
        logged; the channel stays subscribed (resubscribing could miss the next request)."""
        try:
            await self._handle(protocol.loads(data))
        except Exception as exc:
            self._metrics.control_failures.add(1)
            log.warning("control message not handled: %s", exc or type(exc).__name__)

    async def _handle(self, message: JSONObject) -> None:
        if message.get("op") != "disconnect" or self._local is None:
            return
        count = self._local.disconnect_user(str(message["user"]), int(message["code"]), message.get("reason"))
        key = f"{self._keys}:req:{message['req']}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, self._name, count)
        pipe.expire(key, 60)
        await self._call(pipe.execute(), ANSWER_TIMEOUT)
