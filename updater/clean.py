"""Cleaning: validation and normalisation (see :mod:`rankcore.events`) plus dedup by ``event_id``."""

from __future__ import annotations

from collections import OrderedDict

from rankcore.events import Event, Rejection, parse_event

DEFAULT_DEDUP_CAPACITY = 1_000_000


class Deduper:
    """Remembers the most recent ``capacity`` event ids; older ids are forgotten first."""

    def __init__(self, capacity: int = DEFAULT_DEDUP_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError(f"expected a positive dedup capacity, got {capacity!r}")
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, event_id: str) -> bool:
        """Record ``event_id``; return True when it was already recorded."""
        if event_id in self._seen:
            return True
        self._seen[event_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def forget(self, event_id: str) -> None:
        """Drop ``event_id`` (its event went to the dead letters, so a replay must get through)."""
        self._seen.pop(event_id, None)

    def state(self) -> list[str]:
        return list(self._seen)

    def restore(self, ids: list[str]) -> None:
        self._seen = OrderedDict.fromkeys(ids[-self.capacity :])


class Duplicate:
    """Marker for a valid event whose ``event_id`` was already seen."""

    __slots__ = ()


DUPLICATE = Duplicate()


class Cleaner:
    """Turns raw record values into events, rejections or duplicates, counting each."""

    def __init__(self, dedup_capacity: int = DEFAULT_DEDUP_CAPACITY) -> None:
        self.deduper = Deduper(dedup_capacity)
        self.duplicates = 0

    def clean(self, raw: bytes | None, now_ms: int) -> Event | Rejection | Duplicate:
        result = parse_event(raw, now_ms)
        if isinstance(result, Event) and self.deduper.seen(result.event_id):
            self.duplicates += 1
            return DUPLICATE
        return result
