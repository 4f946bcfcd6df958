"""Redis Cluster for the broker: which master serves a key, and one pipelined Link to each.

A Redis Cluster splits the key space into 16,384 hash slots and each slot is served by one master;
a key's slot is CRC16 of its hash tag (the part between the first `{` and the next `}`), so every key
and channel of one room (`<prefix>:{room}:...`) is in one slot and a room's script runs on one
master. `Shards` keeps the cluster's slot map and a `redis_link.Link` per master, and sends each
command to the master of its key's slot: the commands of one room are pipelined on one connection,
in the order they were made, as on a single Redis.

The map is read with CLUSTER SLOTS from any known node (the masters, then the seeds of the
configuration) at start, and again whenever the cluster says it changed:

- `MOVED <slot> <host:port>`: the slot has a new master (resharding done, or a failover); the
  command was not run, so it is sent again there and the whole map is read again.
- `ASK <slot> <host:port>`: the slot is being migrated and this key has moved already; the command
  goes to the target once, preceded by ASKING, and the map stays as it is.
- `TRYAGAIN` (a multi-key command whose keys are split by a migration in progress) and
  `CLUSTERDOWN` (a master failed and no replica has been promoted yet): the command was not run; it
  is tried again after a short pause, within the link timeout.
- A lost connection: the command may or may not have run, so it fails as on a single Redis (the
  caller answers 503 and a client retries with its idempotency key), and the map is read again so
  the next command finds the promoted replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as LinkDown
from redis.exceptions import ResponseError

from hubbub.backends.redis_link import Arg, Link

log = logging.getLogger("hubbub.redis")

SLOTS: Final = 16384
#: Redirections and retries one command may go through before it fails.
MAX_ATTEMPTS: Final = 6
#: Seconds before a command refused with TRYAGAIN or CLUSTERDOWN is tried again (doubling each time).
RETRY_PAUSE: Final = 0.05

Address = tuple[str, int]


def _crc16_table() -> list[int]:
    # CRC16-CCITT (XModem: polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes keys with.
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16: Final = _crc16_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def key_slot(key: str | bytes) -> int:
    """The hash slot of `key`: of its hash tag when it has a non-empty one (Redis Cluster's rule)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % SLOTS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_slots(reply: Any, asked: Address) -> list[tuple[int, int, Address]]:
    """The (first slot, last slot, master) ranges of a CLUSTER SLOTS reply from the node at `asked`.

    A master listed without an address (an empty or `?` host: the node does not know how it is reached)
    is the node that answered, as the command's documentation says."""
    ranges = []
    for entry in reply:
        first, last, master = int(entry[0]), int(entry[1]), entry[2]
        host, port = _text(master[0]), int(master[1])
        if host in ("", "?"):
            host = asked[0]
        ranges.append((first, last, (host, port)))
    return ranges


class SlotMap:
    """Which master serves each slot (None: no master, the cluster is down for that slot)."""

    __slots__ = ("_owners",)

    def __init__(self, ranges: Sequence[tuple[int, int, Address]] = ()) -> None:
        self._owners: list[Address | None] = [None] * SLOTS
        for first, last, address in ranges:
            for slot in range(max(0, first), min(SLOTS - 1, last) + 1):
                self._owners[slot] = address

    def owner(self, slot: int) -> Address | None:
        return self._owners[slot]

    def assign(self, slot: int, address: Address) -> None:
        self._owners[slot] = address

    def masters(self) -> set[Address]:
        return {address for address in self._owners if address is not None}

    def same(self, other: SlotMap) -> bool:
        return self._owners == other._owners

    def covered(self) -> bool:
        return all(address is not None for address in self._owners)


def redirection(error: ResponseError) -> tuple[str, int, Address] | None:
    """("MOVED" or "ASK", slot, address) of a redirection error; None for any other error."""
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    if not port.isdigit() or not words[1].isdigit():
        return None
    return words[0], int(words[1]), (host.strip("[]"), int(port))


def retryable(error: ResponseError) -> bool:
    """An error of a command the cluster did not run and will run a moment later."""
    return str(error).startswith(("TRYAGAIN", "CLUSTERDOWN"))


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Shards:
    """A Link to every master of a Redis Cluster; a command goes to its key's master. See the module docstring."""

    def __init__(
        self,
        seeds: Sequence[Address],
        factory: Callable[[Address], AbstractConnection],
        *,
        timeout: float,
        greeting: Sequence[Sequence[Arg]] = (),
        latency: Any = None,
    ) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed address")
        self._seeds = list(seeds)
        self._factory = factory
        self._timeout = timeout
        self._greeting = greeting
        self._latency = latency
        self._links: dict[Address, Link] = {}
        self._map: SlotMap | None = None
        self._refreshing: asyncio.Task[SlotMap] | None = None
        #: Called after a read of the map found it changed (the subscriber follows the channels' slots).
        self._listeners: list[Callable[[SlotMap], None]] = []
        self._shut = False

    def on_change(self, listener: Callable[[SlotMap], None]) -> None:
        self._listeners.append(listener)

    # --- the map --------------------------------------------------------------------------------

    @property
    def map(self) -> SlotMap | None:
        return self._map

    def link(self, address: Address) -> Link:
        """The Link to the node at `address` (made on first use, connected on its first command)."""
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = Link(
                lambda: self._factory(address), timeout=self._timeout, greeting=self._greeting, latency=self._latency
            )
        return link

    def links(self) -> dict[Address, Link]:
        """The Links of the masters in the current map."""
        masters = self._map.masters() if self._map is not None else set()
        return {address: self.link(address) for address in masters}

    async def refresh(self) -> SlotMap:
        """Read the slot map again (one read at a time: callers arriving meanwhile share it)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._read_map(), name="hubbub-redis-slots")
            self._refreshing.add_done_callback(self._refreshed)
        return await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Task[SlotMap]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that wait for it get it

    async def _read_map(self) -> SlotMap:
        known = sorted(self._map.masters()) if self._map is not None else []
        candidates = [*known, *(seed for seed in self._seeds if seed not in known)]
        failures = []
        for address in candidates:
            temporary = address not in self._links
            link = self.link(address)
            try:
                reply = await link.call("CLUSTER", "SLOTS")
            except Exception as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            finally:
                if temporary:
                    self._forget(address)
            ranges = parse_slots(reply, address)
            if not ranges:
                failures.append(f"{address[0]}:{address[1]}: no slots assigned")
                continue
            fresh = SlotMap(ranges)
            previous, self._map = self._map, fresh
            for gone in [a for a in self._links if a not in fresh.masters()]:
                self._forget(gone)
            if previous is None or not previous.same(fresh):
                for listener in self._listeners:
                    listener(fresh)
            return fresh
        raise LinkDown("no Redis Cluster node answered CLUSTER SLOTS: " + "; ".join(failures))

    def _forget(self, address: Address) -> None:
        link = self._links.pop(address, None)
        if link is not None:
            # Callers waiting on it fail (and retry elsewhere); closing needs no wait for a Link not opening.
            asyncio.get_running_loop().create_task(link.aclose())

    # --- commands -------------------------------------------------------------------------------

    async def call(self, key: str, *args: Arg) -> Any:
        """Run one command on the master of `key`'s slot, following redirections (module docstring)."""
        slot = key_slot(key)
        pause = RETRY_PAUSE
        ask: Address | None = None
        last: ResponseError | None = None
        for _attempt in range(MAX_ATTEMPTS):
            if ask is not None:
                link = self.link(ask)
                ask = None
                # Written back to back on one connection: ASKING applies to the command that follows it. Its
                # own reply is an OK; a failure (a lost connection) shows on the command's reply too.
                link.call("ASKING").add_done_callback(_retrieved)
                reply = link.call(*args)
            else:
                owner = self._map.owner(slot) if self._map is not None else None
                if owner is None:
                    owner = (await self.refresh()).owner(slot)
                if owner is None:
                    raise ResponseError(f"CLUSTERDOWN Hash slot {slot} not served")
                reply = self.link(owner).call(*args)
            try:
                return await reply
            except ResponseError as exc:
                last = exc
                moved = redirection(exc)
                if moved is not None and moved[0] == "MOVED":
                    if self._map is not None:
                        self._map.assign(moved[1], moved[2])
                    self._refresh_soon()
                    continue
                if moved is not None:
                    ask = moved[2]
                    continue
                if retryable(exc):
                    await asyncio.sleep(pause)
                    pause *= 2
                    self._refresh_soon()
                    continue
                raise
            except LinkDown:
                self._refresh_soon()
                raise
        # Still redirected or refused: the last answer says why (CLUSTERDOWN for a failover that takes longer).
        assert last is not None
        raise last

    def _refresh_soon(self) -> None:
        if self._refreshing is None and not self._shut:
            # Nobody waits for it; a failure is found again (and raised) by the next command that needs the map.
            asyncio.get_running_loop().create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()

    async def aclose(self) -> None:
        self._shut = True
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()
