from __future__ import annotations

import math

from exporter.gate import GateSettings, decide, should_roll_back
from rankcore.features import Vocabularies, encode
from rankcore.holdout import HoldoutMetrics, evaluate, is_holdout
from tests.unit.test_model_export import VARIANTS, random_samples
from updater.learner import Learner

SETTINGS = GateSettings(auc_margin=0.02, logloss_margin=0.02, min_samples=100, rollback_auc_drop=0.05)


def metrics(auc: float, logloss: float = 0.4, samples: int = 1000, finite: bool = True) -> HoldoutMetrics:
    return HoldoutMetrics(samples, samples // 10, auc, logloss, finite)


def test_holdout_choice_is_stable_and_about_one_in_n() -> None:
    ids = [f"r{i}" for i in range(20_000)]
    held = [r for r in ids if is_holdout(r, 10)]
    assert 1_700 < len(held) < 2_300
    assert held == [r for r in ids if is_holdout(r, 10)]
    assert not any(is_holdout(r, 0) for r in ids)


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


def test_evaluate_scores_a_trained_model_above_an_untrained_one() -> None:
    config = VARIANTS[1]
    trained, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    # A learnable rule: items with an even number are clicked.
    data = [
        type(s)(
            s.user_id,
            s.query,
            s.item_id,
            s.category,
            s.brand,
            s.price,
            int(int(s.item_id[1:]) % 2 == 0),
            0,
            0,
        )
        for s in random_samples(3000, 1)
    ]
    for k in range(0, 2500, 100):
        for _ in range(3):
            trained.learn(encode(data[k : k + 100], vocabs, config.max_tokens))
    held = data[2500:]
    good = evaluate(trained.frozen_copy(), vocabs, held)
    fresh = evaluate(Learner(config, device="cpu", seed=9).frozen_copy(), vocabs, held)
    assert good.samples == 500 and good.finite
    assert good.auc > fresh.auc + 0.1
    assert evaluate(trained.frozen_copy(), vocabs, []).samples == 0
