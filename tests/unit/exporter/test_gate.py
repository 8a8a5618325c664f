from __future__ import annotations

import math

import numpy as np
import pytest

from exporter.gate import GateSettings, Paired, decide, judge, should_roll_back
from rankcore.errors import ConfigError
from rankcore.features import Vocabularies
from rankcore.holdout import HoldoutMetrics
from rankcore.model import Ranker, RankerConfig
from tests.unit.helpers import sample

SETTINGS = GateSettings(auc_margin=0.005, logloss_margin=0.005, min_samples=100, rollback_auc_drop=0.05)


def metrics(auc: float, logloss: float = 0.4, samples: int = 1000, finite: bool = True) -> HoldoutMetrics:
    return HoldoutMetrics(samples, samples // 10, auc, logloss, finite)


def paired(auc_delta: float, auc_se: float, logloss_delta: float = 0.0, logloss_se: float = 0.001) -> Paired:
    return Paired(auc_delta, auc_se, logloss_delta, logloss_se)


def test_gate_passes_a_candidate_not_shown_worse_than_the_margin() -> None:
    live = metrics(0.75)
    assert decide(metrics(0.75), live, paired(0.0, 0.0), SETTINGS) is None
    # 0.01 worse as a point estimate, but with a standard error of 0.004 the 95% bound
    # (-0.01 + 1.645 * 0.004 = -0.0034) is within the margin: noise, not a worse model.
    assert decide(metrics(0.74), live, paired(-0.01, 0.004), SETTINGS) is None
    assert decide(metrics(0.80), None, None, SETTINGS) is None  # nothing live yet


def test_gate_rejects_a_candidate_worse_with_confidence() -> None:
    live = metrics(0.75)
    # -0.01 with a standard error of 0.002: the bound -0.0067 is past the margin.
    reason = decide(metrics(0.74), live, paired(-0.01, 0.002), SETTINGS) or ""
    assert "AUC" in reason and "95%" in reason
    reason = decide(metrics(0.75, 0.45), metrics(0.75, 0.40), paired(0.0, 0.001, 0.05, 0.01), SETTINGS) or ""
    assert "logloss" in reason
    nan = metrics(math.nan, math.nan, finite=False)
    assert "non-finite" in (decide(nan, live, None, SETTINGS) or "")


def test_gate_confidence_moves_the_bound() -> None:
    strict = GateSettings(auc_margin=0.005, logloss_margin=0.005, min_samples=100, confidence=0.5)
    # At 50% the point estimate itself is judged: -0.01 is past the margin whatever its spread.
    assert decide(metrics(0.74), metrics(0.75), paired(-0.01, 0.004), strict) is not None
    with pytest.raises(ConfigError, match="confidence"):
        GateSettings(confidence=1.0)


def test_gate_waits_for_enough_held_out_samples() -> None:
    assert decide(metrics(0.5, samples=50), metrics(0.9), paired(-0.4, 0.01), SETTINGS) is None


def test_rollback_only_past_the_drop() -> None:
    assert should_roll_back(metrics(0.72), metrics(0.75), SETTINGS) is None
    assert "fell below" in (should_roll_back(metrics(0.65), metrics(0.75), SETTINGS) or "")
    assert should_roll_back(metrics(0.5, samples=10), metrics(0.9), SETTINGS) is None


def test_judge_compares_the_candidate_with_live_on_the_same_samples() -> None:
    config = RankerConfig(
        user_capacity=64, token_capacity=64, item_capacity=64, category_capacity=8, brand_capacity=8
    )
    vocabs = Vocabularies(config)
    holdout = [sample(n % 11, label=int(n % 5 == 0)) for n in range(400)]
    for s in holdout:
        vocabs["user"].add(s.user_id)
        vocabs["item"].add(s.item_id)
    model = Ranker(config)
    verdict = judge(model, vocabs, (model, vocabs), holdout, SETTINGS)
    assert verdict.reason is None
    assert verdict.metrics["gate_auc_delta"] == 0.0 and verdict.metrics["gate_logloss_delta"] == 0.0
    assert verdict.metrics["live_holdout_auc"] == verdict.metrics["holdout_auc"]
    first = judge(model, vocabs, None, holdout, SETTINGS)
    assert first.reason is None and "gate_auc_delta" not in first.metrics
    assert np.isfinite(first.metrics["holdout_logloss"])
