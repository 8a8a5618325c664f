"""Freshness: each learned action measured once, when a version that learned it first answers."""

from __future__ import annotations

import pytest

from exporter.freshness import Freshness, percentile


def test_actions_wait_for_a_serving_version_and_are_measured_once() -> None:
    f = Freshness()
    f.learned([1_000, 2_000])
    taken = f.take()
    assert taken == [1_000, 2_000] and len(f) == 0
    f.learned([3_000])
    f.requeue(taken)  # that version was not served: back in front, in order
    assert f.take() == [1_000, 2_000, 3_000]
    fresh = f.served([1_000, 3_000], served_at=5.0)
    assert fresh == [4.0, 2.0]
    assert list(f.by_action) == [(1.0, 4.0), (3.0, 2.0)]
    assert f.percentile(50) == pytest.approx(3.0)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
    assert Freshness().percentile(95) is None
