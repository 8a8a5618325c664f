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


def evaluate(model: Ranker, vocabs: Vocabularies, samples: list[Sample]) -> HoldoutMetrics:
    """Score held-out samples with ``model`` (ids it never saw map to the unknown row)."""
    if not samples:
        return HoldoutMetrics(0, 0, math.nan, math.nan, True)
    batch = encode(samples, vocabs, model.config.max_tokens, grow=False)
    scores = score(model, batch)
    finite = bool(np.all(np.isfinite(scores)))
    return HoldoutMetrics(
        samples=len(samples),
        positives=int(batch.label.sum()),
        auc=auc(scores, batch.label) if finite else math.nan,
        logloss=logloss(scores, batch.label) if finite else math.nan,
        finite=finite,
    )
