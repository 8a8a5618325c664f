"""Conformance checks run over model variants: state round trip, ONNX parity, learning."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.check import check_parity, feeds, open_session
from exporter.onnx_export import INPUT_NAMES, build_onnx, write_onnx
from rankcore.errors import CheckFailed
from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from updater.learner import Learner

VARIANTS = [
    RankerConfig(
        user_capacity=64,
        token_capacity=32,
        item_capacity=64,
        category_capacity=8,
        brand_capacity=8,
        dim=4,
        hidden=8,
        max_tokens=2,
    ),
    RankerConfig(
        user_capacity=500,
        token_capacity=200,
        item_capacity=500,
        category_capacity=20,
        brand_capacity=20,
        dim=16,
        hidden=32,
        max_tokens=8,
    ),
]


def random_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    queries = ["red shoes", "iphone 12 pro max ultra", "", "tent"]
    return [
        Sample(
            f"u{rng.randint(0, 300)}",
            rng.choice(queries),
            f"i{rng.randint(0, 300)}",
            rng.choice(["c1", "c2", ""]),
            rng.choice(["b1", ""]),
            rng.random() * 100,
            rng.randint(0, 1),
            0,
            0,
        )
        for _ in range(n)
    ]


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


@pytest.mark.parametrize("config", VARIANTS)
def test_onnx_scores_match_torch(config: RankerConfig, tmp_path: Path) -> None:
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    for i in range(5):
        learner.learn(encode(random_samples(128, i), vocabs, config.max_tokens))
    model = learner.frozen_copy()
    files = write_onnx(build_onnx(model, vocabs), tmp_path)
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    assert {f.name for f in files} == {"model.onnx", "model.onnx.data"}
    # Unknown ids, empty strings, upper case, more tokens than max_tokens, negative price.
    odd = [
        Sample("never-seen", "RED Shoes", "", "", "zz", -3.0, 0, 0, 0),
        Sample("", "a b c d e f g h i j k", "i1", "c1", "b1", 0.0, 0, 0, 0),
    ]
    diff = check_parity(tmp_path / "model.onnx", model, vocabs, random_samples(200, 11) + odd)
    assert diff < 1e-5
    session = open_session(tmp_path / "model.onnx")
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == ["score"]


def test_parity_check_catches_a_wrong_graph(tmp_path: Path) -> None:
    config = VARIANTS[0]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    samples = random_samples(64)
    learner.learn(encode(samples, vocabs, config.max_tokens))
    write_onnx(build_onnx(learner.frozen_copy(), vocabs), tmp_path)
    other = Learner(config, device="cpu", seed=5)  # different weights, same vocabularies
    with pytest.raises(CheckFailed, match="match torch"):
        check_parity(tmp_path / "model.onnx", other.frozen_copy(), vocabs, samples)


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


def test_feeds_follow_the_serving_contract() -> None:
    f = feeds(random_samples(3))
    assert list(f) == list(INPUT_NAMES)
    assert f["price"].dtype == np.float32 and f["user_id"].dtype == object
