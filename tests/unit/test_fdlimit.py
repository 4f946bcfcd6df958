"""The connections a node can hold within its open-file limit (pure arithmetic)."""

from __future__ import annotations

from hubbub import fdlimit


def test_limits_that_fit_are_kept_as_configured() -> None:
    found = fdlimit.budget(1_048_576, 100_000, 2048)
    assert not found.short
    assert (found.max_connections, found.max_pending_handshakes) == (100_000, 2048)
    assert found.needed == 100_000 + 2048 + fdlimit.RESERVE


def test_a_short_limit_keeps_a_quarter_for_pending_handshakes_and_the_rest_less_the_reserve_for_connections() -> None:
    found = fdlimit.budget(1024, 20_000, 2048)
    assert found.short
    assert found.max_pending_handshakes == 256
    assert found.max_connections == 1024 - 256 - fdlimit.RESERVE
    # Fewer pending handshakes configured than a quarter: those are kept.
    assert fdlimit.budget(1024, 20_000, 10).max_pending_handshakes == 10
    assert fdlimit.budget(1024, 20_000, 10).max_connections == 1024 - 10 - fdlimit.RESERVE


def test_even_a_tiny_limit_leaves_one_connection_and_one_handshake() -> None:
    found = fdlimit.budget(16, 20_000, 2048)
    assert (found.max_connections, found.max_pending_handshakes) == (1, 4)
    assert fdlimit.budget(2, 20_000, 2048).max_pending_handshakes == 1


def test_the_warning_names_the_limit_the_need_and_what_the_node_will_hold() -> None:
    text = fdlimit.describe(fdlimit.budget(1024, 20_000, 2048))
    assert "open-file limit (1024)" in text
    assert f"({20_000 + 2048 + fdlimit.RESERVE})" in text
    assert "at most 704 connections" in text and "1013" in text
