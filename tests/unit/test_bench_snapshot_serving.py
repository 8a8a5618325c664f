"""Pure helpers of the snapshot and serving benchmarks (no services, no matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import percentiles
from benchmarks.serving import config_variant, open_loop_schedule, summarise
from benchmarks.snapshot import fit_line
from exporter.publish import default_config


def test_fit_line_recovers_intercept_and_slope() -> None:
    xs = [10_000, 100_000, 1_000_000, 3_000_000]
    a, b = fit_line(xs, [0.5 + 2e-6 * x for x in xs])
    assert a == pytest.approx(0.5) and b == pytest.approx(2e-6)


def test_fit_line_needs_two_distinct_points() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([5, 5], [1, 2])
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([5], [1])


def test_percentiles_and_summary() -> None:
    values = list(range(1, 101))
    assert percentiles(values, (50, 99)) == {"p50": 50.5, "p99": 99.01}
    assert percentiles([], (50,)) == {"p50": None}
    row = summarise([0.001, 0.002, 0.003, 0.004], errors=1, wall_s=2.0)
    assert row["requests"] == 4 and row["errors"] == 1 and row["rps"] == 2.0
    assert row["p50_ms"] == pytest.approx(2.5)
    assert summarise([], 0, 1.0)["p99_ms"] is None


def test_config_variant_changes_instances_and_adds_batcher() -> None:
    base = default_config()
    two = config_variant(base, instances=2)
    assert "count: 2" in two and "dynamic_batching" not in two
    batched = config_variant(base, queue_delay_us=500)
    assert "max_queue_delay_microseconds: 500" in batched and "count: 1" in batched
    with pytest.raises(ValueError, match="instance_group"):
        config_variant('name: "x"')


def test_open_loop_schedule_is_evenly_spaced() -> None:
    times = open_loop_schedule(100.0, 2.0)
    assert len(times) == 200 and times[0] == 0.0
    assert np.allclose(np.diff(times), 0.01)
    with pytest.raises(ValueError, match="positive"):
        open_loop_schedule(0.0, 1.0)
