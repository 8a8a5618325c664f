"""Features: samples become model inputs through the vocabularies, in one place.

:func:`encode` maps raw ids to embedding rows (growing the vocabularies while training, and
naming the rows new ids took over; read-only when judging), :meth:`Batch.tensors` is the one
way a batch becomes the ranker's input tensors, and :func:`score` the one way a batch is scored
outside training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rankcore.errors import ConfigError
from rankcore.events import query_tokens
from rankcore.model import FEATURES, Ranker, RankerConfig
from rankcore.sample import Sample
from rankcore.text import TextEncoder, default_encoder
from rankcore.vocab import Vocab

# Measured with vocabularies a third to a half the ids a stream brings (README, "Vocabularies"):
# an hour of idleness, in event time, rarely evicts an id that comes back soon.
DEFAULT_VOCAB_EXPIRE_S = 3600.0


class Vocabularies:
    """One :class:`Vocab` per categorical feature of the model; full, a vocabulary gives the row
    of an id idle for ``expire_ms`` of stream time to a new id (``None``: never). With the text
    tower, also the frozen :class:`rankcore.text.TextEncoder` (the same for every copy)."""

    def __init__(
        self, config: RankerConfig, expire_ms: int | None = None, text: TextEncoder | None = None
    ) -> None:
        self.expire_ms = expire_ms
        self.by_feature = {f: Vocab(f, config.capacity(f), expire_ms) for f in FEATURES}
        self.text: TextEncoder | None = None
        if config.text_dim:
            self.text = text or default_encoder()
            if self.text.dim != config.text_dim:
                raise ConfigError(
                    f"expected text vectors of width {config.text_dim} (--model-text-dim),"
                    f" the word table has {self.text.dim}"
                )

    def __getitem__(self, feature: str) -> Vocab:
        return self.by_feature[feature]

    def copy(self) -> Vocabularies:
        other = object.__new__(Vocabularies)
        other.expire_ms = self.expire_ms
        other.text = self.text
        other.by_feature = {f: v.copy() for f, v in self.by_feature.items()}
        return other

    def sizes(self) -> dict[str, int]:
        return {f: len(v) for f, v in self.by_feature.items()}

    def evictions(self) -> dict[str, int]:
        """Per feature, how many ids gave up their row to a new one (the vocabulary was full)."""
        return {f: v.evictions for f, v in self.by_feature.items()}

    def track_changes(self) -> None:
        """From now on, remember every (key, row) assignment until :meth:`take_changes`."""
        for v in self.by_feature.values():
            v.tracking = True

    def take_changes(self) -> dict[str, list[tuple[str, int]]]:
        """Per feature, the (key, row) assignments since the last call (see :meth:`Vocab.take_changes`)."""
        return {f: changes for f, v in self.by_feature.items() if (changes := v.take_changes())}

    def state(self) -> dict[str, object]:
        return {f: v.state() for f, v in self.by_feature.items()}

    def restore(self, state: dict[str, dict[str, object]]) -> None:
        tracking = any(v.tracking for v in self.by_feature.values())
        self.by_feature = {f: Vocab.from_state(state[f], self.expire_ms) for f in FEATURES}
        if tracking:
            self.track_changes()


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
    impression_ts_ms: np.ndarray | None = None
    # With the text tower: the query's and the title's frozen vectors, [N, text_dim].
    query_text: np.ndarray | None = None
    title_text: np.ndarray | None = None
    # (request_id, item_id) per row: the key an impression-time score is found by.
    keys: list[tuple[str, str]] | None = None
    # Per feature, the embedding rows that new ids took over while this batch was encoded: the
    # learner resets them before it learns the batch.
    recycled: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, share: slice) -> Batch:
        """The rows of ``share``, without the recycled rows (those belong to the whole batch)."""

        def cut(column: np.ndarray | None) -> np.ndarray | None:
            return None if column is None else column[share]

        return Batch(
            user=self.user[share],
            tokens=self.tokens[share],
            item=self.item[share],
            category=self.category[share],
            brand=self.brand[share],
            price=self.price[share],
            label=self.label[share],
            action_ts_ms=self.action_ts_ms[share],
            impression_ts_ms=cut(self.impression_ts_ms),
            query_text=cut(self.query_text),
            title_text=cut(self.title_text),
            keys=None if self.keys is None else self.keys[share],
        )

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """The ranker's inputs, in its ``forward`` order, on ``device``."""
        columns = [self.user, self.tokens, self.item, self.category, self.brand, self.price]
        if self.query_text is not None and self.title_text is not None:
            columns += [self.query_text, self.title_text]
        return tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in columns)


def encode(samples: list[Sample], vocabs: Vocabularies, max_tokens: int, grow: bool = True) -> Batch:
    """Map raw ids to rows (growing the vocabularies when ``grow``) and build the columns."""
    n = len(samples)
    users, items, cats, brands = vocabs["user"], vocabs["item"], vocabs["category"], vocabs["brand"]
    token_vocab = vocabs["token"]
    # Growing, an id counts as seen at its impression's time (for the vocabularies' expiry).
    look = (lambda v, k, ts: v.add(k, ts)) if grow else (lambda v, k, ts: v.get(k))
    tokens = np.zeros((n, max_tokens), dtype=np.int64)
    for row, s in enumerate(samples):
        for col, tok in enumerate(query_tokens(s.query)[:max_tokens]):
            tokens[row, col] = look(token_vocab, tok, s.impression_ts_ms)
    batch = Batch(
        user=np.fromiter(
            (look(users, s.user_id, s.impression_ts_ms) for s in samples), dtype=np.int64, count=n
        ),
        tokens=tokens,
        item=np.fromiter(
            (look(items, s.item_id, s.impression_ts_ms) for s in samples), dtype=np.int64, count=n
        ),
        category=np.fromiter(
            (look(cats, s.category, s.impression_ts_ms) for s in samples), dtype=np.int64, count=n
        ),
        brand=np.fromiter(
            (look(brands, s.brand, s.impression_ts_ms) for s in samples), dtype=np.int64, count=n
        ),
        price=np.fromiter((s.price for s in samples), dtype=np.float32, count=n),
        label=np.fromiter((s.label for s in samples), dtype=np.float32, count=n),
        action_ts_ms=np.fromiter((s.action_ts_ms for s in samples), dtype=np.int64, count=n),
        impression_ts_ms=np.fromiter((s.impression_ts_ms for s in samples), dtype=np.int64, count=n),
        keys=[(s.request_id, s.item_id) for s in samples],
    )
    if vocabs.text is not None:
        batch.query_text = vocabs.text.queries((s.query for s in samples), max_tokens)
        batch.title_text = vocabs.text.titles(s.title for s in samples)
    if grow:
        recycled = {f: rows for f, v in vocabs.by_feature.items() if (rows := v.take_recycled())}
        batch.recycled = recycled or None
    return batch


@torch.no_grad()
def score(model: Ranker, batch: Batch) -> np.ndarray:
    """Click probabilities for ``batch`` (eval mode, no gradient), as a float32 array on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.sigmoid(model(*batch.tensors(device))).cpu().numpy()
