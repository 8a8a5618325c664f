"""The publishing gate: a candidate version must not be worse than the live one on held-out traffic.

Candidate and live are scored on the *same* held-out samples and compared with paired
statistics (:func:`rankcore.metrics.paired_auc_delta`, DeLong's test for two correlated AUCs,
and the per-sample logloss difference): what the two versions share cancels, so the gate
rejects a candidate only when it is worse by more than the margin *with the configured
confidence*, not whenever two noisy estimates happen to differ. The updater hands it the
held-out impressions of the last 20 s (:func:`rankcore.holdout.recent`), each labelled by what
is known of it now (one whose window is still open counts as a miss,
:meth:`updater.ingest.Ingest.open_holdout`): on older traffic a fresher candidate looks worse.
``bench gate`` measures this rule against the one before it
(point estimates, fixed margins, the newest 5,000 samples).

Pure: scores come from the torch snapshots (:func:`rankcore.holdout.holdout_scores`; the
parity check makes ONNX equal to them), the decision from :func:`decide`. Held-out samples
are never trained on; see ``holdout_every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from rankcore.errors import ConfigError
from rankcore.features import Vocabularies
from rankcore.holdout import HoldoutMetrics, holdout_scores, summarize
from rankcore.metrics import paired_auc_delta, paired_logloss_delta
from rankcore.model import Ranker
from rankcore.sample import Sample

# Chosen with `bench gate` (simulator seed 7, batches of 128, held-out impressions of the last
# 20 s): at the demo's 1,000 events/s margins of 0.01 rejected 20% of a clean stream's
# candidates, 0.02 10%; the served AUC rose as rejections fell (0.738 -> 0.740), and the
# poisoned stream was rolled back either way. Most of those rejections were for logloss, and
# most of that was the window's labels, not the versions: its newest impressions came with
# their clicks and without their misses (open windows), so the window's click rate read
# 0.25-0.35 against 0.17. Counting open impressions as misses, 2 of 75 candidates of the word
# simulator's clean stream are rejected at 0.02 (15 of 80 before). Versions seconds apart
# really do differ on a drifting stream: the margin is how much worse on the last 20 s a
# fresher candidate may be.
DEFAULT_AUC_MARGIN = 0.02
DEFAULT_LOGLOSS_MARGIN = 0.02
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_HOLDOUT = 300
DEFAULT_ROLLBACK_AUC_DROP = 0.05
DEFAULT_ROLLBACK_HISTORY = 5
# Between versions the gate judges the served state (the live version + deltas) this often,
# with wider margins: the reference is a version up to a publish interval older, so the drift
# that makes a fresh state differ from it is larger than between two candidates seconds apart.
DEFAULT_CHECK_INTERVAL_S = 2.0
DEFAULT_CHECK_AUC_MARGIN = 0.05
DEFAULT_CHECK_LOGLOSS_MARGIN = 0.1


@dataclass(frozen=True)
class GateSettings:
    auc_margin: float = DEFAULT_AUC_MARGIN
    logloss_margin: float = DEFAULT_LOGLOSS_MARGIN
    # One-sided: a candidate is rejected when it is worse by more than the margin at this level.
    confidence: float = DEFAULT_CONFIDENCE
    min_samples: int = DEFAULT_MIN_HOLDOUT
    rollback_auc_drop: float = DEFAULT_ROLLBACK_AUC_DROP
    # How many earlier served versions are kept (in memory) as rollback targets.
    rollback_history: int = DEFAULT_ROLLBACK_HISTORY
    check_interval_s: float = DEFAULT_CHECK_INTERVAL_S
    check_auc_margin: float = DEFAULT_CHECK_AUC_MARGIN
    check_logloss_margin: float = DEFAULT_CHECK_LOGLOSS_MARGIN

    def __post_init__(self) -> None:
        for name in (
            "auc_margin",
            "logloss_margin",
            "rollback_auc_drop",
            "check_auc_margin",
            "check_logloss_margin",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"expected gate {name} to be a number >= 0, got {value!r}")
        if not isinstance(self.confidence, int | float) or not 0.5 <= self.confidence < 1:
            raise ConfigError(f"expected gate confidence in [0.5, 1), got {self.confidence!r}")
        if not isinstance(self.check_interval_s, int | float) or not self.check_interval_s > 0:
            raise ConfigError(f"expected gate check_interval_s > 0, got {self.check_interval_s!r}")
        for name in ("min_samples", "rollback_history"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected gate {name} to be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Paired:
    """Candidate minus live on the same held-out samples, each with its standard error."""

    auc_delta: float
    auc_se: float
    logloss_delta: float
    logloss_se: float

    @classmethod
    def of(cls, candidate: np.ndarray, live: np.ndarray, labels: np.ndarray) -> Paired:
        return cls(*paired_auc_delta(candidate, live, labels), *paired_logloss_delta(candidate, live, labels))

    def to_dict(self) -> dict[str, float | None]:
        values = {
            "gate_auc_delta": self.auc_delta,
            "gate_auc_se": self.auc_se,
            "gate_logloss_delta": self.logloss_delta,
            "gate_logloss_se": self.logloss_se,
        }
        return {k: round(v, 5) if math.isfinite(v) else None for k, v in values.items()}


@dataclass(frozen=True)
class Verdict:
    """The gate's finding: the held-out metrics of candidate and live, and why not (or None)."""

    metrics: dict[str, Any]
    reason: str | None


