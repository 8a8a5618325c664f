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


def test_config_variant_changes_instances_and_the_batchers_delay() -> None:
    base = default_config()
    assert "max_batch_size: 4096" in base and "dynamic_batching { }" in base
    two = config_variant(base, instances=2)
    assert "count: 2" in two and "dynamic_batching { }" in two
    delayed = config_variant(base, queue_delay_us=500)
    assert "dynamic_batching { max_queue_delay_microseconds: 500 }" in delayed and "count: 1" in delayed
    assert delayed.count("dynamic_batching") == 1
    with pytest.raises(ValueError, match="instance_group"):
        config_variant('name: "x"')


def test_open_loop_schedule_is_evenly_spaced() -> None:
    times = open_loop_schedule(100.0, 2.0)
    assert len(times) == 200 and times[0] == 0.0
    assert np.allclose(np.diff(times), 0.01)
    with pytest.raises(ValueError, match="positive"):
        open_loop_schedule(0.0, 1.0)
