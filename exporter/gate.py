"""The publishing gate: a candidate version must not be worse than the live one on held-out traffic.

Pure: scores come from the torch snapshots (:func:`rankcore.holdout.evaluate`; the parity check
makes ONNX equal to them), the decision from :func:`decide`. Held-out samples are never trained
on; see ``holdout_every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rankcore.errors import ConfigError
from rankcore.features import Vocabularies
from rankcore.holdout import HoldoutMetrics, evaluate
from rankcore.model import Ranker
from rankcore.sample import Sample

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

    def __post_init__(self) -> None:
        for name in ("auc_margin", "logloss_margin", "rollback_auc_drop"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"expected gate {name} to be a number >= 0, got {value!r}")
        for name in ("min_samples", "rollback_history"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected gate {name} to be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Verdict:
    """The gate's finding: the held-out metrics of candidate and live, and why not (or None)."""

    metrics: dict[str, Any]
    reason: str | None


def judge(
    model: Ranker,
    vocabs: Vocabularies,
    live: tuple[Ranker, Vocabularies] | None,
    holdout: list[Sample],
    settings: GateSettings,
) -> Verdict:
    """Score the candidate and the live version on the same held-out window, then :func:`decide`."""
    candidate = evaluate(model, vocabs, holdout)
    live_metrics = evaluate(*live, holdout) if live is not None else None
    metrics: dict[str, Any] = dict(candidate.to_dict())
    if live_metrics is not None:
        shown = live_metrics.to_dict()
        metrics["live_holdout_auc"] = shown["holdout_auc"]
        metrics["live_holdout_logloss"] = shown["holdout_logloss"]
    return Verdict(metrics, decide(candidate, live_metrics, settings))


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
