"""The holdout: a stable slice of requests never trained on, and how a model scores on it.

The updater routes every ``every``-th request (by hash) here instead of into training; the
release side judges candidates and the live version on the latest window of it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from rankcore.features import Vocabularies, encode, score
from rankcore.metrics import auc, logloss
from rankcore.model import Ranker
from rankcore.sample import Sample

DEFAULT_HOLDOUT_EVERY = 10


def is_holdout(request_id: str, every: int) -> bool:
    """Stable choice of every ``every``-th request (by hash), the same in every process."""
    return every > 0 and zlib.crc32(request_id.encode()) % every == 0


@dataclass(frozen=True)
class HoldoutMetrics:
    samples: int
    positives: int
    auc: float
    logloss: float
    finite: bool

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {
            "holdout_samples": self.samples,
            "holdout_auc": None if math.isnan(self.auc) else round(self.auc, 5),
            "holdout_logloss": None if math.isnan(self.logloss) else round(self.logloss, 5),
        }


def holdout_scores(
    model: Ranker, vocabs: Vocabularies, samples: list[Sample]
) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s scores of held-out samples (ids it never saw map to the unknown row), and
    their labels."""
    if not samples:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    batch = encode(samples, vocabs, model.config.max_tokens, grow=False)
    return score(model, batch), batch.label


def summarize(scores: np.ndarray, labels: np.ndarray) -> HoldoutMetrics:
    """AUC and logloss of scores of held-out samples (NaN where they are not finite)."""
    if len(scores) == 0:
        return HoldoutMetrics(0, 0, math.nan, math.nan, True)
    finite = bool(np.all(np.isfinite(scores)))
    return HoldoutMetrics(
        samples=len(scores),
        positives=int(labels.sum()),
        auc=auc(scores, labels) if finite else math.nan,
        logloss=logloss(scores, labels) if finite else math.nan,
        finite=finite,
    )


def evaluate(model: Ranker, vocabs: Vocabularies, samples: list[Sample]) -> HoldoutMetrics:
    """Score held-out samples with ``model`` and summarize them."""
    return summarize(*holdout_scores(model, vocabs, samples))
