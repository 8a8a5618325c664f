"""What the benchmarks share: percentiles and the offline consumer path."""

from __future__ import annotations

import orjson

from freshrank.bench.common import labelled, labelled_records, percentiles
from freshrank.simulator import encode_event


def test_percentiles() -> None:
    values = list(range(1, 101))
    assert percentiles(values, (50, 99)) == {"p50": 50.5, "p99": 99.01}
    assert percentiles([], (50,)) == {"p50": None}


def _raw(event_id: str, etype: str, ts: int, item: str = "i1") -> bytes:
    return encode_event(
        {
            "event_id": event_id,
            "type": etype,
            "ts": ts,
            "user_id": "u1",
            "request_id": "r1",
            "query": "red shoes",
            "item_id": item,
            "position": 0,
        }
    )[1]


def test_labelled_records_run_the_updaters_consumer_path() -> None:
    now = 1_800_000_000_000
    click = _raw("c", "click", now + 5)
    stream = [
        (click, now + 5),  # orphan: a dead letter, forgotten by the deduper
        (_raw("a", "impression", now), now + 6),
        (click, now + 7),  # the same click again, now after its impression: a positive
        (click, now + 8),  # a duplicate
        (b"{not json", now + 9),
        (_raw("b", "impression", now + 10, item="i2"), now + 10),  # waits: drained as a negative
    ]
    samples, counts = labelled_records(stream, window_ms=1_000)
    assert [(s.item_id, s.label) for s in samples] == [("i1", 1), ("i2", 0)]
    assert counts == {"events": 6, "rejected": 2, "duplicates": 1, "samples": 2, "item_updates": 0}


def test_labelled_judges_each_event_at_its_own_time() -> None:
    start = 2_000_000_000_000  # 2033: ahead of any wall clock these tests run under

    def event(event_id: str, etype: str, ts: int, item: str) -> dict[str, object]:
        return {
            "event_id": event_id,
            "type": etype,
            "ts": ts,
            "user_id": "u",
            "request_id": "r",
            "item_id": item,
            "query": "q",
            "position": 0,
        }

    events = [
        event("a", "impression", start, "x"),
        event("b", "impression", start + 5_000, "y"),  # the stream's clock passes x's window
        event("c", "click", start + 5_001, "x"),  # too late: an orphan
    ]
    samples, counts = labelled(events, window_ms=1_000)
    assert [(s.item_id, s.label) for s in samples] == [("x", 0), ("y", 0)]
    assert counts == {"events": 3, "rejected": 1, "duplicates": 0, "samples": 2, "item_updates": 0}


def test_item_updates_in_the_stream_give_the_samples_their_titles() -> None:
    start = 1_700_000_000_000
    item = orjson.dumps({"item_id": "x", "ts": start - 1, "title": "red running shoe"})
    impression = {
        "event_id": "a",
        "type": "impression",
        "ts": start,
        "user_id": "u",
        "request_id": "r",
        "item_id": "x",
        "query": "sneakers",
        "position": 0,
    }
    samples, counts = labelled([{"__item__": item, "ts": start - 1}, impression], window_ms=1_000)
    assert [(s.item_id, s.title) for s in samples] == [("x", "red running shoe")]
    assert counts["item_updates"] == 1 and counts["events"] == 1
