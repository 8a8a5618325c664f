"""Metrics: AUC and logloss, paired comparisons of two models on the same samples, and the
prequential (test-then-train) window, where every sample is scored before it is learned."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

import numpy as np

DEFAULT_WINDOW = 10_000
# As many as the join state holds by default (updater.joiner.DEFAULT_MAX_PENDING).
DEFAULT_MAX_EXPECTED = 500_000
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
    """Test-then-train metrics: running logloss over everything, AUC over the last ``window``.

    A positive is learned at its click and a negative only when its attribution window closes,
    so scoring each sample when it is learned compares the two classes under different model
    states (at the start, positives under a model that has seen nothing but positives). With
    :meth:`expect`, a sample instead counts with the score its impression got when it arrived,
    and enters the AUC window once its label is final, in impression-time order: a positive
    waits until the negatives of its impression time have come out (they come out in deadline
    order), or until ``window`` positives wait. Once anything has been expected, only expected
    samples count in the AUC and the logloss (the caller may score a sample of requests); before
    that, every sample counts with the score it was learned with.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, max_expected: int = DEFAULT_MAX_EXPECTED) -> None:
        self.window = window
        self.max_expected = max_expected
        self._scores = np.zeros(window, dtype=np.float32)
        self._labels = np.zeros(window, dtype=np.float32)
        self._next = 0
        self.filled = 0
        self.count = 0
        self.positives = 0
        self._logloss_sum = 0.0
        self._logloss_n = 0
        self.expecting = False  # set by the first expect(): from then on only expected samples count
        # (request_id, item_id) -> the impression's score, oldest first.
        self._expected: dict[tuple[str, str], float] = {}
        self._waiting: list[tuple[int, float]] = []  # positives, a min-heap of (impression ts, score)
        self._final_ts_ms = 0

    def expect(self, keys: Sequence[tuple[str, str]], scores: np.ndarray) -> None:
        """Remember the scores impressions got when they arrived (bounded: the oldest go first)."""
        self.expecting = True
        expected = self._expected
        for key, value in zip(keys, scores.tolist(), strict=True):
            expected[key] = value
        excess = len(expected) - self.max_expected
        if excess > 0:
            for key in list(itertools.islice(expected, excess)):
                del expected[key]

    def update(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        keys: Sequence[tuple[str, str]] | None = None,
        impression_ts_ms: np.ndarray | None = None,
    ) -> None:
        """Count samples scored ``scores`` as they were learned (impression-time scores win)."""
        n = len(scores)
        if n == 0:
            return
        self.count += n
        self.positives += int(labels.sum())
        if self.expecting and keys is not None:
            pop, missing = self._expected.pop, math.nan
            scores = np.fromiter((pop(k, missing) for k in keys), dtype=np.float32, count=n)
            counted = ~np.isnan(scores)
            if not counted.all():
                scores, labels = scores[counted], labels[counted]
                if impression_ts_ms is not None:
                    impression_ts_ms = impression_ts_ms[counted]
                n = len(scores)
                if n == 0:
                    return
        self._logloss_n += n
        self._logloss_sum += logloss(scores, labels) * n
        if impression_ts_ms is None:
            self._push(scores, labels)
            return
        negative = labels == 0
        if negative.any():
            self._final_ts_ms = max(self._final_ts_ms, int(impression_ts_ms[negative].max()))
        for ts, value in zip(impression_ts_ms[~negative].tolist(), scores[~negative].tolist(), strict=True):
            heapq.heappush(self._waiting, (ts, value))
        ready: list[float] = []
        waiting = self._waiting
        while waiting and (waiting[0][0] <= self._final_ts_ms or len(waiting) > self.window):
            ready.append(heapq.heappop(waiting)[1])
        self._push(
            np.concatenate([scores[negative], np.asarray(ready, dtype=np.float32)]),
            np.concatenate([labels[negative], np.ones(len(ready), dtype=np.float32)]),
        )

    def _push(self, scores: np.ndarray, labels: np.ndarray) -> None:
        n = len(scores)
        if n == 0:
            return
        if n >= self.window:
            scores, labels = scores[-self.window :], labels[-self.window :]
            n = self.window
        idx = (self._next + np.arange(n)) % self.window
        self._scores[idx] = scores
        self._labels[idx] = labels
        self._next = int((self._next + n) % self.window)
        self.filled = min(self.filled + n, self.window)

    @property
    def expected(self) -> int:
        return len(self._expected)

    def auc(self) -> float:
        filled = self.filled
        return auc(self._scores[:filled], self._labels[:filled]) if filled else math.nan

    def logloss(self) -> float:
        return self._logloss_sum / self._logloss_n if self._logloss_n else math.nan

    def state(self) -> dict[str, object]:
        return {
            "window": self.window,
            "scores": self._scores.copy(),
            "labels": self._labels.copy(),
            "next": self._next,
            "filled": self.filled,
            "count": self.count,
            "positives": self.positives,
            "logloss_sum": self._logloss_sum,
            "logloss_n": self._logloss_n,
            "expecting": self.expecting,
            "expected": [(r, i, v) for (r, i), v in self._expected.items()],
            "waiting": list(self._waiting),
            "final_ts_ms": self._final_ts_ms,
        }

    def restore(self, state: dict[str, object]) -> None:
        self.window = int(state["window"])  # type: ignore[call-overload]
        self._scores = np.asarray(state["scores"], dtype=np.float32)
        self._labels = np.asarray(state["labels"], dtype=np.float32)
        self._next = int(state["next"])  # type: ignore[call-overload]
        self.count = int(state["count"])  # type: ignore[call-overload]
        self.positives = int(state["positives"])  # type: ignore[call-overload]
        self._logloss_sum = float(state["logloss_sum"])  # type: ignore[arg-type]
        # Checkpoints before impression-time scoring filled the window in order and held no more.
        self.filled = int(state.get("filled", min(self.count, self.window)))  # type: ignore[call-overload]
        self._logloss_n = int(state.get("logloss_n", self.count))  # type: ignore[call-overload]
        self.expecting = bool(state.get("expecting", False))
        self._expected = {(r, i): float(v) for r, i, v in state.get("expected", [])}  # type: ignore[attr-defined]
        self._waiting = [(int(t), float(v)) for t, v in state.get("waiting", [])]  # type: ignore[attr-defined]
        heapq.heapify(self._waiting)
        self._final_ts_ms = int(state.get("final_ts_ms", 0))  # type: ignore[call-overload]
