"""Conformance checks run over model variants: the exported graph scores as torch does."""

from __future__ import annotations

import dataclasses
import math
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
from tests.unit.helpers import VARIANTS, random_samples
from updater.learner import Learner


@pytest.mark.parametrize("config", VARIANTS)
def test_onnx_scores_match_torch(config: RankerConfig, tmp_path: Path) -> None:
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    for i in range(5):
        learner.learn(encode(random_samples(128, i), vocabs, config.max_tokens))
    model = learner.frozen_copy()
    checked = random_samples(200, 11)
    titles = {s.item_id: s.title for s in checked if s.title}
    files = write_onnx(build_onnx(model, vocabs, titles), tmp_path)
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    assert {f.name for f in files} == {"model.onnx", "model.onnx.data"}
    # Unknown ids, empty strings, upper case, more tokens than max_tokens, negative price.
    odd = [
        Sample("never-seen", "RED Shoes", "", "", "zz", -3.0, 0, 0, 0),
        Sample("", "a b c d e f g h i j k", "i1", "c1", "b1", 0.0, 0, 0, 0),
    ]
    diff = check_parity(tmp_path / "model.onnx", model, vocabs, checked + odd, titles=titles)
    assert diff < 1e-5
    session = open_session(tmp_path / "model.onnx")
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == ["score", "model_state"]
    # A server that applies no deltas answers with the state the version was cut at.
    # A server that applies no deltas answers with the state the version was cut at, on every row.
    (state,) = session.run(["model_state"], feeds(checked))
    assert state.tolist() == [[0, 0]] * len(checked)


def test_a_price_that_is_not_finite_scores_as_a_bounded_one(tmp_path: Path) -> None:
    """The graph's own rule, for servers that cannot refuse such prices (the native backend)."""
    config = VARIANTS[0]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    samples = random_samples(64)
    learner.learn(encode(samples, vocabs, config.max_tokens))
    write_onnx(build_onnx(learner.frozen_copy(), vocabs), tmp_path)
    session = open_session(tmp_path / "model.onnx")
    odd = [dataclasses.replace(samples[0], price=p) for p in (math.nan, math.inf, -math.inf, 0.0, 1e9)]
    (scores,) = session.run(["score"], feeds(odd))
    assert np.isfinite(scores).all()
    assert scores[0] == scores[3] == scores[2]  # NaN and -inf: no price
    assert scores[1] == scores[4]  # +inf: the largest price the items contract allows


def test_parity_check_catches_a_wrong_graph(tmp_path: Path) -> None:
    config = VARIANTS[0]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    samples = random_samples(64)
    learner.learn(encode(samples, vocabs, config.max_tokens))
    write_onnx(build_onnx(learner.frozen_copy(), vocabs), tmp_path)
    other = Learner(config, device="cpu", seed=5)  # different weights, same vocabularies
    with pytest.raises(CheckFailed, match="match torch"):
        check_parity(tmp_path / "model.onnx", other.frozen_copy(), vocabs, samples)


def test_feeds_follow_the_serving_contract() -> None:
    f = feeds(random_samples(3))
    assert list(f) == list(INPUT_NAMES)
    assert f["price"].dtype == np.float32 and f["user_id"].dtype == object
