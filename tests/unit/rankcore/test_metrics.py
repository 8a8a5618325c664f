from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankcore.metrics import Prequential, auc, logloss, paired_auc_delta, paired_logloss_delta


def brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


@given(
    st.lists(
        st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.9]), st.integers(0, 1)), min_size=2, max_size=60
    )
)
def test_auc_matches_pairwise_definition_with_ties(rows: list[tuple[float, int]]) -> None:
    scores = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    got = auc(np.array(scores, dtype=np.float32), np.array(labels))
    if 0 < sum(labels) < len(labels):
        assert got == pytest.approx(brute_auc(scores, labels))
    else:
        assert math.isnan(got)


def test_prequential_window_and_logloss() -> None:
    m = Prequential(window=4)
    m.update(np.array([0.9, 0.1], dtype=np.float32), np.array([1, 0], dtype=np.float32))
    assert m.auc() == 1.0
    m.update(np.array([0.1, 0.9, 0.1, 0.9], dtype=np.float32), np.array([1, 0, 1, 0], dtype=np.float32))
    assert m.auc() == 0.0  # the first batch fell out of the window
    assert m.count == 6 and m.positives == 3
    assert m.logloss() > 0
    m2 = Prequential()
    m2.restore(m.state())
    assert m2.auc() == 0.0 and m2.count == 6


def _two_models(seed: int, n: int = 3000, noise_b: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(z - 2)))).astype(np.float32)
    return z + rng.normal(size=n), z + rng.normal(scale=noise_b, size=n), labels


def test_paired_auc_delta_is_the_difference_of_the_aucs() -> None:
    a, b, labels = _two_models(1)
    delta, se = paired_auc_delta(a, b, labels)
    assert delta == pytest.approx(auc(a, labels) - auc(b, labels), abs=1e-12)
    assert 0 < se < 0.05


def test_paired_auc_delta_of_a_model_with_itself_is_zero_with_no_spread() -> None:
    a, _, labels = _two_models(2)
    assert paired_auc_delta(a, a, labels) == (0.0, 0.0)
    assert all(math.isnan(v) for v in paired_auc_delta(a, a, np.zeros_like(labels)))


def test_paired_auc_test_is_calibrated_for_equally_good_models() -> None:
    # Two models equally good by construction: the z statistic is about standard normal, so a
    # one-sided 5% test rejects about 5% of them (a fixed seed: the same 200 draws every run).
    z = []
    for seed in range(200):
        a, b, labels = _two_models(100 + seed)
        delta, se = paired_auc_delta(a, b, labels)
        z.append(delta / se)
    assert abs(float(np.mean(z))) < 0.2
    assert 0.8 < float(np.std(z)) < 1.2
    assert float(np.mean(np.array(z) < -1.645)) < 0.1


def test_paired_auc_test_sees_a_small_consistent_difference() -> None:
    # b is a with a little more noise (two versions of one model are this correlated): worse by
    # about 0.013, within what two unpaired AUC estimates (standard error ~0.011 each here)
    # resolve, yet more than three standard errors of the paired difference.
    a, _, labels = _two_models(3, n=5000)
    b = a + np.random.default_rng(5).normal(scale=0.5, size=len(a))
    delta, se = paired_auc_delta(a, b, labels)
    assert 0 < delta < 0.02 and delta / se > 3


def test_paired_logloss_delta_is_the_mean_difference() -> None:
    a, b, labels = _two_models(4)
    pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    delta, se = paired_logloss_delta(pa, pb, labels)
    assert delta == pytest.approx(logloss(pa, labels) - logloss(pb, labels), abs=1e-9)
    assert se > 0
    assert paired_logloss_delta(pa, pa, labels) == (0.0, 0.0)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_prequential_counts_the_score_an_impression_got_when_it_arrived() -> None:
    m = Prequential(window=10)
    m.expect([("r1", "a"), ("r1", "b")], _f32(0.8, 0.3))
    # Learned later, by a model that has drifted: the positive now scores below the negative.
    m.update(_f32(0.2), _f32(1), [("r1", "a")], np.array([1_000]))
    m.update(_f32(0.9), _f32(0), [("r1", "b")], np.array([1_000]))
    assert m.auc() == 1.0
    assert m.expected == 0  # each impression-time score is used once
    assert m.logloss() == pytest.approx(logloss(_f32(0.8, 0.3), _f32(1, 0)))


def test_a_positive_enters_the_window_once_the_negatives_of_its_time_are_out() -> None:
    m = Prequential(window=10)
    m.update(_f32(0.9), _f32(1), [("r2", "a")], np.array([2_000]))
    assert math.isnan(m.auc()) and m.filled == 0  # its impression's negatives may still come
    m.update(_f32(0.1), _f32(0), [("r1", "b")], np.array([1_000]))
    assert m.filled == 1  # a negative from before it: the positive still waits
    m.update(_f32(0.2), _f32(0), [("r2", "b")], np.array([2_000]))
    assert m.filled == 3 and m.auc() == 1.0
    restored = Prequential(window=10)
    restored.restore(m.state())
    assert restored.auc() == 1.0 and restored.filled == 3


def test_waiting_and_expected_scores_are_bounded_and_checkpointed() -> None:
    m = Prequential(window=2, max_expected=3)
    m.expect([("r", str(i)) for i in range(5)], _f32(0.1, 0.2, 0.3, 0.4, 0.5))
    assert m.expected == 3  # the oldest two went
    for i in range(2, 5):  # positives only: no negative says their time is final
        m.update(_f32(0.9), _f32(1), [("r", str(i))], np.array([i]))
    assert m.filled == 1  # past ``window`` waiting, the oldest go in
    restored = Prequential(window=2, max_expected=3)
    restored.restore(m.state())
    assert restored.state()["waiting"] == m.state()["waiting"] and restored.expecting


def test_once_impressions_are_scored_only_they_count() -> None:
    m = Prequential(window=10)
    m.expect([("r1", "a")], _f32(0.3))
    m.update(_f32(0.9, 0.9), _f32(0, 0), [("r1", "a"), ("r2", "b")], np.array([5, 5]))
    assert m.filled == 1 and m.count == 2  # r2 was not sampled: learned, not measured
    assert m.logloss() == pytest.approx(logloss(_f32(0.3), _f32(0)))


def test_impression_time_scores_remove_the_start_up_skew() -> None:
    """Positives are learned at their click, negatives when the window closes, while the
    model's scores drift upwards: scored when learned, the classes look inverted."""
    rng = np.random.default_rng(3)
    n = 4000
    ts = np.sort(rng.integers(0, 60_000, n))
    true = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-2 * true))).astype(np.float32)
    at_impression = (1 / (1 + np.exp(-true))).astype(np.float32)
    learned_at = ts + np.where(labels == 1, 500, 10_000)
    drift = (learned_at / 60_000).astype(np.float32)  # the score level grows with time
    order = np.argsort(learned_at, kind="stable")
    plain, honest = Prequential(window=n), Prequential(window=n)
    honest.expect([("r", str(i)) for i in range(n)], at_impression)
    for chunk in np.array_split(order, 40):
        keys = [("r", str(i)) for i in chunk]
        late = np.clip(at_impression[chunk] * 0.2 + drift[chunk], 0, 1)
        plain.update(late, labels[chunk])
        honest.update(late, labels[chunk], keys, ts[chunk])
    assert honest.auc() == pytest.approx(auc(at_impression, labels), abs=1e-6)
    assert plain.auc() < 0.5 < honest.auc() - 0.2  # the artefact this removes
