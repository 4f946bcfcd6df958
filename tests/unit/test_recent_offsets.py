"""What a subscriber remembers of the offsets it delivered, to tell a duplicate from a reused offset."""

from __future__ import annotations

from hubbub.backends.redis_broker import RECENT, forget_recent, remember_recent

MINUTE = 60_000


def test_offsets_delivered_within_the_window_are_remembered_with_their_timestamps() -> None:
    recent: dict[int, int] = {}
    for offset in range(1, 11):
        remember_recent(recent, offset, 1_000_000 + offset * 1000, MINUTE)
    assert recent == {offset: 1_000_000 + offset * 1000 for offset in range(1, 11)}


def test_offsets_older_than_the_window_before_the_newest_are_forgotten() -> None:
    recent: dict[int, int] = {}
    remember_recent(recent, 1, 0, MINUTE)
    remember_recent(recent, 2, 30_000, MINUTE)
    remember_recent(recent, 3, 60_000, MINUTE)  # offset 1 is exactly a minute old: kept
    assert list(recent) == [1, 2, 3]
    remember_recent(recent, 4, 90_001, MINUTE)  # 1 and 2 are now more than a minute older than 4
    assert list(recent) == [3, 4]


def test_a_busy_room_keeps_at_most_recent_entries() -> None:
    recent: dict[int, int] = {}
    for offset in range(1, RECENT + 51):
        remember_recent(recent, offset, offset, MINUTE)
    assert len(recent) == RECENT
    assert min(recent) == 51


def test_a_quiet_room_forgets_everything_older_than_the_horizon() -> None:
    recent = {5: 1000, 6: 2000, 7: 3000}
    forget_recent(recent, 2500)
    assert recent == {7: 3000}
    forget_recent(recent, 10_000)
    assert recent == {}
