"""Pure helpers of the snapshot benchmark (no services, no matplotlib)."""

from __future__ import annotations

import pytest

from freshrank.bench.snapshot import fit_line


def test_fit_line_recovers_intercept_and_slope() -> None:
    xs = [10_000, 100_000, 1_000_000, 3_000_000]
    a, b = fit_line(xs, [0.5 + 2e-6 * x for x in xs])
    assert a == pytest.approx(0.5) and b == pytest.approx(2e-6)


def test_fit_line_needs_two_distinct_points() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([5, 5], [1, 2])
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([5], [1])
