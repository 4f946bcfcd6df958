"""One conformance suite for every Broker/History/Presence implementation: memory, Redis, Redis Cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from hubbub import protocol
from hubbub.backends import Backends, create_backends
from hubbub.backends.base import BackendUnavailable, InsufficientStateCause, StreamOptions
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.backends.redis_broker import RedisEngine
from hubbub.backends.redis_presence import RedisPresence
from hubbub.backends.redis_shards import key_slot
from hubbub.loader import load_settings
from hubbub.protocol import Encoded, Publication
from hubbub.types import ClientId, JSONObject, Room
from tests.support.polling import until
from tests.support.procs import free_port
from tests.support.redis_cluster import RedisClusterGroup
from tests.support.redis_server import RedisServer

OPTIONS = StreamOptions(history_size=5, history_ttl=60, idempotency_window=60, meta_ttl=600)
ROOM = Room("chat:conformance")
#: A second subscribed room whose publication, once delivered, shows that everything published before it was.
MARKER = Room("chat:marker")


@dataclass
class Recorder:
    """A BrokerEventHandler that records what it is given."""

    pubs: list[tuple[Room, str, Publication]] = field(default_factory=list)
    joins: list[tuple[Room, JSONObject]] = field(default_factory=list)
    leaves: list[tuple[Room, JSONObject]] = field(default_factory=list)
    lost: list[Room] = field(default_factory=list)
    causes: list[InsufficientStateCause] = field(default_factory=list)
    #: Rooms whose publications mark "everything before has arrived" (delivered_so_far): one per Redis master.
    markers: list[Room] = field(default_factory=lambda: [MARKER])

    def on_publication(self, room: Room, epoch: str, pub: Publication) -> None:
        self.pubs.append((room, epoch, pub))

    def on_join(self, room: Room, info: JSONObject) -> None:
        self.joins.append((room, info))

    def on_leave(self, room: Room, info: JSONObject) -> None:
        self.leaves.append((room, info))

    def on_insufficient_state(self, room: Room, cause: InsufficientStateCause) -> None:
        self.lost.append(room)
        self.causes.append(cause)


def memory_backends() -> Backends:
    engine = MemoryEngine()
    return Backends(broker=engine, history=engine, presence=MemoryPresence())


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


def redis_backends(url: str) -> Backends:
    settings = load_settings(env={}, overrides={"redis_url": url, "redis_prefix": f"t{uuid.uuid4().hex[:8]}"})
    return create_backends(settings)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path_factory.mktemp("redis-cluster"))
    group.start()
    yield group
    group.stop()


def cluster_markers(group: RedisClusterGroup) -> list[Room]:
    """A marker room on every master: one master's subscriber connection delivers in publish order, but
    two masters' connections do not keep any order between them."""
    markers = []
    for master in group.masters():
        index = 0
        while group.master_of_slot(key_slot(f"{MARKER}-{index}")) != master.port:
            index += 1
        markers.append(Room(f"{MARKER}-{index}"))
    return markers


