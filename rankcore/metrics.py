"""Metrics: AUC and logloss, paired comparisons of two models on the same samples, and the
prequential (test-then-train) window, where every sample is scored before it is learned."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_WINDOW = 10_000
_EPS = 1e-7


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, runs of equal values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve with tied scores averaged; NaN when one class is missing."""
    labels = labels.astype(bool)
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = midranks(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _losses(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(np.float64), _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return np.asarray(-(y * np.log(p) + (1 - y) * np.log(1 - p)))


def logloss(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(_losses(scores, labels).mean())


def paired_auc_delta(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``AUC(a) - AUC(b)`` for two models' scores of the same samples, and its standard error.

    DeLong, DeLong and Clarke-Pearson (1988) in the O(n log n) form of Sun and Xu (2014): the
    two AUCs are correlated (same samples), and the variance of their difference uses that
    covariance, so a small but consistent difference is told apart from noise. NaN, NaN
    when one class is missing.
    """
    y = labels.astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return math.nan, math.nan
    v10, v01, aucs = [], [], []
    for s in (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)):
        x, z = s[y], s[~y]
        tx, tz, tall = midranks(x), midranks(z), midranks(np.concatenate([x, z]))
        aucs.append((tall[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v10.append((tall[:m] - tx) / n)  # per positive: share of negatives it outranks
        v01.append(1.0 - (tall[m:] - tz) / m)  # per negative: share of positives above it
    var = 0.0
    for v, count in ((v10, m), (v01, n)):
        if count > 1:
            cov = np.cov(np.stack(v))
            var += (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / count
    return float(aucs[0] - aucs[1]), math.sqrt(max(var, 0.0))


def paired_logloss_delta(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``logloss(a) - logloss(b)`` on the same samples and its standard error (per-sample
    differences, so what the two models share cancels); NaN, NaN for no samples."""
    d = _losses(a, labels) - _losses(b, labels)
    if len(d) == 0:
        return math.nan, math.nan
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return float(d.mean()), se


class Prequential:
    """Running logloss over everything, AUC over a sliding window of recent samples."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self._scores = np.zeros(window, dtype=np.float32)
        self._labels = np.zeros(window, dtype=np.float32)
        self._next = 0
        self.count = 0
        self.positives = 0
        self._logloss_sum = 0.0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        n = len(scores)
        if n == 0:
            return
        self.count += n
        self.positives += int(labels.sum())
        self._logloss_sum += logloss(scores, labels) * n
        if n >= self.window:
            scores, labels = scores[-self.window :], labels[-self.window :]
            n = self.window
        idx = (self._next + np.arange(n)) % self.window
        self._scores[idx] = scores
        self._labels[idx] = labels
        self._next = int((self._next + n) % self.window)

    def auc(self) -> float:
        filled = min(self.count, self.window)
        return auc(self._scores[:filled], self._labels[:filled]) if filled else math.nan

    def logloss(self) -> float:
        return self._logloss_sum / self.count if self.count else math.nan

    def state(self) -> dict[str, object]:
        return {
            "window": self.window,
            "scores": self._scores.copy(),
            "labels": self._labels.copy(),
            "next": self._next,
            "count": self.count,
            "positives": self.positives,
            "logloss_sum": self._logloss_sum,
        }

    def restore(self, state: dict[str, object]) -> None:
        self.window = int(state["window"])  # type: ignore[call-overload]
        self._scores = np.asarray(state["scores"], dtype=np.float32)
        self._labels = np.asarray(state["labels"], dtype=np.float32)
        self._next = int(state["next"])  # type: ignore[call-overload]
        self.count = int(state["count"])  # type: ignore[call-overload]
        self.positives = int(state["positives"])  # type: ignore[call-overload]
        self._logloss_sum = float(state["logloss_sum"])  # type: ignore[arg-type]