def check_settings(settings: GateSettings) -> GateSettings:
    """The rule for the served state between versions: the gate's, with the check margins."""
    return replace(
        settings, auc_margin=settings.check_auc_margin, logloss_margin=settings.check_logloss_margin
    )


def judge(
    model: Ranker,
    vocabs: Vocabularies,
    live: tuple[Ranker, Vocabularies] | None,
    holdout: list[Sample],
    settings: GateSettings,
) -> Verdict:
    """Score the candidate and the live version on the same held-out window, then :func:`decide`."""
    scores, labels = holdout_scores(model, vocabs, holdout)
    candidate = summarize(scores, labels)
    metrics: dict[str, Any] = dict(candidate.to_dict())
    if live is None:
        return Verdict(metrics, decide(candidate, None, None, settings))
    live_scores, _ = holdout_scores(*live, holdout)
    live_metrics = summarize(live_scores, labels)
    shown = live_metrics.to_dict()
    metrics["live_holdout_auc"] = shown["holdout_auc"]
    metrics["live_holdout_logloss"] = shown["holdout_logloss"]
    paired = None
    if candidate.finite and live_metrics.finite and len(labels):
        paired = Paired.of(scores, live_scores, labels)
        metrics.update(paired.to_dict())
    return Verdict(metrics, decide(candidate, live_metrics, paired, settings))


def decide(
    candidate: HoldoutMetrics,
    live: HoldoutMetrics | None,
    paired: Paired | None,
    settings: GateSettings,
) -> str | None:
    """None when the candidate may be published, else the reason it may not.

    Rejected: non-finite scores; a held-out AUC below the live one's by more than
    ``auc_margin``, or a logloss above it by more than ``logloss_margin``, each at the
    one-sided ``confidence`` of its paired difference (the bound, not the point estimate,
    must pass the margin).
    """
    if not candidate.finite:
        return "non-finite scores on the held-out window"
    if live is None or paired is None or candidate.samples < settings.min_samples:
        return None  # nothing to compare with yet
    z = NormalDist().inv_cdf(settings.confidence)
    level = f"{settings.confidence:.0%}"
    if paired.auc_delta + z * paired.auc_se < -settings.auc_margin:
        return (
            f"held-out AUC {candidate.auc:.4f} vs live {live.auc:.4f}: {paired.auc_delta:+.4f}"
            f" (standard error {paired.auc_se:.4f}) is below -{settings.auc_margin} at {level}"
        )
    if paired.logloss_delta - z * paired.logloss_se > settings.logloss_margin:
        return (
            f"held-out logloss {candidate.logloss:.4f} vs live {live.logloss:.4f}:"
            f" {paired.logloss_delta:+.4f} (standard error {paired.logloss_se:.4f}) is above"
            f" +{settings.logloss_margin} at {level}"
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
