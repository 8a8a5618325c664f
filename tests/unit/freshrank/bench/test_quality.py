"""The pure parts of the quality benchmark: cuts, schedules, windowed metrics."""

from __future__ import annotations

import numpy as np
import pytest

from freshrank.bench.quality import (
    compare,
    impression_schedule,
    known_at_ms,
    oracle_share,
    region_metrics,
    retrain_plan,
    retrain_times,
    river_features,
    run_oracle,
    run_popularity,
    target_report,
    vw_line,
    windowed_metrics,
)
from rankcore.sample import Sample


def test_retrain_times_every_period_strictly_before_the_end() -> None:
    assert retrain_times(1_000, 7_000, 2_000) == [3_000, 5_000]
    assert retrain_times(0, 6_001, 2_000) == [2_000, 4_000, 6_000]
    assert retrain_times(0, 1_000, 2_000) == []
    with pytest.raises(ValueError, match="positive retrain period"):
        retrain_times(0, 10, 0)


def _check_schedule(
    impression: np.ndarray, known: np.ndarray, batch_size: int, learn: np.ndarray | None = None
) -> list[tuple[str, list[int]]]:
    """Run the schedule and check its promises; return its steps as lists."""
    steps = [
        (step, rows.tolist()) for step, rows in impression_schedule(impression, known, batch_size, learn)
    ]
    learnable = set(range(len(impression))) if learn is None else set(np.flatnonzero(learn).tolist())
    scored: list[int] = []
    learned: list[int] = []
    for step, rows in steps:
        assert rows, "no empty steps"
        if step == "score":
            for r in rows:
                # Scored by a model that learned only samples known strictly before its impression.
                assert all(known[q] < impression[r] for q in learned)
            scored += rows
        else:
            assert step == "learn" and len(rows) <= batch_size
            assert set(rows) <= set(scored), "learned before it was scored"
            learned += rows
    assert sorted(scored) == list(range(len(impression))), "every sample scored exactly once"
    assert sorted(learned) == sorted(learnable), "every learnable sample learned exactly once"
    # Learned in known order, scored in impression order.
    assert [known[r] for r in learned] == sorted(known[r] for r in learned)
    assert [impression[r] for r in scored] == sorted(impression[r] for r in scored)
    return steps


def test_schedule_scores_at_impression_and_learns_when_known() -> None:
    # Joiner order: a quick click (known 25) comes before the negative of t=0 (known 10_000).
    impression = np.array([20, 0, 30, 40, 10_500])
    known = np.array([25, 10_000, 10_030, 10_040, 10_500])
    steps = _check_schedule(impression, known, 1)
    assert steps == [
        ("score", [1, 0]),  # both impressions come before the click at 25 is learned
        ("learn", [0]),
        ("score", [2, 3]),  # the impressions at 30 and 40 come before the negative at 10_000 is known
        ("learn", [1]),
        ("learn", [2]),
        ("learn", [3]),
        ("score", [4]),  # a click at its own impression time: scored first
        ("learn", [4]),
    ]


def test_schedule_batches_score_before_the_batch_is_learned() -> None:
    impression = np.array([0, 1, 2, 3, 50, 60])
    known = np.array([5, 40, 45, 47, 55, 70])
    steps = _check_schedule(impression, known, 2)
    # The first batch ends at 40: everything up to it scored before, although sample 0 was
    # known at 5, so the samples with impressions in (5, 40] saw a staler model, never a fresher one.
    assert steps == [
        ("score", [0, 1, 2, 3]),
        ("learn", [0, 1]),
        ("learn", [2, 3]),
        ("score", [4, 5]),
        ("learn", [4, 5]),
    ]


def test_schedule_learn_mask_scores_the_rest_frozen() -> None:
    impression = np.array([0, 10, 20, 30, 40])
    known = np.array([15, 12, 35, 45, 41])
    steps = _check_schedule(impression, known, 2, learn=impression < 20)
    assert steps == [("score", [0, 1]), ("learn", [1, 0]), ("score", [2, 3, 4])]
    # Nothing to learn: everything scored by the untrained model.
    assert _check_schedule(impression, known, 3, learn=np.zeros(5, dtype=bool)) == [
        ("score", [0, 1, 2, 3, 4])
    ]


