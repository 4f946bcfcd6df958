"""The Redis Cluster harness (tests/support/redis_cluster.py) really does what it says: slots,
failover to a replica, live slot migration with ASK/MOVED, passwords, and no process left behind.

One 3-master, 3-replica cluster serves the module; each test picks its keys by hash tag and asks
the cluster who owns them, so the tests do not depend on each other's order or topology changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import AskError, AuthenticationError, MovedError
from redis.retry import Retry

from tests.support.redis_cluster import SLOTS, RedisClusterGroup

pytestmark = [pytest.mark.redis]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stop_and_check(group: RedisClusterGroup) -> None:
    pids = group.pids()
    group.stop()
    group.stop()  # a second stop is a no-op, not an error
    assert pids, "the group started no process"
    assert [pid for pid in pids if not _gone(pid)] == []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path_factory.mktemp("cluster"))
    try:
        yield group.start()
    finally:
        _stop_and_check(group)


def _key_in_slot_of(group: RedisClusterGroup, port: int, exclude: int) -> str:
    """A key whose slot the master on `port` owns, other than slot `exclude`."""
    for i in range(10_000):
        key = f"probe:{i}"
        slot = group.key_slot(key)
        if slot != exclude and group.master_of_slot(slot) == port:
            return key
    raise AssertionError(f"no key found for {port}")


def test_key_slot_agrees_with_cluster_keyslot(cluster: RedisClusterGroup) -> None:
    port = cluster.ports()[0]
    # Untagged, tagged, and the edge cases of the tag rule: empty `{}` and a lone `}` hash the
    # whole key; only the first `{...}` counts.
    keys = ["a", "room:1", "{room}:chan", "x{room}y", "{}", "a{}{b}", "}{x}", "{a}{b}", "{{a}}", "ünï"]
    assert [cluster.key_slot(k) for k in keys] == [cluster.command(port, "CLUSTER", "KEYSLOT", k) for k in keys]
    assert cluster.key_slot("{room}:a") == cluster.key_slot("{room}:b")


def test_keys_written_through_the_cluster_client_land_on_the_master_owning_their_slot(
    cluster: RedisClusterGroup,
) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert sum(last - first + 1 for m in masters for first, last in m.slots) == SLOTS
    assert len(cluster.seeds()) == 6 and cluster.url().startswith("redis://127.0.0.1:")

    keys = {f"land:{i}": str(i) for i in range(30)}
    with cluster.cluster_client() as client:
        for key, value in keys.items():
            client.set(key, value)
    owners = {cluster.master_of_slot(cluster.key_slot(key)) for key in keys}
    assert owners == {m.port for m in masters}, "30 keys should spread over every master"
    for key, value in keys.items():
        # A raw client follows no redirection: a key on the wrong master would raise MovedError.
        with cluster.client(cluster.master_of_slot(cluster.key_slot(key))) as raw:
            assert raw.get(key) == value


def test_a_killed_masters_slot_is_served_by_its_promoted_replica_with_its_keys(cluster: RedisClusterGroup) -> None:
    slot = cluster.key_slot("{failover}")
    old_master = cluster.master_of_slot(slot)
    replicas = cluster.replicas_of(old_master)
    keys = {f"{{failover}}:{i}": str(i) for i in range(20)}
    with cluster.client(old_master) as raw:
        pipe = raw.pipeline(transaction=False)  # one connection: WAIT covers these writes
        for key, value in keys.items():
            pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 1000)
        assert pipe.execute()[-1] == 1, "the write did not reach the replica"

    old, new = cluster.kill_master(slot)
    try:
        assert old == old_master
        assert new in replicas
        assert cluster.master_of_slot(slot) == new
        assert cluster.command(new, "ROLE")[0] == "master"
        with cluster.client(new) as raw:
            assert raw.mget(list(keys)) == list(keys.values())
        with cluster.cluster_client() as client:
            assert client.get("{failover}:0") == "0"
    finally:
        cluster.restart(old)  # later tests want a replica behind every master again

    role = cluster.command(old, "ROLE")
    assert (role[0], role[2]) == ("slave", new)
    assert cluster.replicas_of(new) == [old]


def test_a_migrated_slot_moves_with_its_keys_and_the_source_answers_ask_then_moved(
    cluster: RedisClusterGroup,
) -> None:
    slot = cluster.key_slot("{move}")
    source = cluster.master_of_slot(slot)
    target = next(m.port for m in cluster.masters() if m.port != source)
    keys = {f"{{move}}:{i}": str(i) for i in range(250)}
    with cluster.client(source) as raw:
        raw.mset(keys)
    # A key of another slot on the source must stay where it is.
    bystander = _key_in_slot_of(cluster, source, exclude=slot)
    cluster.command(source, "SET", bystander, "stays")

    seen: list[tuple[int, int]] = []

    def mid_migration() -> None:
        asked = served = 0
        with cluster.client(source) as raw:
            for key, value in keys.items():
                try:
                    assert raw.get(key) == value
                    served += 1
                except AskError as exc:
                    # MovedError subclasses AskError: the slot must still be the source's.
                    assert not isinstance(exc, MovedError)
                    assert (exc.slot_id, exc.port) == (slot, target)
                    asked += 1
        seen.append((asked, served))
        if len(seen) == 1:
            # A new key of the half-moved slot: the source sends it on (ASK) to the target.
            with cluster.cluster_client() as client:
                client.set("{move}:new", "during")

    cluster.migrate_slot(slot, target, batch=100, between_batches=mid_migration)

    assert seen == [(100, 150), (200, 50), (250, 0)]
    assert cluster.master_of_slot(slot) == target
    with cluster.client(source) as raw, pytest.raises(MovedError) as moved:
        raw.get("{move}:0")
    assert (moved.value.slot_id, moved.value.port) == (slot, target)
    with cluster.client(target) as raw:
        assert raw.mget(list(keys)) == list(keys.values())
        assert raw.get("{move}:new") == "during"
    assert cluster.command(source, "GET", bystander) == "stays"
    with cluster.cluster_client() as client:
        assert client.get("{move}:249") == "249"


def test_with_a_password_clients_without_it_are_refused_and_slots_still_migrate(tmp_path: Path) -> None:
    group = RedisClusterGroup(tmp_path / "cluster", replicas_per_master=0, password="p@ss word")
    try:
        group.start()
        port = group.ports()[0]
        # No retries: AuthenticationError is a ConnectionError, which redis-py retries with backoff.
        # RESP2: with RESP3 (redis-py's default) the refusal comes earlier, from HELLO, not NOAUTH.
        for protocol, refusal in [(2, "Authentication required"), (3, "HELLO must be called with the client")]:
            with (
                redis.Redis(port=port, protocol=protocol, retry=Retry(NoBackoff(), 0)) as anonymous,
                pytest.raises(AuthenticationError, match=refusal),
            ):
                anonymous.get("anything")
        with redis.Redis.from_url(group.url()) as authenticated:
            assert authenticated.ping() is True

        slot = group.key_slot("{auth}")
        with group.cluster_client() as client:
            client.set("{auth}:k", "v")
        target = next(m.port for m in group.masters() if m.port != group.master_of_slot(slot))
        group.migrate_slot(slot, target)  # MIGRATE must authenticate to the target
        with group.client(target) as raw:
            assert raw.get("{auth}:k") == "v"
    finally:
        _stop_and_check(group)
