"""The text benchmark's measures: which impressions are cold, and the per-request figures."""

from __future__ import annotations

import numpy as np

from freshrank.bench.text import cold_mask, per_request_cold, probe_summary
from rankcore.sample import Sample


def _s(item: str, label: int, ts: int, request: str = "r", query: str = "", title: str = "") -> Sample:
    return Sample("u", query, item, "c", "b", 1.0, label, ts, ts + 100 if label else 0, request, title)


def test_an_item_is_cold_until_one_of_its_clicks_is_known() -> None:
    samples = [_s("a", 0, 0), _s("a", 1, 1_000), _s("a", 0, 1_050), _s("a", 0, 5_000), _s("b", 0, 5_000)]
    known = np.array([10_000, 1_100, 11_050, 15_000, 15_000])  # the click is known at 1,100
    impressions = np.array([s.impression_ts_ms for s in samples])
    assert cold_mask(samples, known, impressions).tolist() == [True, True, True, False, True]


def test_per_request_cold_ranks_cold_matching_items_against_other_concepts() -> None:
    rows = [
        _s("new", 0, 0, query="sneakers", title="acme red running shoe"),  # cold, its concept
        _s("old", 0, 0, query="sneakers", title="acme red laptop"),  # another concept
        _s("old2", 0, 0, query="sneakers", title="acme red hiking boot"),  # another concept
    ]
    cold = np.array([True, False, False])
    best = per_request_cold(rows, np.array([0.9, 0.1, 0.2]), cold)
    assert best == {"requests": 1, "auc": 1.0, "mrr": 1.0}
    worst = per_request_cold(rows, np.array([0.1, 0.9, 0.5]), cold)
    assert worst["auc"] == 0.0 and worst["mrr"] == round(1 / 3, 4)
    assert per_request_cold(rows, np.array([0.1, 0.9, 0.5]), np.zeros(3, dtype=bool))["requests"] == 0


def test_probe_summary() -> None:
    assert probe_summary([1, 3, 4, 10]) == {"top3_rate": 0.5, "mean_rank": 4.5, "ranks": [1, 3, 4, 10]}
