"""Freshness: how long after a shopper's action a version that learned it answered requests."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

FRESHNESS_MEMORY = 50_000


def percentile(values: Iterable[float], q: float) -> float | None:
    return percentiles(values, q)[0]


def percentiles(values: Iterable[float], *qs: float) -> list[float | None]:
    """Several percentiles of ``values`` in one pass (None each when there are none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    return [float(v) for v in np.percentile(arr, qs)] if arr.size else [None] * len(qs)


class Freshness:
    """Time from an action to the first response of a version that learned it.

    The trainer reports the action times it learned (:meth:`learned`); a snapshot takes them
    (:meth:`take`); when its version serves, each gets its freshness (:meth:`served`), and when
    it does not, they wait for a later version (:meth:`requeue`).
    """

    def __init__(
        self, memory: int = FRESHNESS_MEMORY, on_served: Callable[[Sequence[float]], None] | None = None
    ) -> None:
        self._on_served = on_served
        self._pending: deque[int] = deque(maxlen=memory)
        # (action time, freshness) in seconds: percentiles of the second, benchmarks pick the
        # actions of a chosen period by the first.
        self.by_action: deque[tuple[float, float]] = deque(maxlen=memory)

    def __len__(self) -> int:
        return len(self._pending)

    def learned(self, action_ts_ms: Iterable[int]) -> None:
        self._pending.extend(action_ts_ms)

    def take(self) -> list[int]:
        out = list(self._pending)
        self._pending.clear()
        return out

    def requeue(self, action_ts_ms: list[int]) -> None:
        self._pending.extendleft(reversed(action_ts_ms))

    def served(self, action_ts_ms: list[int], served_at: float) -> list[float]:
        fresh = [served_at - ts / 1000.0 for ts in action_ts_ms]
        self.by_action.extend((ts / 1000.0, f) for ts, f in zip(action_ts_ms, fresh, strict=True))
        if self._on_served is not None and fresh:
            self._on_served(fresh)
        return fresh

    def percentile(self, q: float) -> float | None:
        return percentile((f for _, f in self.by_action), q)

    def percentiles(self, *qs: float) -> list[float | None]:
        return percentiles((f for _, f in self.by_action), *qs)

    def served_since(self, since: float) -> list[float]:
        """The freshness of what was served at ``since`` or later (an action's time plus its
        freshness is when it was served; :attr:`by_action` is in the order served)."""
        out = []
        for action_at, fresh in reversed(self.by_action):
            if action_at + fresh < since:
                break
            out.append(fresh)
        return out
