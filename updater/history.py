"""The dashboard's time series: one point a second from the updater's status, the last hour kept.

Pure: :meth:`History.record` takes a :class:`~updater.status.Status` and the freshness measured in
the last minute; :meth:`History.columns` gives the series column by column (the layout the
dashboard's charts take). Rates are differences of the status counters between points.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from exporter.freshness import percentiles
from updater.status import Status

HISTORY_POINTS = 3_600
FRESHNESS_WINDOW_S = 60.0
SERIES = (
    "t",
    "events_per_s",
    "dead_letters_per_s",
    "samples_per_s",
    "lag",
    "prequential_auc",
    "holdout_auc",
    "served_version",
    "freshness_p50_s",
    "freshness_p95_s",
    "freshness_p99_s",
)


class History:
    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self._series: dict[str, deque[float | None]] = {name: deque(maxlen=points) for name in SERIES}
        self._last: tuple[float, int, int, int] | None = None

    def __len__(self) -> int:
        return len(self._series["t"])

    def record(self, status: Status, fresh_last_minute: Sequence[float]) -> None:
        t = status.updated_at
        counts = (status.events_consumed, status.dead_letters, status.samples_trained)
        rates: list[float | None] = [None, None, None]
        if self._last is not None and t > self._last[0]:
            dt = t - self._last[0]
            # A counter that went back (a restarted process's) has no rate at this point.
            rates = [(c - p) / dt if c >= p else None for c, p in zip(counts, self._last[1:], strict=True)]
        self._last = (t, *counts)
        fresh = percentiles(fresh_last_minute, 50, 95, 99)
        point: dict[str, float | None] = {
            "t": t,
            "events_per_s": rates[0],
            "dead_letters_per_s": rates[1],
            "samples_per_s": rates[2],
            "lag": status.consumer_lag,
            "prequential_auc": status.prequential_auc,
            "holdout_auc": status.served_holdout.get("auc"),
            "served_version": status.served_version,
            "freshness_p50_s": fresh[0],
            "freshness_p95_s": fresh[1],
            "freshness_p99_s": fresh[2],
        }
        for name, series in self._series.items():
            series.append(_rounded(point[name]))

    def columns(self) -> dict[str, list[float | None]]:
        return {name: list(series) for name, series in self._series.items()}


def _rounded(x: float | None) -> float | None:
    if x is None or x != x:  # None, NaN
        return None
    return round(float(x), 4)


def dashboard(status: Status, history: History) -> dict[str, Any]:
    """What the dashboard page shows: the series, the release timeline and the latest figures."""
    return {
        "series": history.columns(),
        "timeline": status.timeline,
        "now": {
            "updated_at": status.updated_at,
            "uptime_s": status.uptime_s,
            "events_consumed": status.events_consumed,
            "samples_trained": status.samples_trained,
            "dead_letters": status.dead_letters,
            "consumer_lag": status.consumer_lag,
            "served_version": status.served_version,
            "live_version": status.live_version,
            "versions_published": status.versions_published,
            "versions_rejected": status.versions_rejected,
            "rollbacks": status.rollbacks,
            "prequential_auc": status.prequential_auc,
            "holdout_auc": status.served_holdout.get("auc"),
            "freshness_p50_s": status.freshness_p50_s,
            "freshness_p95_s": status.freshness_p95_s,
            "freshness_p99_s": status.freshness_p99_s,
            "serving": status.serving,
            "held": bool(status.deltas.get("held")),
            "device": status.device,
            "group": status.group,
        },
        "dead_letters_by_reason": status.dead_letters_by_reason,
        "lag_by_partition": status.consumer_lag_by_partition,
        "dependencies": {name: dep.get("ok") for name, dep in status.dependencies.items()},
    }
