"""Pure helpers of the serving benchmark (no services, no matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.publish import default_config
from freshrank.bench.serving import config_variant, open_loop_schedule, summarise


def test_summary() -> None:
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
