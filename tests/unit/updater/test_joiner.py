from __future__ import annotations

import pytest

from rankcore.events import Event, Rejection
from updater.joiner import Joiner


def ev(etype: str, ts: int, request: str = "r1", item: str = "i1", eid: str | None = None) -> Event:
    return Event(
        eid or f"{etype}-{request}-{item}-{ts}",
        etype,
        ts,
        "u1",
        request,
        "red shoes",
        item,
        0,
        "shoes",
        "acme",
        10.0,
        "",
        "",
    )


def test_click_within_window_is_positive_at_once() -> None:
    j = Joiner(window_ms=1000)
    assert j.add(ev("impression", 0)) == []
    samples = j.add(ev("click", 500))
    assert isinstance(samples, list) and len(samples) == 1
    assert samples[0].label == 1 and samples[0].action_ts_ms == 500
    assert j.add(ev("add_to_cart", 700)) == []  # a later action on the same impression
    assert j.extra_actions == 1


def test_window_close_makes_negatives() -> None:
    j = Joiner(window_ms=1000)
    j.add(ev("impression", 0, item="a"))
    j.add(ev("impression", 100, item="b"))
    assert j.expire() == []
    j.add(ev("impression", 1050, item="c"))
    negatives = j.expire()
    assert [s.item_id for s in negatives] == ["a"]
    assert negatives[0].label == 0
    assert j.pending == 2


def test_orphan_action_is_rejected() -> None:
    j = Joiner(window_ms=1000)
    result = j.add(ev("click", 10, request="nope"))
    assert isinstance(result, Rejection) and result.reason == "orphan_action"


def test_late_click_after_window_is_orphan() -> None:
    j = Joiner(window_ms=1000)
    j.add(ev("impression", 0))
    j.add(ev("impression", 5000, item="other"))
    assert len(j.expire()) == 1
    assert isinstance(j.add(ev("click", 5001)), Rejection)


def test_late_click_is_orphan_even_before_expire_runs() -> None:
    # Impression and a click 60 s later in one fetch: the window closed in event time, so the
    # label is a negative and the click an orphan, exactly as when expire() ran in between.
    j = Joiner(window_ms=1000)
    j.add(ev("impression", 0))
    late = j.add(ev("click", 60_000))
    assert isinstance(late, Rejection) and late.reason == "orphan_action"
    assert "past the 1000 ms attribution window" in late.detail
    negatives = j.expire()
    assert [(s.item_id, s.label) for s in negatives] == [("i1", 0)]


def test_click_exactly_at_the_window_edge_still_counts() -> None:
    j = Joiner(window_ms=1000)
    j.add(ev("impression", 0))
    samples = j.add(ev("click", 1000))
    assert isinstance(samples, list) and [s.label for s in samples] == [1]


def test_state_round_trip_keeps_pending_impressions() -> None:
    j = Joiner(window_ms=1000)
    j.add(ev("impression", 0, item="a"))
    j.add(ev("impression", 0, item="b"))
    j.add(ev("click", 10, item="a"))
    k = Joiner(window_ms=1000)
    k.restore(j.state())
    assert k.pending == 1
    assert k.add(ev("add_to_cart", 20, item="a")) == []  # remembered as labelled
    assert [s.label for s in k.add(ev("click", 30, item="b"))] == [1]  # type: ignore[union-attr]


def test_pending_is_bounded() -> None:
    j = Joiner(window_ms=10_000, max_pending=3)
    out = []
    for i in range(5):
        out += j.add(ev("impression", i, item=str(i)))  # type: ignore[arg-type]
    assert j.pending == 3 and [s.item_id for s in out] == ["0", "1"]
    assert j.forced_negatives == 2


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive attribution window"):
        Joiner(window_ms=0)


def test_a_partition_read_ahead_does_not_close_the_windows_of_one_behind() -> None:
    j = Joiner(window_ms=1000, idle_ms=500)
    now = 10_000
    j.add(ev("impression", 0, request="behind"), now, source="events:0")
    # Partition 1's backlog arrives first, far ahead in event time.
    j.add(ev("impression", 5_000, request="ahead"), now, source="events:1")
    assert j.expire(now) == []  # partition 0 is at 0: nothing of it has closed
    positive = j.add(ev("click", 900, request="behind"), now + 100, source="events:0")
    assert isinstance(positive, list) and [s.label for s in positive] == [1]  # not an orphan
    # Partition 0 goes quiet: past idle_ms it no longer holds the watermark back.
    j.add(ev("impression", 1_000, request="later"), now + 100, source="events:0")
    assert j.expire(now + 200) == []
    assert [s.request_id for s in j.expire(now + 700)] == ["later"]
    restored = Joiner(window_ms=1000, idle_ms=500)
    restored.restore(j.state())
    assert restored.state()["sources"] == j.state()["sources"]


