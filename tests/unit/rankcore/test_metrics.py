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
