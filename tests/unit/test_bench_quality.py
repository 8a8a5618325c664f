"""The pure parts of the quality and replay benchmarks: cuts, schedules, windowed metrics."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.quality import (
    boundary_index,
    region_metrics,
    retrain_times,
    river_features,
    segments,
    target_report,
    vw_line,
    windowed_metrics,
)
from benchmarks.replay import periods
from updater.joiner import Sample


def test_boundary_index_is_first_impression_at_or_after_the_time() -> None:
    # Known order: a quick positive (ts 25) can come before a negative with an earlier impression.
    ts = np.array([0, 10, 25, 20, 30])
    assert boundary_index(ts, 20) == 2
    assert boundary_index(ts, 0) == 0
    assert boundary_index(ts, 31) == 5
    # Everything before the cut has an earlier impression; everything at or after `at` is past it.
    cut = boundary_index(ts, 20)
    assert (ts[:cut] < 20).all() and (np.flatnonzero(ts >= 20) >= cut).all()


def test_retrain_times_every_period_strictly_before_the_end() -> None:
    assert retrain_times(1_000, 7_000, 2_000) == [3_000, 5_000]
    assert retrain_times(0, 6_001, 2_000) == [2_000, 4_000, 6_000]
    assert retrain_times(0, 1_000, 2_000) == []
    with pytest.raises(ValueError, match="positive retrain period"):
        retrain_times(0, 10, 0)


def test_segments_cover_every_sample_once_in_order() -> None:
    ts = np.array([0, 5, 12, 11, 20, 31, 29])
    spans = segments(ts, [10, 20, 30])
    assert spans == [(0, 2), (2, 4), (4, 5), (5, 7)]
    covered = [i for begin, end in spans for i in range(begin, end)]
    assert covered == list(range(len(ts)))
    assert segments(ts, []) == [(0, len(ts))]


def test_segments_keep_empty_periods() -> None:
    ts = np.array([0, 1, 50])
    assert segments(ts, [10, 20]) == [(0, 2), (2, 2), (2, 3)]


def test_windowed_metrics_by_impression_time() -> None:
    ts = np.array([0, 500, 900, 1_200, 1_800, 3_100])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, np.nan])
    labels = np.array([1, 0, 0, 1, 0, 1], dtype=float)
    rows = windowed_metrics(ts, scores, labels, origin_ms=0, window_ms=1_000)
    assert [r["start_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert rows[0]["n"] == 3 and rows[0]["auc"] == 1.0
    assert rows[1]["n"] == 2 and rows[1]["auc"] == 0.0
    # An empty window and a window whose only sample was not scored: no metrics, not zero.
    assert rows[2] == {"start_s": 2.0, "n": 0, "positives": 0, "auc": None, "logloss": None}
    assert rows[3]["n"] == 0
    with pytest.raises(ValueError, match="positive metric window"):
        windowed_metrics(ts, scores, labels, 0, 0)


def test_region_metrics_one_class_has_no_auc() -> None:
    scores = np.array([0.2, 0.4])
    out = region_metrics(scores, np.array([0.0, 0.0]), np.array([True, True]))
    assert out["n"] == 2 and out["auc"] is None and out["logloss"] == pytest.approx(0.367, abs=1e-3)


def test_target_report_thresholds() -> None:
    after = {
        "static": {"auc": 0.60},
        "retrain": {"auc": 0.66},
        "freshrank": {"auc": 0.66},
        "vw": {"auc": 0.70},
        "river": {"auc": None},
    }
    report = target_report(after)
    assert report["freshrank_beats_static_by_0.05_auc"]["met"] is True
    assert report["freshrank_beats_static_by_0.05_auc"]["delta"] == pytest.approx(0.06)
    assert report["freshrank_at_least_retrain"]["met"] is True  # a tie is "at least as good"
    assert report["freshrank_at_least_vw"]["met"] is False
    assert report["freshrank_at_least_river"] == {
        "met": False,
        "freshrank_auc": 0.66,
        "river_auc": None,
        "delta": None,
    }


def _sample(**kw: object) -> Sample:
    base: dict[str, object] = {
        "user_id": "u 1",
        "query": "red|shoe x:y",
        "item_id": "i:7",
        "category": "shoes",
        "brand": "",
        "price": 19.0,
        "label": 1,
        "impression_ts_ms": 0,
        "action_ts_ms": 5,
    }
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def test_vw_line_escapes_what_vw_would_split() -> None:
    line = vw_line(_sample())
    assert line.startswith("1 |u u_1 |q red_shoe x_y |i i=i_7 c=shoes b=_ |p lp:")
    assert vw_line(_sample(label=0)).startswith("-1 ")


def test_river_features_are_one_hot_plus_price() -> None:
    x = river_features(_sample(query="red shoe", price=-3.0))
    assert x["u=u 1"] == 1.0 and x["q=red"] == 1.0 and x["q=shoe"] == 1.0 and x["i=i:7"] == 1.0
    assert x["log_price"] == 0.0


def test_replay_periods_scale_with_the_stream() -> None:
    assert periods(7 * 3_600_000) == (3_600_000, 7 * 3_600_000 // 24)
    assert periods(100) == (1_000, 1_000)
