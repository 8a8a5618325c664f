"""The learner: its state round-trips and it learns the way the labels push."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.learner import Learner


@pytest.mark.parametrize("config", VARIANTS)
def test_state_round_trip(config: RankerConfig) -> None:
    a, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    for i in range(3):
        a.learn(encode(random_samples(64, i), vocabs, config.max_tokens))
    b = Learner(config, device="cpu", seed=99)
    b.restore(a.state())
    probe = encode(random_samples(32, 7), vocabs, config.max_tokens, grow=False)
    np.testing.assert_array_equal(a.score(probe), b.score(probe))
    assert b.samples_trained == 192


def test_learning_moves_scores_the_way_clicks_push() -> None:
    config = VARIANTS[1]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    rng = random.Random(3)
    for _ in range(40):
        batch = []
        for _ in range(32):
            user = f"u{rng.randint(0, 50)}"
            batch.append(Sample(user, "red shoes", "hot", "shoes", "b1", 20.0, 1, 0, 0))
            batch.append(Sample(user, "red shoes", "cold", "shoes", "b1", 20.0, 0, 0, 0))
        learner.learn(encode(batch, vocabs, config.max_tokens))
    probe = [Sample("u1", "red shoes", item, "shoes", "b1", 20.0, 0, 0, 0) for item in ("hot", "cold")]
    hot, cold = learner.score(encode(probe, vocabs, config.max_tokens, grow=False))
    assert hot > 0.8 > 0.2 > cold
    assert learner.metrics.auc() > 0.7  # prequential: includes the first, untrained batches
