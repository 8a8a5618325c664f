"""The learner: its state round-trips and it learns the way the labels push."""

from __future__ import annotations

import dataclasses
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


def test_a_row_a_new_id_takes_over_starts_from_zero_without_the_old_ids_moments() -> None:
    config = dataclasses.replace(VARIANTS[1], item_capacity=4)  # rows 2 and 3
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config, expire_ms=0)

    def batch_of(item: str, label: int) -> list[Sample]:
        return [Sample(f"u{i}", "red shoes", item, "shoes", "b1", 20.0, label, 0, 0) for i in range(16)]

    for _ in range(30):
        learner.learn(encode(batch_of("hot", 1) + batch_of("cold", 0), vocabs, config.max_tokens))
    row = vocabs["item"].get("hot")
    learner.learn(encode(batch_of("cold", 0), vocabs, config.max_tokens))  # "hot" is now the oldest
    table, bias = learner.model.embeddings["item"].weight.detach(), learner.model.item_bias.weight.detach()
    assert float(bias[row]) > 0.1  # what "hot" learned
    takeover = encode(batch_of("new", 0), vocabs, config.max_tokens)
    assert vocabs["item"].get("new") == row and takeover.recycled == {"item": [row]}
    learner._reset_rows(takeover.recycled)
    assert float(table[row].abs().sum()) == 0.0 and float(bias[row]) == 0.0
    moments = learner.sparse_opt.state[learner.model.embeddings["item"].weight]
    assert float(moments["exp_avg"][row].abs().sum()) == 0.0
    assert float(moments["exp_avg_sq"][row].abs().sum()) == 0.0
    learner.learn(takeover)  # and it learns from there
    assert float(bias[row]) < 0.0
