from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankcore.metrics import Prequential, auc


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
