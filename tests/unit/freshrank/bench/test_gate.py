from __future__ import annotations

import numpy as np

from exporter.gate import GateSettings
from freshrank.bench.gate import START_MS, Rule, Version, served
from rankcore.features import Vocabularies
from rankcore.model import Ranker, RankerConfig
from rankcore.sample import Sample

CONFIG = RankerConfig(
    user_capacity=16, token_capacity=16, item_capacity=16, category_capacity=4, brand_capacity=4
)


def version(number: int, cut_ms: int) -> Version:
    return Version(number, cut_ms, Ranker(CONFIG), Vocabularies(CONFIG))


def scripted(reasons: list[str | None]) -> Rule:
    script = iter(reasons)
    return Rule("scripted", lambda candidate, live, holdout: next(script), GateSettings(rollback_history=2))


def test_a_rule_keeps_its_live_version_through_rejections() -> None:
    rule = scripted([None, "held-out AUC worse", None, "held-out logloss worse"])
    for n in range(1, 5):
        rule.release(version(n, START_MS + n * 1000), [], START_MS + n * 1000)
    assert (rule.candidates, rule.rejected) == (4, 2)
    assert rule.reasons == {"AUC": 1, "logloss": 1}
    assert rule.live is not None and rule.live.number == 3
    assert [v.number for _, v in rule.timeline] == [1, 3]
    assert [v.number for v in rule.history] == [1]


def test_served_scores_each_impression_with_the_version_live_at_its_time() -> None:
    rule = scripted([None, None])
    rule.release(version(1, START_MS), [], START_MS)
    rule.release(version(2, START_MS + 10_000), [], START_MS + 10_000)
    samples = [
        Sample("u", "q", "i", "c", "b", 1.0, n % 2, impression_ts_ms=START_MS + t, action_ts_ms=0)
        for n, t in enumerate((40_000, 45_000, 60_000, 70_000))
    ]
    out = served(rule, samples, candidates=2)
    # Every impression came after version 2 went live (at 10 s): its age is from 10 s.
    assert out["live_age_s"]["p50"] == np.percentile([30, 35, 50, 60], 50)
    assert out["versions_served"] == 2 and out["rejected"] == 0
    assert out["served_auc"] is not None
