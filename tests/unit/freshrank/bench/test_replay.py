"""The pure parts of the replay benchmark."""

from __future__ import annotations

from freshrank.bench.replay import periods


def test_replay_periods_scale_with_the_stream() -> None:
    assert periods(7 * 3_600_000) == (3_600_000, 7 * 3_600_000 // 24)
    assert periods(100) == (1_000, 1_000)