def test_schedule_random_streams_keep_their_promises() -> None:
    rng = np.random.default_rng(3)
    for batch_size in (1, 3, 8):
        impression = np.sort(rng.integers(0, 1_000, 60))
        positive = rng.random(60) < 0.3
        known = np.where(positive, impression + rng.integers(0, 50, 60), impression + 100)
        order = np.argsort(known, kind="stable")  # the joiner's order
        _check_schedule(impression[order], known[order], batch_size)
        _check_schedule(impression[order], known[order], batch_size, learn=impression[order] < 500)


def test_schedule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive batch size"):
        list(impression_schedule(np.array([0]), np.array([1]), 0))
    with pytest.raises(ValueError, match="before its impression"):
        list(impression_schedule(np.array([5]), np.array([1]), 1))


def test_known_at_is_the_click_or_the_window_end() -> None:
    samples = [
        _sample(label=1, impression_ts_ms=100, action_ts_ms=130),
        _sample(label=0, impression_ts_ms=100, action_ts_ms=0),
    ]
    assert known_at_ms(samples, 10_000).tolist() == [130, 10_100]


def test_retrain_plan_trains_on_labels_known_before_the_scored_impressions() -> None:
    impression = np.array([0, 5, 12, 11, 20, 31, 29])
    known = np.array([3, 15, 14, 21, 25, 40, 41])
    plan = retrain_plan(impression, known, [10, 20, 30])
    assert [score.tolist() for _, score in plan] == [[0, 1], [2, 3], [4, 6], [5]]
    assert [train.tolist() for train, _ in plan] == [[], [0], [0, 2, 1], [0, 2, 1, 3, 4]]
    for train, score in plan:
        assert all(known[t] < impression[s] for t in train for s in score)
    covered = sorted(i for _, score in plan for i in score.tolist())
    assert covered == list(range(len(impression)))
    recent = retrain_plan(impression, known, [10, 20, 30], recent_ms=10)
    assert recent[3][0].tolist() == [4]  # only impressions from 30 - 10 = 20 on


