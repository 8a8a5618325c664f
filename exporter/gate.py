"""The publishing gate: a candidate version must not be worse than the live one on held-out traffic.

Pure: scores come from the torch snapshots (the parity check makes ONNX equal to them), the
decision from :func:`decide`. Held-out samples are never trained on; see ``holdout_every``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from updater.batcher import Vocabularies, encode
from updater.joiner import Sample
from updater.metrics import auc, logloss
from updater.model import Ranker

DEFAULT_HOLDOUT_EVERY = 10
DEFAULT_AUC_MARGIN = 0.02
DEFAULT_LOGLOSS_MARGIN = 0.02
DEFAULT_MIN_HOLDOUT = 300
DEFAULT_ROLLBACK_AUC_DROP = 0.05
DEFAULT_ROLLBACK_HISTORY = 5


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


@torch.no_grad()
def evaluate(model: Ranker, vocabs: Vocabularies, samples: list[Sample]) -> HoldoutMetrics:
    """Score held-out samples with ``model`` (ids it never saw map to the unknown row)."""
    if not samples:
        return HoldoutMetrics(0, 0, math.nan, math.nan, True)
    batch = encode(samples, vocabs, model.config.max_tokens, grow=False)
    model.eval()
    logits = model(
        *(
            torch.from_numpy(a)
            for a in (batch.user, batch.tokens, batch.item, batch.category, batch.brand, batch.price)
        )
    )
    scores = torch.sigmoid(logits).numpy()
    finite = bool(np.all(np.isfinite(scores)))
    return HoldoutMetrics(
        samples=len(samples),
        positives=int(batch.label.sum()),
        auc=auc(scores, batch.label) if finite else math.nan,
        logloss=logloss(scores, batch.label) if finite else math.nan,
        finite=finite,
    )


@dataclass(frozen=True)
class GateSettings:
    auc_margin: float = DEFAULT_AUC_MARGIN
    logloss_margin: float = DEFAULT_LOGLOSS_MARGIN
    min_samples: int = DEFAULT_MIN_HOLDOUT
    rollback_auc_drop: float = DEFAULT_ROLLBACK_AUC_DROP
    # How many earlier served versions are kept (in memory) as rollback targets.
    rollback_history: int = DEFAULT_ROLLBACK_HISTORY


def decide(candidate: HoldoutMetrics, live: HoldoutMetrics | None, settings: GateSettings) -> str | None:
    """None when the candidate may be published, else the reason it may not."""
    if not candidate.finite:
        return "non-finite scores on the held-out window"
    if live is None or candidate.samples < settings.min_samples or math.isnan(candidate.auc):
        return None  # nothing to compare with yet
    if not math.isnan(live.auc) and candidate.auc < live.auc - settings.auc_margin:
        return f"held-out AUC {candidate.auc:.4f} < live {live.auc:.4f} - {settings.auc_margin}"
    if not math.isnan(live.logloss) and candidate.logloss > live.logloss + settings.logloss_margin:
        return (
            f"held-out logloss {candidate.logloss:.4f} > live {live.logloss:.4f} + {settings.logloss_margin}"
        )
    return None


def should_roll_back(live: HoldoutMetrics, previous: HoldoutMetrics, settings: GateSettings) -> str | None:
    """A reason to go back to ``previous`` when the live version fell too far below it."""
    if live.samples < settings.min_samples or math.isnan(live.auc) or math.isnan(previous.auc):
        return None
    if not live.finite:
        return "live version gives non-finite scores"
    if live.auc < previous.auc - settings.rollback_auc_drop:
        return (
            f"held-out AUC {live.auc:.4f} fell below previous good {previous.auc:.4f}"
            f" - {settings.rollback_auc_drop}"
        )
    return None
