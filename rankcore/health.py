"""Dependency health as the updater sees it: up or down, since when, and why."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Health:
    """One dependency; :meth:`mark` logs each change between up and down once."""

    name: str
    ok: bool | None = None  # None: not checked yet
    since: float = 0.0
    error: str | None = None
    outages: int = 0
    longest_outage_s: float = 0.0

    def mark(self, ok: bool, error: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if ok == self.ok:
            if not ok:
                self.error = error
            return
        if ok and self.ok is False:
            down_for = now - self.since
            self.longest_outage_s = max(self.longest_outage_s, down_for)
            log.warning("%s is back after %.1f s", self.name, down_for)
        elif not ok:
            self.outages += 1
            log.warning("%s is unavailable: %s", self.name, error)
        self.ok, self.since, self.error = ok, now, (None if ok else error)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "since": self.since or None,
            "error": self.error,
            "outages": self.outages,
            "longest_outage_s": round(self.longest_outage_s, 1),
        }
