"""Pure helpers of the churn benchmark: when Triton's process tree counts as flat."""

from __future__ import annotations

import os
from typing import Any

import pytest

from freshrank.bench.common import request_columns
from freshrank.bench.swaps import FD_SLACK, flatness, process_tree


def sample(swaps: int, rss: float, stubs: int = 1, fds: int = 60, threads: int = 40) -> dict[str, Any]:
    return {"swaps": swaps, "rss_mb": rss, "stubs": stubs, "fds": fds, "threads": threads}


def test_noise_around_a_level_is_flat_a_steady_climb_is_not() -> None:
    level = [sample(n, 300 + (3 if n % 50 else -3)) for n in range(0, 501, 25)]
    growth = flatness(level)
    assert growth["flat"] and growth["from_swap"] == 100 and growth["to_swap"] == 500
    assert abs(growth["rss_mb_per_100_swaps"]) < 1
    # 0.1 MB a swap: 10 MB per 100, twice the target.
    climbing = [sample(n, 300 + 0.1 * n) for n in range(0, 501, 25)]
    growth = flatness(climbing)
    assert not growth["flat"] and growth["rss_mb_per_100_swaps"] == pytest.approx(10.0)


def test_a_stub_or_descriptors_left_behind_are_not_flat() -> None:
    rows = [sample(n, 300) for n in range(0, 501, 25)]
    assert flatness(rows)["flat"]
    rows[-1] = sample(500, 300, stubs=2)
    assert not flatness(rows)["flat"]
    rows[-1] = sample(500, 300, fds=60 + FD_SLACK + 1)
    assert not flatness(rows)["flat"]
    # The warm-up is not judged: a stub starting up before swap 100 is fine.
    rows = [sample(0, 250, stubs=0, fds=20), *[sample(n, 300) for n in range(25, 501, 25)]]
    assert flatness(rows)["flat"]


def test_too_few_samples_after_the_warm_up_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 samples"):
        flatness([sample(0, 1), sample(100, 1), sample(200, 1)], warmup=100)


def test_a_process_tree_of_this_process() -> None:
    tree = process_tree(os.getpid())
    assert tree["stubs"] == 0 and tree["fds"] > 0 and tree["threads"] >= 1
    assert tree["rss_mb"] == tree["server_rss_mb"] > 0


def test_requests_follow_the_serving_contract() -> None:
    columns = request_columns(7)
    assert {len(v) for v in columns.values()} == {7}
    assert columns["price"].dtype.name == "float32"
