from __future__ import annotations

import math

from exporter.gate import GateSettings, decide, should_roll_back
from rankcore.holdout import HoldoutMetrics

SETTINGS = GateSettings(auc_margin=0.02, logloss_margin=0.02, min_samples=100, rollback_auc_drop=0.05)


def metrics(auc: float, logloss: float = 0.4, samples: int = 1000, finite: bool = True) -> HoldoutMetrics:
    return HoldoutMetrics(samples, samples // 10, auc, logloss, finite)


def test_gate_passes_equal_or_better_and_small_losses() -> None:
    assert decide(metrics(0.75), metrics(0.75), SETTINGS) is None
    assert decide(metrics(0.74, 0.41), metrics(0.75, 0.40), SETTINGS) is None
    assert decide(metrics(0.80), None, SETTINGS) is None  # nothing live yet


def test_gate_rejects_worse_auc_worse_logloss_and_nan() -> None:
    assert "AUC" in (decide(metrics(0.70), metrics(0.75), SETTINGS) or "")
    assert "logloss" in (decide(metrics(0.75, 0.50), metrics(0.75, 0.40), SETTINGS) or "")
    assert "non-finite" in (decide(metrics(math.nan, math.nan, finite=False), metrics(0.75), SETTINGS) or "")


def test_gate_waits_for_enough_held_out_samples() -> None:
    assert decide(metrics(0.5, samples=50), metrics(0.9), SETTINGS) is None


def test_rollback_only_past_the_drop() -> None:
    assert should_roll_back(metrics(0.72), metrics(0.75), SETTINGS) is None
    assert "fell below" in (should_roll_back(metrics(0.65), metrics(0.75), SETTINGS) or "")
    assert should_roll_back(metrics(0.5, samples=10), metrics(0.9), SETTINGS) is None
