"""Features: samples become model inputs through the vocabularies, in one place.

:func:`encode` maps raw ids to embedding rows (growing the vocabularies while training,
read-only when judging), :meth:`Batch.tensors` is the one way a batch becomes the ranker's
input tensors, and :func:`score` the one way a batch is scored outside training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rankcore.events import query_tokens
from rankcore.model import FEATURES, Ranker, RankerConfig
from rankcore.sample import Sample
from rankcore.vocab import Vocab


class Vocabularies:
    """One :class:`Vocab` per categorical feature of the model."""

    def __init__(self, config: RankerConfig) -> None:
        self.by_feature = {f: Vocab(f, config.capacity(f)) for f in FEATURES}

    def __getitem__(self, feature: str) -> Vocab:
        return self.by_feature[feature]

    def copy(self) -> Vocabularies:
        other = object.__new__(Vocabularies)
        other.by_feature = {f: v.copy() for f, v in self.by_feature.items()}
        return other

    def sizes(self) -> dict[str, int]:
        return {f: len(v) for f, v in self.by_feature.items()}

    def state(self) -> dict[str, object]:
        return {f: v.state() for f, v in self.by_feature.items()}

    def restore(self, state: dict[str, dict[str, object]]) -> None:
        self.by_feature = {f: Vocab.from_state(state[f]) for f in FEATURES}


@dataclass(slots=True)
class Batch:
    """Encoded columns of one micro-batch, ready for :class:`rankcore.model.Ranker`."""

    user: np.ndarray
    tokens: np.ndarray
    item: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    label: np.ndarray
    action_ts_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """The ranker's inputs, in its ``forward`` order, on ``device``."""
        return tuple(
            torch.from_numpy(a).to(device, non_blocking=True)
            for a in (self.user, self.tokens, self.item, self.category, self.brand, self.price)
        )


def encode(samples: list[Sample], vocabs: Vocabularies, max_tokens: int, grow: bool = True) -> Batch:
    """Map raw ids to rows (growing the vocabularies when ``grow``) and build the columns."""
    n = len(samples)
    users, items, cats, brands = vocabs["user"], vocabs["item"], vocabs["category"], vocabs["brand"]
    token_vocab = vocabs["token"]
    look = (lambda v, k: v.add(k)) if grow else (lambda v, k: v.get(k))
    tokens = np.zeros((n, max_tokens), dtype=np.int64)
    for row, s in enumerate(samples):
        for col, tok in enumerate(query_tokens(s.query)[:max_tokens]):
            tokens[row, col] = look(token_vocab, tok)
    return Batch(
        user=np.fromiter((look(users, s.user_id) for s in samples), dtype=np.int64, count=n),
        tokens=tokens,
        item=np.fromiter((look(items, s.item_id) for s in samples), dtype=np.int64, count=n),
        category=np.fromiter((look(cats, s.category) for s in samples), dtype=np.int64, count=n),
        brand=np.fromiter((look(brands, s.brand) for s in samples), dtype=np.int64, count=n),
        price=np.fromiter((s.price for s in samples), dtype=np.float32, count=n),
        label=np.fromiter((s.label for s in samples), dtype=np.float32, count=n),
        action_ts_ms=np.fromiter((s.action_ts_ms for s in samples), dtype=np.int64, count=n),
    )


@torch.no_grad()
def score(model: Ranker, batch: Batch) -> np.ndarray:
    """Click probabilities for ``batch`` (eval mode, no gradient), as a float32 array on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.sigmoid(model(*batch.tensors(device))).cpu().numpy()
