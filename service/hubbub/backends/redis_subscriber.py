"""The broker's pub/sub side: a subscription per room channel, kept through reconnections and moves.

On a single Redis every channel is carried by one subscriber connection (SUBSCRIBE). In a Redis
Cluster (`redis_shards`) a room's channel is a shard channel in the room's slot (SSUBSCRIBE): it is
carried by a connection to that slot's master, one per master. Either way a `_Pipe` is one such
connection with its loop: connect, subscribe every channel it carries, ping while quiet (a dead
connection must not look like silence), and start again after a loss.

Pub/sub is at-most-once: what was published while a channel was not subscribed is gone from the
channel (not from the room's stream). So whenever a channel's subscription is made again, after a
lost connection, a failover or a slot that moved to another master (its old master then ends the
subscription with `sunsubscribe`), the broker hears of it (`on_restored`) and backfills the room
from its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from hubbub.backends.base import BackendUnavailable
from hubbub.backends.redis_link import Link
from hubbub.backends.redis_pool import error_kind
from hubbub.backends.redis_shards import Address, Shards, key_slot
from hubbub.metrics import RedisMetrics
from hubbub.throttle import RepeatedError

log = logging.getLogger("hubbub.redis")

#: Seconds between pings on a quiet subscriber connection.
PING_EVERY: Final = 1.0
#: Channels per SUBSCRIBE when a connection takes its channels back.
SUBSCRIBE_BATCH: Final = 1000
#: The pipe of a single Redis (not an address: the connection factory knows where Redis is, or Sentinel does).
SINGLE: Final[Address] = ("", 0)


class _Pipe:
    """One subscriber connection and the loop that keeps it (and its channels) up."""

    def __init__(self, owner: Subscriber, address: Address, link: Link) -> None:
        self.owner = owner
        self.address = address
        self.link = link
        self.up = False
        self.task: asyncio.Task[None] | None = None
        where = owner.where(address)
        self.lost = RepeatedError(
            log, f"redis subscriber connection lost{where}", recovery=f"redis subscriber back{where}"
        )

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._forever(), name="hubbub-redis-subscriber")

    async def _forever(self) -> None:
        owner = self.owner
        delay = 0.1
        #: A connection of this pipe was up before: the next one up is a reconnect.
        was_up = False
        while True:
            try:
                await self.link.connect()
                lost = self.link.lost()
                channels = owner.carried_by(self.address)
                owner.send_subscribe(self.link, channels)
                await owner.confirm(self.link)
                self.up = True
                if was_up:
                    owner.metrics.reconnects.add(1)
                self.lost.recovered()
                delay = 0.1
                # On a first connection too: in a cluster, a new master (a promoted replica) takes over channels.
                owner.restored(channels, reconnected=was_up)
                was_up = True
                while not lost.done():
                    await asyncio.wait([lost], timeout=PING_EVERY)
                    if not lost.done():
                        await self.link.call("PING")
                self.lost.failed("the connection closed")
            except asyncio.CancelledError:
                self.up = False
                raise
            except (RedisError, OSError) as exc:
                owner.metrics.error("broker", error_kind(exc))
                # Before the first subscription the health check speaks for Redis; after a loss, every
                # failed reconnection belongs to the outage this counts.
                if self.up or self.lost.failing:
                    self.lost.failed(str(exc) or type(exc).__name__)
            if self.up:
                self.up = False
                owner.pipe_lost(self)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.link.aclose()


class Subscriber:
    """Room channels subscribed on a single Redis or across a Redis Cluster's masters (module docstring)."""

    def __init__(
        self,
        open_link: Callable[[Address, Callable[[list[Any]], None]], Link],
        *,
        shards: Shards | None,
        on_message: Callable[[str, bytes], None],
        on_restored: Callable[[list[str]], None],
        metrics: RedisMetrics,
    ) -> None:
        self._open_link = open_link
        self._shards = shards
        self._on_message = on_message
        self._on_restored = on_restored
        self.metrics = metrics
        self.subscribe_command = "SSUBSCRIBE" if shards is not None else "SUBSCRIBE"
        self._unsubscribe_command = "SUNSUBSCRIBE" if shards is not None else "UNSUBSCRIBE"
        self._message_kind = b"smessage" if shards is not None else b"message"
        #: Every channel wanted, and the address of the pipe it is subscribed on (or will be, once up).
        self._channels: dict[str, Address] = {}
        self._pipes: dict[Address, _Pipe] = {}
        self._moving: asyncio.Task[None] | None = None
        #: Take-overs and closes of gone masters' pipes, still running (cancelled at close).
        self._tasks: set[asyncio.Task[None]] = set()
        self._shut = False
        if shards is not None:
            shards.on_change(lambda _: self._follow_map())

    def where(self, address: Address) -> str:
        return "" if address == SINGLE else f" ({address[0]}:{address[1]})"

    # --- state ------------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Every pipe that carries (or would carry) channels is connected."""
        if self._shards is None:
            pipe = self._pipes.get(SINGLE)
            return pipe is not None and pipe.up
        masters = self._shards.map.masters() if self._shards.map is not None else set()
        return bool(masters) and all(a in self._pipes and self._pipes[a].up for a in masters)

    def carried_by(self, address: Address) -> list[str]:
        return [channel for channel, at in self._channels.items() if at == address]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._shards is None:
            self._pipe(SINGLE)
            return
        self._move_soon()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._shut = True
        for task in [self._moving, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        pipes, self._pipes = list(self._pipes.values()), {}
        for pipe in pipes:
            await pipe.aclose()

    def _pipe(self, address: Address) -> _Pipe:
        pipe = self._pipes.get(address)
        if pipe is None:
            pipe = self._pipes[address] = _Pipe(self, address, self._open_link(address, self._on_push))
            pipe.start()
        return pipe

    # --- channels ---------------------------------------------------------------------------------

    def _address_of(self, channel: str) -> Address | None:
        if self._shards is None:
            return SINGLE
        slots = self._shards.map
        return slots.owner(key_slot(channel)) if slots is not None else None

    async def subscribe(self, channel: str) -> None:
        """Subscribe `channel`; returns once Redis confirmed it (every publication after that reaches us)."""
        for _attempt in range(2):
            address = self._address_of(channel)
            if address is None and self._shards is not None:
                await self._refresh()
                address = self._address_of(channel)
            pipe = self._pipes.get(address) if address is not None else None
            if address is None or pipe is None or not pipe.up:
                if address is not None and self._shards is not None:
                    self._pipe(address)  # a master not seen before: its pipe starts now
                raise BackendUnavailable(f"redis subscriber connection{self.where(address or SINGLE)} is down")
            self._channels[channel] = address
            pipe.link.send(self.subscribe_command, channel)
            try:
                await self.confirm(pipe.link)
                return
            except ResponseError as exc:
                # MOVED: the slot has another master since the map was read. Read it again and go there.
                self._channels.pop(channel, None)
                if self._shards is None or not str(exc).startswith("MOVED"):
                    raise
                await self._refresh()
        raise BackendUnavailable(f"redis: the master of {channel} kept changing")

    def unsubscribe(self, channel: str) -> None:
        address = self._channels.pop(channel, None)
        pipe = self._pipes.get(address) if address is not None else None
        if pipe is not None and pipe.up:
            pipe.link.send(self._unsubscribe_command, channel)

    def send_subscribe(self, link: Link, channels: list[str]) -> None:
        """Subscribe `channels` on `link`, in few commands: SSUBSCRIBE takes only channels of one slot."""
        if self._shards is None:
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                link.send(self.subscribe_command, *channels[start : start + SUBSCRIBE_BATCH])
            return
        by_slot: dict[int, list[str]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        for same_slot in by_slot.values():
            link.send(self.subscribe_command, *same_slot)

    async def confirm(self, link: Link) -> None:
        # Redis answers in order: once the ping is back, every (s)subscribe sent before it is in place.
        await link.call("PING")

    # --- what Redis sends -------------------------------------------------------------------------

    def _on_push(self, push: list[Any]) -> None:
        kind = push[0]
        if kind == self._message_kind:
            self._on_message(push[1].decode(), push[2])
        elif kind == b"sunsubscribe" and self._shards is not None:
            channel = push[1].decode()
            if channel in self._channels:
                # Not asked for: the slot of the channel moved to another master (resharding, a failover).
                self._channels[channel] = SINGLE  # carried by no pipe until the map says where it lives now
                self._move_soon()

    # --- following the cluster ------------------------------------------------------------------

    def pipe_lost(self, pipe: _Pipe) -> None:
        """A pipe's connection went down: in a cluster its master may be gone for good (a failover)."""
        if self._shards is not None and not self._shut:
            self._move_soon()

    def restored(self, channels: list[str], *, reconnected: bool) -> None:
        if channels:
            if reconnected or self._shards is None:
                log.warning("redis subscriber reconnected: backfilling %d rooms", len(channels))
            else:
                log.warning("redis cluster: %d rooms moved to another master, backfilling them", len(channels))
            self._on_restored(channels)

    async def _refresh(self) -> None:
        assert self._shards is not None
        try:
            await self._shards.refresh()  # a changed map comes back through _follow_map
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    def _move_soon(self) -> None:
        if self._moving is None or self._moving.done():
            self._moving = asyncio.get_running_loop().create_task(self._move(), name="hubbub-redis-resubscribe")

    async def _move(self) -> None:
        """Read the map again until every master in it has its pipe up (a failed master is replaced in
        the map only once the cluster promoted a replica, seconds later); every read that finds the map
        changed moves the channels (_follow_map)."""
        delay = 0.1
        while not self._shut:
            with contextlib.suppress(BackendUnavailable):
                await self._refresh()
            if self.up:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _follow_map(self) -> None:
        """Start a pipe per master, stop those of nodes no longer masters, and move channels whose slot
        has another master now: subscribed there (once that pipe is up), then backfilled."""
        assert self._shards is not None
        slots = self._shards.map
        if slots is None or self._shut:
            return
        masters = slots.masters()
        for address in masters:
            self._pipe(address)
        moved: dict[Address, list[str]] = {}
        for channel, at in self._channels.items():
            owner = slots.owner(key_slot(channel))
            if owner is not None and owner != at:
                moved.setdefault(owner, []).append(channel)
        for address, channels in moved.items():
            for channel in channels:
                previous = self._channels[channel]
                old = self._pipes.get(previous)
                if old is not None and old.up and previous in masters:
                    old.link.send(self._unsubscribe_command, channel)
                self._channels[channel] = address
            pipe = self._pipes[address]
            if pipe.up:
                self._background(self._take_over(pipe, channels))
            # else: the pipe subscribes them (and the broker backfills them) when it comes up
        for address in [a for a in self._pipes if a not in masters and a != SINGLE]:
            self._background(self._pipes.pop(address).aclose())

    async def _take_over(self, pipe: _Pipe, channels: Iterable[str]) -> None:
        wanted = [c for c in channels if self._channels.get(c) == pipe.address]
        if not wanted:
            return
        self.send_subscribe(pipe.link, wanted)
        try:
            await self.confirm(pipe.link)
        except ResponseError:
            self._move_soon()  # MOVED: the map changed again meanwhile
            return
        except (RedisError, OSError):
            return  # the pipe's next connection subscribes them (and restores them) again
        self.restored(wanted, reconnected=False)