def test_a_partition_whose_turn_has_not_come_keeps_its_windows_open_past_idle() -> None:
    # A backlog: partition 0 is read 30 s of stream time ahead while partition 1, with an
    # impression open and its click still unread on the broker, waits longer than idle_ms.
    j = Joiner(window_ms=10_000, idle_ms=2_000)
    now = 100_000
    j.add(ev("impression", 1_000, request="p1"), now, source="events:1")
    for ts in range(1_000, 31_000, 1_000):
        j.add(ev("impression", ts, request=f"p0-{ts}"), now, source="events:0")
    later = now + 5_000
    closed = j.expire(later, behind={"events:1"})
    assert "p1" not in {s.request_id for s in closed}
    assert all(s.request_id.startswith("p0-") for s in closed) and len(closed) == 19  # its own windows
    positive = j.add(ev("click", 3_000, request="p1"), later, source="events:1")
    assert isinstance(positive, list) and [s.label for s in positive] == [1]


def test_a_quiet_partition_closes_by_the_others_progress() -> None:
    j = Joiner(window_ms=10_000, idle_ms=2_000)
    now = 100_000
    j.add(ev("impression", 1_000, request="quiet"), now, source="events:1")
    j.add(ev("impression", 30_000, request="busy"), now + 3_000, source="events:0")
    # Partition 1 has nothing more to read and was last heard 3 s ago: its miss closes.
    assert [s.request_id for s in j.expire(now + 3_000)] == ["quiet"]
    assert j.watermark_ms == 30_000


def test_each_open_impression_keeps_its_source_across_a_checkpoint() -> None:
    j = Joiner(window_ms=10_000, idle_ms=2_000)
    now = 100_000
    j.add(ev("impression", 1_000, request="behind"), now, source="events:1")
    j.add(ev("impression", 40_000, request="ahead"), now, source="events:0")
    restored = Joiner(window_ms=10_000, idle_ms=2_000)
    restored.restore(j.state())
    assert restored.expire(now + 5_000, behind={"events:1"}) == []
    assert [s.request_id for s in restored.expire(now + 5_000)] == ["behind"]


def test_a_checkpoint_without_pending_sources_closes_them_by_the_watermark() -> None:
    j = Joiner(window_ms=1_000)
    j.add(ev("impression", 0, request="old"), 10_000, source="events:0")
    state = j.state()
    del state["pending_sources"]
    restored = Joiner(window_ms=1_000)
    restored.restore(state)
    assert restored.expire(10_000) == []
    restored.add(ev("impression", 5_000, request="new"), 10_000, source="events:0")
    assert [s.request_id for s in restored.expire(10_000)] == ["old"]


def test_memory_bound_closes_the_oldest_across_sources() -> None:
    j = Joiner(window_ms=10_000, max_pending=2)
    j.add(ev("impression", 5, request="a"), source="events:0")
    j.add(ev("impression", 1, request="b"), source="events:1")
    forced = j.add(ev("impression", 9, request="c"), source="events:0")
    assert isinstance(forced, list) and [s.request_id for s in forced] == ["b"]
    assert [s.request_id for s in j.drain()] == ["a", "c"]


def test_while_it_is_not_known_which_partitions_have_unread_records_none_is_quiet() -> None:
    # A restart mid-backlog: the checkpoint's last-heard times are old, and until the consumer
    # group has joined and fetched (behind=None) no partition may count as quiet.
    j = Joiner(window_ms=10_000, idle_ms=2_000)
    j.add(ev("impression", 75_000, request="slow"), 100_000, source="events:1")
    j.add(ev("impression", 100_000, request="fast"), 100_000, source="events:0")
    restored = Joiner(window_ms=10_000, idle_ms=2_000)
    restored.restore(j.state())
    assert restored.expire(160_000, behind=None) == []
    # Once known: both are caught up and quiet, so the fastest one's progress closes "slow".
    assert [s.request_id for s in restored.expire(160_000, behind=frozenset())] == ["slow"]
