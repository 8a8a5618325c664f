"""The holdout: which requests are held out, and how a model scores on them."""

from __future__ import annotations

from rankcore.features import Vocabularies, encode
from rankcore.holdout import evaluate, is_holdout, recent
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.learner import Learner


def test_holdout_choice_is_stable_and_about_one_in_n() -> None:
    ids = [f"r{i}" for i in range(20_000)]
    held = [r for r in ids if is_holdout(r, 10)]
    assert 1_700 < len(held) < 2_300
    assert held == [r for r in ids if is_holdout(r, 10)]
    assert not any(is_holdout(r, 0) for r in ids)


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


def test_recent_takes_the_last_seconds_or_the_newest_few() -> None:
    samples = [
        Sample("u", "q", f"i{t}", "c", "b", 1.0, 0, impression_ts_ms=t * 1000, action_ts_ms=0)
        for t in range(60)
    ]
    # Newest impression at 59 s: the last 20 s are 39 s .. 59 s.
    assert [s.item_id for s in recent(samples, 20, at_least=5)] == [f"i{t}" for t in range(39, 60)]
    # Too few in that time: the newest at_least instead.
    assert len(recent(samples, 20, at_least=30)) == 30
    assert recent([], 20, at_least=5) == []
