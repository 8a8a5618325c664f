"""Prequential (test-then-train) metrics: every sample is scored before it is learned."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_WINDOW = 10_000
_EPS = 1e-7


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve with tied scores averaged; NaN when one class is missing."""
    labels = labels.astype(bool)
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank over runs of equal scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(scores: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(scores.astype(np.float64), _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


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
