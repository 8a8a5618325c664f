from __future__ import annotations

from tests.unit.helpers import sample
from updater.batcher import Batcher


def test_batcher_cuts_by_size_and_age() -> None:
    b = Batcher(size=3, max_wait_s=1.0)
    assert b.add([sample(1), sample(2)], now=0.0) == []
    full = b.add([sample(3), sample(4)], now=0.5)
    assert [len(x) for x in full] == [3] and len(b) == 1
    assert not b.due(1.0)
    assert b.due(1.6)
    assert len(b.flush()) == 1 and len(b) == 0
