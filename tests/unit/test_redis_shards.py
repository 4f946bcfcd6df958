"""The pure part of hubbub.backends.redis_shards: key slots, CLUSTER SLOTS replies, redirections.

tests/process/scaleout/test_redis_cluster.py checks the same against a real Redis Cluster
(CLUSTER KEYSLOT, real MOVED and ASK replies).
"""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from hubbub.backends.redis_shards import SLOTS, SlotMap, crc16, key_slot, parse_slots, redirection, retryable


def test_crc16_is_the_xmodem_checksum_redis_cluster_specifies() -> None:
    # The check value of CRC-16/XMODEM, and the example of the Redis Cluster specification.
    assert crc16(b"123456789") == 0x31C3


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("foo", 12182),  # from the Redis Cluster specification's examples
        ("", 0),
        ("{user1000}.following", key_slot("user1000")),
        ("{user1000}.followers", key_slot("user1000")),
        ("foo{}{bar}", key_slot("foo{}{bar}")),  # an empty first tag: the whole key is hashed
        ("foo{{bar}}zap", key_slot("{bar")),  # the tag is what lies between the first { and the next }
        ("foo{bar}{zap}", key_slot("bar")),  # only the first tag counts
    ],
)
def test_a_keys_slot_follows_the_hash_tag_rules(key: str, slot: int) -> None:
    assert key_slot(key) == slot and 0 <= slot < SLOTS


def test_every_key_of_a_room_is_in_the_rooms_slot() -> None:
    room = "chat:lobby"
    keys = [f"hubbub:{{{room}}}:{suffix}" for suffix in ("meta", "stream", "idem:k1", "ch", "presence", "presence:exp")]
    assert {key_slot(key) for key in keys} == {key_slot(room)}
    assert key_slot(room.encode()) == key_slot(room)


def test_cluster_slots_reply_gives_each_range_its_master_and_an_empty_host_is_the_node_asked() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 6379, b"id1"], [b"10.0.0.4", 6379, b"id4"]],
        [5461, 10922, [b"", 6380, b"id2"]],
        [10923, 16383, ["?", 6381, "id3"]],
    ]
    ranges = parse_slots(reply, ("redis-0", 7000))
    assert ranges == [
        (0, 5460, ("10.0.0.1", 6379)),
        (5461, 10922, ("redis-0", 6380)),
        (10923, 16383, ("redis-0", 6381)),
    ]
    slots = SlotMap(ranges)
    assert slots.owner(0) == slots.owner(5460) == ("10.0.0.1", 6379)
    assert slots.owner(5461) == ("redis-0", 6380) and slots.owner(16383) == ("redis-0", 6381)
    assert slots.covered() and len(slots.masters()) == 3


def test_a_slot_map_with_a_hole_is_not_covered_and_a_moved_slot_changes_owner_alone() -> None:
    slots = SlotMap([(0, 100, ("a", 1)), (200, SLOTS - 1, ("b", 2))])
    assert not slots.covered() and slots.owner(150) is None
    slots.assign(150, ("c", 3))
    assert slots.owner(150) == ("c", 3) and slots.owner(149) is None and slots.owner(151) is None


@pytest.mark.parametrize(
    ("error", "parsed"),
    [
        ("MOVED 3999 127.0.0.1:6381", ("MOVED", 3999, ("127.0.0.1", 6381))),
        ("ASK 3999 10.0.0.2:7000", ("ASK", 3999, ("10.0.0.2", 7000))),
        ("MOVED 1 [::1]:7000", ("MOVED", 1, ("::1", 7000))),
        ("ERR unknown command", None),
        ("MOVED nonsense", None),
        ("TRYAGAIN Multiple keys request during rehashing of slot", None),
    ],
)
def test_redirections_are_read_from_the_error_and_other_errors_are_not_redirections(
    error: str, parsed: tuple[str, int, tuple[str, int]] | None
) -> None:
    assert redirection(ResponseError(error)) == parsed


def test_only_tryagain_and_clusterdown_are_retried_where_they_were_sent() -> None:
    assert retryable(ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"))
    assert retryable(ResponseError("CLUSTERDOWN The cluster is down"))
    assert not retryable(ResponseError("MOVED 1 a:1")) and not retryable(ResponseError("NOSCRIPT"))
