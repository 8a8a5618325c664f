"""The publishing gate: a candidate version must not be worse than the live one on held-out traffic.

Pure: scores come from the torch snapshots (:func:`rankcore.holdout.evaluate`; the parity check
makes ONNX equal to them), the decision from :func:`decide`. Held-out samples are never trained
on; see ``holdout_every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rankcore.holdout import HoldoutMetrics

DEFAULT_AUC_MARGIN = 0.02
DEFAULT_LOGLOSS_MARGIN = 0.02
DEFAULT_MIN_HOLDOUT = 300
DEFAULT_ROLLBACK_AUC_DROP = 0.05
DEFAULT_ROLLBACK_HISTORY = 5


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
