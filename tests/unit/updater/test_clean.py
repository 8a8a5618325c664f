from __future__ import annotations

from rankcore.events import Event
from updater.clean import DUPLICATE, Cleaner, Deduper


def test_deduper_forgets_oldest_beyond_capacity() -> None:
    d = Deduper(capacity=2)
    assert not d.seen("a") and not d.seen("b")
    assert d.seen("a")
    assert not d.seen("c")  # evicts "a", the oldest
    restored = Deduper(2)
    restored.restore(d.state())
    assert restored.seen("b") and restored.seen("c")
    assert not restored.seen("a")


def test_cleaner_counts_duplicates() -> None:
    c = Cleaner()
    raw = b'{"event_id":"x","type":"click","ts":1800000000000,"user_id":"u","request_id":"r","item_id":"i"}'
    assert isinstance(c.clean(raw, 1_800_000_000_000), Event)
    assert c.clean(raw, 1_800_000_000_000) is DUPLICATE
    assert c.duplicates == 1