def test_windowed_metrics_by_impression_time() -> None:
    ts = np.array([0, 500, 900, 1_200, 1_800, 3_100])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, np.nan])
    labels = np.array([1, 0, 0, 1, 0, 1], dtype=float)
    scored = np.isfinite(scores)
    rows = windowed_metrics(ts, scores, labels, origin_ms=0, window_ms=1_000, scored=scored)
    assert [r["start_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert rows[0]["n"] == 3 and rows[0]["auc"] == 1.0
    assert rows[1]["n"] == 2 and rows[1]["auc"] == 0.0
    # An empty window and a window whose only sample was not scored: no metrics, not zero.
    assert rows[2] == {"start_s": 2.0, "n": 0, "positives": 0, "non_finite": 0, "auc": None, "logloss": None}
    assert rows[3]["n"] == 0
    with pytest.raises(ValueError, match="positive metric window"):
        windowed_metrics(ts, scores, labels, 0, 0)


def test_region_metrics_one_class_has_no_auc() -> None:
    scores = np.array([0.2, 0.4])
    out = region_metrics(scores, np.array([0.0, 0.0]), np.array([True, True]))
    assert out["n"] == 2 and out["auc"] is None and out["logloss"] == pytest.approx(0.367, abs=1e-3)


def test_region_metrics_counts_non_finite_scores_as_a_coin_flip() -> None:
    scores = np.array([0.9, np.nan, 0.1, np.inf])
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    out = region_metrics(scores, labels, np.ones(4, dtype=bool))
    assert out["n"] == 4 and out["non_finite"] == 2
    assert out["auc"] == region_metrics(np.array([0.9, 0.5, 0.1, 0.5]), labels, np.ones(4, dtype=bool))["auc"]
    # Samples a model did not score are left out, not counted as non-finite.
    out = region_metrics(scores, labels, np.ones(4, dtype=bool), scored=np.array([True, False, True, False]))
    assert out["n"] == 2 and out["non_finite"] == 0 and out["auc"] == 1.0


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


def test_compare_runs_end_to_end_on_a_tiny_stream() -> None:
    # What freshrank/bench/replay.py calls: the torch models only (no VW/River here).
    rng = np.random.default_rng(0)
    samples = []
    for n in range(400):
        ts = 1_000 * n
        label = int(rng.random() < 0.3)
        samples.append(
            _sample(
                user_id=f"u{n % 7}",
                item_id=f"i{n % 11}",
                label=label,
                impression_ts_ms=ts,
                action_ts_ms=ts + 500 if label else 0,
            )
        )
    samples.sort(key=lambda s: s.action_ts_ms if s.label else s.impression_ts_ms + 10_000)
    result = compare(
        samples,
        lambda _: None,
        static_fraction=0.25,
        retrain_every_ms=100_000,
        metric_window_ms=50_000,
        attribution_window_ms=10_000,
        models=("static", "retrain", "freshrank"),
    )
    for name in ("static", "retrain", "freshrank"):
        assert result["models"][name]["scored"] == len(samples)
        assert result["non_finite"][name] == 0
    assert result["models"]["freshrank"]["learned"] == len(samples)
    assert result["models"]["static"]["learned"] == result["static_learned_samples"]
    assert set(result["targets"]) >= {"freshrank_beats_static_by_0.05_auc"}


def _imp(item: str, ts: int, label: int, request: str) -> Sample:
    return Sample("u", "q", item, "c", "b", 1.0, label, ts, ts + 100 if label else 0, request)


def test_popularity_counts_clicks_only_once_known_and_decays() -> None:
    # A click on "a" at 0 (known at 100); then impressions of "a" at 50 (before it is known),
    # at 1,000 and at 61,000 (one half-life later); "b" was never clicked.
    samples = [
        _imp("a", 0, 1, "r0"),
        _imp("a", 50, 0, "r1"),
        _imp("a", 1_000, 0, "r2"),
        _imp("b", 1_000, 0, "r3"),
        _imp("a", 61_000, 0, "r4"),
    ]
    impression = np.array([s.impression_ts_ms for s in samples])
    known = known_at_ms(samples, 10_000)
    run = run_popularity(
        samples, lambda _: None, impression_ms=impression, known_ms=known, half_life_ms=60_000
    )
    c_at_1000 = 2 ** (-900 / 60_000)  # one click, counted at 100, decayed to 1,000
    c_at_61000 = 2 ** (-60_900 / 60_000)
    assert run.scores[0] == 0.0 and run.scores[1] == 0.0  # the click was not known yet
    assert run.scores[2] == pytest.approx(c_at_1000 / (c_at_1000 + 1))
    assert run.scores[3] == 0.0
    assert run.scores[4] == pytest.approx(c_at_61000 / (c_at_61000 + 1))
    assert run.scored.all()
    with pytest.raises(ValueError, match="positive half-life"):
        run_popularity(samples, lambda _: None, impression_ms=impression, known_ms=known, half_life_ms=0)


def test_the_oracle_scores_by_the_truth_and_the_share_of_its_lift() -> None:
    samples = [_imp("a", 0, 1, "r0"), _imp("b", 0, 0, "r0"), _imp("c", 0, 0, "r9")]
    run = run_oracle(samples, lambda _: None, truth={("r0", "a"): 0.8, ("r0", "b"): 0.1})
    assert run.scores[:2].tolist() == [0.8, 0.1] and np.isnan(run.scores[2])
    assert run.scored.tolist() == [True, True, False]
    assert oracle_share(0.7, 0.9) == pytest.approx(0.5)
    assert oracle_share(0.5, 0.9) == 0.0
    assert oracle_share(None, 0.9) is None and oracle_share(0.7, 0.5) is None


def test_targets_against_the_best_baseline_and_the_oracle() -> None:
    after = {
        "static": {"auc": 0.60},
        "retrain": {"auc": 0.66},
        "freshrank": {"auc": 0.705},
        "vw": {"auc": 0.70},
        "river": {"auc": None},
        "popularity": {"auc": 0.68},
        "oracle": {"auc": 0.80},
    }
    report = target_report(after)
    best = report["freshrank_beats_best_baseline_by_0.01"]
    assert best["best_baseline"] == "vw" and best["delta"] == pytest.approx(0.005) and best["met"] is False
    share = report["freshrank_share_of_oracle_lift_0.9"]
    assert share["share"] == pytest.approx(0.6833, abs=1e-4) and share["met"] is False
    assert report["freshrank_at_least_popularity"]["met"] is True
