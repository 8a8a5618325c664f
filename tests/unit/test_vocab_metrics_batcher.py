from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankcore.features import Vocabularies, encode
from rankcore.metrics import Prequential, auc
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from rankcore.vocab import OOV, PAD, Vocab
from updater.batcher import Batcher


def test_vocab_grows_until_full_then_shares_oov() -> None:
    v = Vocab("item", capacity=4)
    assert v.add("") == PAD
    assert v.add("a") == 2 and v.add("b") == 3 and v.add("a") == 2
    assert v.full
    assert v.add("c") == OOV and v.overflow == 1
    assert v.get("zzz") == OOV and v.get("b") == 3
    assert v.keys() == ["a", "b"]
    copy = v.copy()
    v2 = Vocab.from_state(v.state())
    assert v2.keys() == ["a", "b"] and v2.overflow == 1
    assert copy.keys() == ["a", "b"]


def test_vocab_copy_is_independent() -> None:
    v = Vocab("item", capacity=10)
    v.add("a")
    c = v.copy()
    v.add("b")
    assert c.keys() == ["a"]


def test_vocab_capacity_validated() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Vocab("user", 2)


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


def sample(i: int, label: int = 0, query: str = "red shoes") -> Sample:
    return Sample(f"u{i}", query, f"i{i}", "shoes", "acme", 10.0, label, i, i if label else 0)


def test_batcher_cuts_by_size_and_age() -> None:
    b = Batcher(size=3, max_wait_s=1.0)
    assert b.add([sample(1), sample(2)], now=0.0) == []
    full = b.add([sample(3), sample(4)], now=0.5)
    assert [len(x) for x in full] == [3] and len(b) == 1
    assert not b.due(1.0)
    assert b.due(1.6)
    assert len(b.flush()) == 1 and len(b) == 0


def test_encode_maps_ids_and_pads_tokens() -> None:
    cfg = RankerConfig(
        user_capacity=10,
        token_capacity=10,
        item_capacity=10,
        category_capacity=5,
        brand_capacity=5,
        max_tokens=3,
    )
    vocabs = Vocabularies(cfg)
    batch = encode([sample(1, 1, "a b c d"), sample(2, 0, "")], vocabs, cfg.max_tokens)
    assert batch.tokens.shape == (2, 3)
    assert batch.tokens[0].tolist() == [2, 3, 4] and batch.tokens[1].tolist() == [PAD] * 3
    assert batch.label.tolist() == [1.0, 0.0]
    assert batch.action_ts_ms.tolist() == [1, 0]
    unseen = encode([sample(9)], vocabs, cfg.max_tokens, grow=False)
    assert unseen.user.tolist() == [OOV]