@pytest.fixture(
    params=["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backends, Recorder]]:
    recorder = Recorder()
    if request.param == "memory":
        made = memory_backends()
    elif request.param == "redis":
        made = redis_backends(request.getfixturevalue("redis_url"))
    else:
        group: RedisClusterGroup = request.getfixturevalue("redis_cluster")
        prefix = f"t{uuid.uuid4().hex[:8]}"
        made = create_backends(
            load_settings(env={}, overrides={"redis_cluster_nodes": group.seeds(), "redis_prefix": prefix})
        )
        recorder.markers = cluster_markers(group)
    await made.broker.start(recorder)
    await until(lambda: made.broker.available, what="the broker to be available")
    yield made, recorder
    await made.aclose()


async def delivered_so_far(b: Backends, rec: Recorder) -> list[tuple[Room, str, Publication]]:
    """What the handler got for every room but MARKER, once a MARKER publication made after it all arrived.

    One node's subscription delivers in publish order, so nothing published earlier can still be on its
    way: a check that something was *not* delivered needs no sleep.
    """
    for marker in rec.markers:
        await b.broker.subscribe(marker)
    marked = len([p for p in rec.pubs if p[0] in rec.markers])
    for marker in rec.markers:
        await b.broker.publish(marker, "marker", info=None, idempotency_key=None, options=OPTIONS)
    wanted = marked + len(rec.markers)
    await until(lambda: len([p for p in rec.pubs if p[0] in rec.markers]) >= wanted, what="the marker publications")
    return [p for p in rec.pubs if p[0] not in rec.markers]


async def test_offsets_start_at_one_and_grow_by_one_within_an_epoch(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    results = [await b.broker.publish(ROOM, i, info=None, idempotency_key=None, options=OPTIONS) for i in range(4)]
    assert [r.offset for r in results] == [1, 2, 3, 4]
    assert len({r.epoch for r in results}) == 1 and results[0].epoch


async def test_publishes_started_together_on_one_node_get_offsets_in_the_order_they_were_started(
    backends: tuple[Backends, Recorder],
) -> None:
    # What lets a connection pipeline its publishes: started in order, applied in order.
    b, _ = backends
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(b.broker.publish(ROOM, i, info=None, idempotency_key=None, options=OPTIONS))
        for i in range(300)
    ]
    results = await asyncio.gather(*tasks)
    assert [r.offset for r in results] == list(range(1, 301))
    stored = await b.history.read(ROOM, since=None, limit=300, options=OPTIONS)
    assert [(p.offset, p.value) for p in stored.publications] == [(o, o - 1) for o in range(296, 301)]


async def test_rooms_are_independent(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    await b.broker.publish(Room("a"), 1, info=None, idempotency_key=None, options=OPTIONS)
    other = await b.broker.publish(Room("b"), 1, info=None, idempotency_key=None, options=OPTIONS)
    assert other.offset == 1


async def test_subscribed_rooms_receive_publications_in_order_and_unsubscribed_do_not(
    backends: tuple[Backends, Recorder],
) -> None:
    b, rec = backends
    await b.broker.subscribe(ROOM)
    for i in range(3):
        await b.broker.publish(ROOM, i, info={"user": "u", "client": "c"}, idempotency_key=None, options=OPTIONS)
    await b.broker.publish(Room("elsewhere"), "x", info=None, idempotency_key=None, options=OPTIONS)
    await until(lambda: len(rec.pubs) == 3, what="3 publications")
    assert [(r, p.offset, p.value) for r, _, p in rec.pubs] == [(ROOM, 1, 0), (ROOM, 2, 1), (ROOM, 3, 2)]
    assert rec.pubs[0][2].info == {"user": "u", "client": "c"}
    await b.broker.unsubscribe(ROOM)
    await b.broker.publish(ROOM, "late", info=None, idempotency_key=None, options=OPTIONS)
    assert len(await delivered_so_far(b, rec)) == 3


#: Data and info that a relay must pass on exactly: integers beyond 64 bits (which a decoder rounds), text
#: beyond ASCII and a lone surrogate escape (byte and character lengths differ), and strings that look like
#: the message's own members.
AWKWARD: list[tuple[object, JSONObject | None]] = [
    ({"n": 10**30, "neg": -(2**70), "f": 0.1}, None),
    (["é€😀", "\ud800", '","d":{"e":"x"}'], {"user": "ü", "client": 'c","d":1,"tp":"0'}),
    ("", {"user": "u", "client": "c", "info": {"il": 99, "dl": -1}}),
    ({"deep": [[[[{"x": None}]]]], "t": True}, {"user": "u", "client": "c"}),
]


async def test_awkward_data_and_info_reach_subscribers_as_the_push_they_were_published_as(
    backends: tuple[Backends, Recorder],
) -> None:
    b, rec = backends
    await b.broker.subscribe(ROOM)
    for data, info in AWKWARD:
        await b.broker.publish(ROOM, data, info=info, idempotency_key=None, options=OPTIONS)
    await until(lambda: len(rec.pubs) == len(AWKWARD), what="every publication")
    for (data, info), (_, _, pub) in zip(AWKWARD, rec.pubs, strict=True):
        expected = Publication(pub.offset, data, pub.ts, info)
        # The same push to a client (the encoder may escape differently: a lone surrogate makes it escape all).
        assert protocol.loads(protocol.pub_push(ROOM, pub)) == protocol.loads(protocol.pub_push(ROOM, expected))
        assert (pub.value, pub.info) == (data, info)
        # Through Redis the data is relayed as it came, never decoded on the way (the fast path was taken).
        assert isinstance(pub.data, Encoded) == isinstance(b.broker, RedisEngine)
    stored = await b.history.read(ROOM, since=0, limit=10, options=OPTIONS)
    assert [(p.value, p.info) for p in stored.publications] == AWKWARD[-OPTIONS.history_size :]


async def test_idempotency_key_returns_the_first_result_and_publishes_nothing(
    backends: tuple[Backends, Recorder],
) -> None:
    b, rec = backends
    await b.broker.subscribe(ROOM)
    first = await b.broker.publish(ROOM, "x", info=None, idempotency_key="k", options=OPTIONS)
    again = await b.broker.publish(ROOM, "x", info=None, idempotency_key="k", options=OPTIONS)
    assert (again.epoch, again.offset, again.duplicate) == (first.epoch, first.offset, True)
    assert len(await delivered_so_far(b, rec)) == 1
    history = await b.history.read(ROOM, since=None, limit=10, options=OPTIONS)
    assert len(history.publications) == 1


async def test_idempotency_keys_expire_after_the_window(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    short = StreamOptions(history_size=5, history_ttl=60, idempotency_window=0.2, meta_ttl=600)
    await b.broker.publish(ROOM, "x", info=None, idempotency_key="k", options=short)
    await asyncio.sleep(0.3)  # the subject is time passing: the key's 0.2 s window ends
    again = await b.broker.publish(ROOM, "x", info=None, idempotency_key="k", options=short)
    assert again.offset == 2 and not again.duplicate


async def test_history_keeps_the_newest_history_size_publications(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    for i in range(8):
        await b.broker.publish(ROOM, i, info=None, idempotency_key=None, options=OPTIONS)
    everything = await b.history.read(ROOM, since=0, limit=100, options=OPTIONS)
    assert [p.offset for p in everything.publications] == [4, 5, 6, 7, 8]
    assert everything.offset == 8
    newest = await b.history.read(ROOM, since=None, limit=2, options=OPTIONS)
    assert [p.offset for p in newest.publications] == [7, 8]
    after = await b.history.read(ROOM, since=6, limit=1, options=OPTIONS)
    assert [p.offset for p in after.publications] == [7]
    none = await b.history.read(ROOM, since=None, limit=0, options=OPTIONS)
    assert none.publications == [] and none.offset == 8


async def test_history_of_an_unused_room_has_an_epoch_and_offset_zero(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    found = await b.history.read(Room("fresh"), since=None, limit=10, options=OPTIONS)
    assert found.epoch and found.offset == 0 and found.publications == []
    again = await b.history.read(Room("fresh"), since=None, limit=10, options=OPTIONS)
    assert again.epoch == found.epoch


async def test_history_drops_publications_older_than_history_ttl(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    short = StreamOptions(history_size=5, history_ttl=0.2, idempotency_window=60, meta_ttl=600)
    await b.broker.publish(ROOM, 1, info=None, idempotency_key=None, options=short)
    await asyncio.sleep(0.3)  # the subject is time passing: the first publication outlives history_ttl
    await b.broker.publish(ROOM, 2, info=None, idempotency_key=None, options=short)
    found = await b.history.read(ROOM, since=0, limit=10, options=short)
    assert [p.offset for p in found.publications] == [2]
    assert found.offset == 2


async def test_history_size_zero_keeps_offsets_but_no_publications(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    none = StreamOptions(history_size=0, history_ttl=60, idempotency_window=60, meta_ttl=600)
    await b.broker.publish(ROOM, 1, info=None, idempotency_key=None, options=none)
    found = await b.history.read(ROOM, since=0, limit=10, options=none)
    assert found.offset == 1 and found.publications == []


async def test_join_and_leave_events_reach_subscribed_nodes(backends: tuple[Backends, Recorder]) -> None:
    b, rec = backends
    await b.broker.publish_join(ROOM, {"user": "u", "client": "c"})  # not subscribed: dropped
    await b.broker.subscribe(ROOM)
    await b.broker.publish_join(ROOM, {"user": "u", "client": "c"})
    await b.broker.publish_leave(ROOM, {"user": "u", "client": "c"})
    await until(lambda: len(rec.joins) == 1 and len(rec.leaves) == 1, what="the join and the leave")
    assert rec.joins == [(ROOM, {"user": "u", "client": "c"})]


async def test_presence_counts_connections_and_distinct_users(backends: tuple[Backends, Recorder]) -> None:
    b, _ = backends
    p = b.presence
    await p.add(ROOM, ClientId("c1"), {"user": "alice"})
    await p.add(ROOM, ClientId("c2"), {"user": "alice", "info": {"x": 1}})
    await p.add(ROOM, ClientId("c3"), {"user": "bob"})
    await p.add(ROOM, ClientId("c3"), {"user": "bob"})  # refresh, not a second entry
    stats = await p.stats(ROOM)
    assert (stats.clients, stats.users) == (3, 2)
    assert (await p.get(ROOM))[ClientId("c2")] == {"user": "alice", "info": {"x": 1}}
    await p.remove(ROOM, ClientId("c1"))
    await p.remove(ROOM, ClientId("missing"))
    stats = await p.stats(ROOM)
    assert (stats.clients, stats.users) == (2, 2)
    for c in ("c2", "c3"):
        await p.remove(ROOM, ClientId(c))
    assert await p.get(ROOM) == {}
    assert (await p.stats(Room("empty"))).clients == 0


@pytest.mark.redis
async def test_a_presence_entry_whose_write_failed_is_not_kept_to_be_refreshed_into_redis_later() -> None:
    # Nothing listens on this port: the write fails, the join is refused, and the node must not keep re-adding
    # the entry once Redis is back (a member everyone would see and no one could remove).
    settings = load_settings(
        env={}, overrides={"redis_url": f"redis://127.0.0.1:{free_port()}", "redis_timeout": 0.5, "presence_ttl": 3}
    )
    made = create_backends(settings)
    presence = made.presence
    assert isinstance(presence, RedisPresence)
    try:
        with pytest.raises(BackendUnavailable):
            await presence.add(Room("chat:ghost"), ClientId("c1"), {"user": "u1"})
        assert presence.local_entries() == 0
    finally:
        await made.aclose()


@pytest.fixture
async def redis_presence(redis_url: str) -> AsyncIterator[tuple[RedisPresence, str]]:
    """A RedisPresence of node "n1" under its own prefix, its refresher not started (tests call refresh)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings(env={}, overrides={"redis_url": redis_url, "redis_prefix": prefix, "node_name": "n1"})
    made = create_backends(settings)
    assert isinstance(made.presence, RedisPresence)
    yield made.presence, prefix
    await made.aclose()


@pytest.mark.redis
async def test_a_refresh_moves_every_local_entrys_expiry_a_presence_ttl_ahead(
    redis_presence: tuple[RedisPresence, str], redis_url: str
) -> None:
    import redis.asyncio as aioredis

    presence, prefix = redis_presence
    rooms = [Room(f"chat:r{i}") for i in range(3)]
    for i, room in enumerate(rooms):
        for c in range(i + 1):
            await presence.add(room, ClientId(f"c{i}-{c}"), {"user": f"u{c}"})
    raw = aioredis.Redis.from_url(redis_url)
    try:
        before = int(time.time() * 1000)
        assert await presence.refresh() == 0  # nothing was lost
        ttl_ms = int(load_settings(env={}, overrides={}).presence_ttl * 1000)
        for i, room in enumerate(rooms):
            expiry = f"{prefix}:{{{room}}}:presence:exp"
            scores = [await raw.zscore(expiry, f"c{i}-{c}") for c in range(i + 1)]
            assert all(score is not None and score >= before + ttl_ms for score in scores)
            assert await raw.zcard(expiry) == i + 1
            assert len(await presence.get(room)) == i + 1
    finally:
        await raw.aclose()


@pytest.mark.redis
async def test_presence_entries_redis_lost_are_written_again_by_the_next_refresh(
    redis_presence: tuple[RedisPresence, str], redis_url: str
) -> None:
    # Redis restarted empty or failed over to a replica without them: the entries, and this node's index of
    # them (which a purge after its death needs), come back within one refresh.
    import redis.asyncio as aioredis

    presence, prefix = redis_presence
    kept, lost = Room("chat:kept"), Room("chat:lost")
    await presence.add(kept, ClientId("k1"), {"user": "u1"})
    await presence.add(lost, ClientId("l1"), {"user": "u1"})
    await presence.add(lost, ClientId("l2"), {"user": "u2", "info": {"x": 1}})
    await presence.add(lost, ClientId("l3"), {"user": "u3"})
    await presence.remove(lost, ClientId("l3"))
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.delete(
            f"{prefix}:{{{lost}}}:presence", f"{prefix}:{{{lost}}}:presence:exp", f"{prefix}:presence-of:n1"
        )
        assert await presence.get(lost) == {}
        assert await presence.refresh() == 1
        assert await presence.get(lost) == {
            ClientId("l1"): {"user": "u1"},
            ClientId("l2"): {"user": "u2", "info": {"x": 1}},
        }
        assert await presence.get(kept) == {ClientId("k1"): {"user": "u1"}}
        assert await presence.refresh() == 0
        # The index lists the entries written again: a purge of this node (its death) removes them.
        assert await presence.purge("other-node") == 0
        assert sorted(protocol.loads(m) for m in await raw.smembers(f"{prefix}:presence-of:n1")) == [
            ["chat:kept", "k1"],
            ["chat:lost", "l1"],
            ["chat:lost", "l2"],
        ]
        assert await presence.purge("n1") == 0  # its own live entries stay (a restarted node purges only the old)
    finally:
        await raw.aclose()


@pytest.mark.redis
async def test_a_publication_in_the_layout_of_older_nodes_is_still_delivered(redis_url: str) -> None:
    # In a rolling upgrade, nodes still on the previous release publish messages without "il"/"dl":
    # this node reads those whole, in order with its own.
    import redis.asyncio as aioredis

    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings(env={}, overrides={"redis_url": redis_url, "redis_prefix": prefix})
    made, rec = create_backends(settings), Recorder()
    await made.broker.start(rec)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await until(lambda: made.broker.available, what="the broker to be available")
        await made.broker.subscribe(ROOM)
        first = await made.broker.publish(ROOM, "new", info=None, idempotency_key=None, options=OPTIONS)
        old = f'{{"e":"{first.epoch}","o":2,"t":1700000000000,"i":{{"user":"u","client":"c"}},"d":{{"n":{10**30}}}}}'
        await raw.publish(f"{prefix}:{{{ROOM}}}:ch", old)
        # Garbage in the new layout (data that is no UTF-8, info that is no JSON) is dropped, and the
        # subscriber connection goes on to deliver what follows.
        head = f'{{"e":"{first.epoch}","o":3,"t":1700000000000,"il":4,"dl":2,"i":'.encode()
        await raw.publish(f"{prefix}:{{{ROOM}}}:ch", head + b'null,"d":"\xff}')
        await raw.publish(f"{prefix}:{{{ROOM}}}:ch", head + b'nul!,"d":"x}')
        delivered = await delivered_so_far(made, rec)
        assert [(p.offset, p.value, p.info) for _, _, p in delivered] == [
            (1, "new", None),
            (2, {"n": 10**30}, {"user": "u", "client": "c"}),
        ]
    finally:
        await raw.aclose()
        await made.aclose()
