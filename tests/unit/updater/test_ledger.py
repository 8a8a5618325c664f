from __future__ import annotations

from updater.ledger import Ledger


def test_ledger_counts_ranges_and_refuses_redelivery() -> None:
    ledger = Ledger()
    assert all(ledger.accept("events:0", o) for o in (5, 6, 7))
    assert ledger.accept("events:1", 0)
    assert not ledger.accept("events:0", 6)  # already consumed by this state
    assert ledger.redelivered == 1
    assert ledger.positions() == {"events:0": 8, "events:1": 1}
    assert ledger.total_records() == 4


def test_ledger_gaps_keep_it_consistent_and_round_trip() -> None:
    ledger = Ledger()
    ledger.accept("events:0", 0)
    ledger.accept("events:0", 3)  # the broker skipped 1 and 2
    assert ledger.ranges["events:0"].gaps == 2
    other = Ledger()
    other.restore(ledger.state())
    assert other.positions() == {"events:0": 4} and other.total_records() == 2
