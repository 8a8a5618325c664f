from __future__ import annotations

from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from rankcore.vocab import OOV, PAD
from tests.unit.helpers import sample


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
