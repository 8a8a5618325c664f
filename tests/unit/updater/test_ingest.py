"""The consumer path: ledger -> clean -> join -> holdout split, as one pure object."""

from __future__ import annotations

import orjson

from rankcore.holdout import is_holdout, is_measured
from rankcore.sample import Sample
from updater.ingest import Ingest, Record

NOW = 1_800_000_000_000
WINDOW_MS = 1_000


def event(event_id: str, etype: str, ts: int, request: str = "r1", item: str = "i1") -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": etype,
            "ts": ts,
            "user_id": "u1",
            "request_id": request,
            "query": "red shoes",
            "item_id": item,
            "position": 0,
            "item": {"category": "shoes", "brand": "acme", "price": 10.0},
        }
    )


def record(offset: int, value: bytes | None, partition: int = 0) -> Record:
    return Record(topic="events", partition=partition, offset=offset, key=b"u1", value=value)


def labels(samples: list[Sample]) -> list[tuple[str, str, int]]:
    return [(s.request_id, s.item_id, s.label) for s in samples]


def test_a_redelivered_offset_is_skipped_before_cleaning() -> None:
    ingest = Ingest(window_ms=WINDOW_MS)
    first = record(0, event("imp", "impression", NOW))
    ingest.process([first, record(1, event("clk", "click", NOW + 10))], NOW + 10)
    again = ingest.process([first, record(1, event("clk", "click", NOW + 10))], NOW + 20)
    assert again.trained == [] and again.dead == []
    assert ingest.counts.events_consumed == 2
    assert ingest.counts.duplicates == 0  # never reached the cleaner
    assert ingest.ledger.redelivered == 2
    assert ingest.positions == {"events:0": 2}


def test_a_duplicate_event_is_counted_not_learned() -> None:
    ingest = Ingest(window_ms=WINDOW_MS)
    impression = event("imp", "impression", NOW)
    out = ingest.process([record(0, impression)], NOW)
    # Its window closes: a negative. The same event again (a producer retry, a new offset) would
    # open a second window and make a second negative if it were not recognised.
    out = ingest.process([record(1, event("late", "impression", NOW + 5_000, request="r2"))], NOW + 5_000)
    assert labels(out.trained) == [("r1", "i1", 0)]
    out = ingest.process([record(2, impression)], NOW + 5_001)
    assert out.trained == [] and out.dead == []
    assert labels(ingest.drain().trained) == [("r2", "i1", 0)]
    counts = ingest.counts
    assert counts.events_consumed == 3 and counts.events_valid == 2
    assert counts.duplicates == 1 and counts.dead_letters == 0


def test_an_orphan_click_is_a_dead_letter_and_a_replay_after_its_impression_joins() -> None:
    ingest = Ingest(window_ms=WINDOW_MS)
    click = event("clk", "click", NOW + 5)
    out = ingest.process([record(0, click)], NOW + 5)
    assert out.trained == []
    [dead] = out.dead
    assert (dead.topic, dead.partition, dead.offset) == ("events", 0, 0)
    assert dead.reason == "orphan_action" and dead.detail
    assert dead.key == b"u1" and dead.raw == click
    assert ingest.counts.dead_letters == 1
    assert ingest.counts.dead_letters_by_reason == {"orphan_action": 1}
    # The impression arrives, then the click is replayed from the dead letters.
    ingest.process([record(1, event("imp", "impression", NOW))], NOW + 6)
    out = ingest.process([record(2, click)], NOW + 7)
    assert labels(out.trained) == [("r1", "i1", 1)] and out.trained[0].action_ts_ms == NOW + 5
    assert out.dead == [] and ingest.counts.duplicates == 0


def test_a_malformed_record_is_a_dead_letter_with_its_reason() -> None:
    ingest = Ingest(window_ms=WINDOW_MS)
    out = ingest.process([record(0, b"{not json"), record(1, None)], NOW)
    assert [(d.offset, d.reason) for d in out.dead] == [(0, "not_json"), (1, "empty_record")]
    assert ingest.counts.dead_letters_by_reason == {"not_json": 1, "empty_record": 1}
    assert ingest.counts.events_valid == 0 and ingest.counts.events_consumed == 2


def _holdout_stream() -> list[Record]:
    records = []
    for n in range(60):
        records.append(record(2 * n, event(f"imp{n}", "impression", NOW + n, request=f"r{n}")))
        if n % 4 == 0:  # some positives (out of process), the rest negatives (out of drain)
            records.append(record(2 * n + 1, event(f"clk{n}", "click", NOW + n + 1, request=f"r{n}")))
    return records


def _split(every: int) -> tuple[list[Sample], list[Sample], Ingest]:
    ingest = Ingest(window_ms=WINDOW_MS, holdout_every=every)
    trained: list[Sample] = []
    held: list[Sample] = []
    for rec in _holdout_stream():
        out = ingest.process([rec], NOW + 100)
        trained += out.trained
        held += out.held_out
    out = ingest.drain()
    return trained + out.trained, held + out.held_out, ingest


def test_the_holdout_split_is_stable_and_counted() -> None:
    trained, held, ingest = _split(3)
    assert held and trained
    assert all(is_holdout(s.request_id, 3) for s in held)
    assert not any(is_holdout(s.request_id, 3) for s in trained)
    assert {s.label for s in held} == {0, 1}  # positives and negatives alike
    assert len(trained) + len(held) == 60
    assert ingest.counts.held_out == len(held)
    again_trained, again_held, _ = _split(3)
    assert labels(again_held) == labels(held) and labels(again_trained) == labels(trained)
    none_trained, none_held, nothing = _split(0)
    assert none_held == [] and len(none_trained) == 60 and nothing.counts.held_out == 0


def test_open_held_out_impressions_count_as_misses_until_clicked() -> None:
    ingest = Ingest(window_ms=WINDOW_MS, holdout_every=3)
    held = [s for s in (f"r{n}" for n in range(60)) if is_holdout(s, 3)]
    ingest.process([record(0, event("a", "impression", NOW, request=held[0]))], NOW)
    ingest.process([record(1, event("b", "impression", NOW, request=held[1]))], NOW)
    ingest.process([record(2, event("c", "impression", NOW, request="r-trained"))], NOW)
    assert not is_holdout("r-trained", 3)
    # Both held-out impressions are waiting: misses as far as is known; the trained one is not held out.
    assert labels(ingest.open_holdout()) == [(held[0], "i1", 0), (held[1], "i1", 0)]
    out = ingest.process([record(3, event("k", "click", NOW + 10, request=held[0]))], NOW + 10)
    # A click makes the sample at once and takes it off the open list: no impression is judged twice.
    assert labels(out.held_out) == [(held[0], "i1", 1)]
    assert labels(ingest.open_holdout()) == [(held[1], "i1", 0)]
    assert Ingest(window_ms=WINDOW_MS).open_holdout() == []


def _second_half(offset: int) -> list[Record]:
    return [
        record(1, event("clk-a", "click", NOW + 20, item="a")),  # redelivered: skipped
        record(offset, event("clk-a", "click", NOW + 20, item="a")),  # duplicate
        record(offset + 1, event("clk-b", "click", NOW + 30, item="b")),  # joins a pending impression
        record(offset + 2, event("clk-z", "click", NOW + 40, item="z")),  # orphan
        record(offset + 3, event("imp-c", "impression", NOW + 50, item="c")),
        record(offset + 4, event("imp-d", "impression", NOW + 5_000, request="r2")),  # closes c's window
    ]


def test_state_restore_round_trip_continues_identically() -> None:
    a = Ingest(window_ms=WINDOW_MS, holdout_every=2)
    a.process(
        [
            record(0, event("imp-a", "impression", NOW, item="a")),
            record(1, event("clk-a", "click", NOW + 20, item="a")),
            record(2, event("imp-b", "impression", NOW + 10, item="b")),
            record(3, b"garbage"),
            record(5, event("imp-p1", "impression", NOW + 10, item="x"), partition=1),
        ],
        NOW + 20,
    )
    b = Ingest(window_ms=WINDOW_MS, holdout_every=2)
    b.restore(orjson.loads(orjson.dumps(a.state())))  # as a checkpoint stores it
    assert b.positions == a.positions == {"events:0": 4, "events:1": 6}
    outs = [
        [
            ingest.process(_second_half(4)[:3], NOW + 30),
            ingest.process(_second_half(4)[3:], NOW + 5_000),
            ingest.drain(),
        ]
        for ingest in (a, b)
    ]
    assert outs[0] == outs[1]
    assert a.counts == b.counts
    assert a.counts.duplicates == 1 and a.counts.dead_letters_by_reason == {"not_json": 1, "orphan_action": 1}
    assert a.state() == b.state()
    samples = sorted(labels([s for out in outs[1] for s in out.trained + out.held_out]))
    assert samples == [("r1", "b", 1), ("r1", "c", 0), ("r1", "x", 0), ("r2", "i1", 0)]


def test_impressions_that_begin_to_wait_are_handed_out_to_be_scored() -> None:
    ingest = Ingest(window_ms=WINDOW_MS, holdout_every=3, measure_every=2)
    requests = [f"r{i}" for i in range(200)]
    held = next(r for r in requests if is_holdout(r, 3) and is_measured(r, 2))
    kept = next(r for r in requests if not is_holdout(r, 3) and is_measured(r, 2))
    skipped = next(r for r in requests if not is_holdout(r, 3) and not is_measured(r, 2))
    out = ingest.process(
        [
            record(0, event("a", "impression", NOW, request=kept)),
            record(1, event("b", "impression", NOW, request=held)),
            record(2, event("c", "impression", NOW, request=kept)),  # the same impression again
            record(3, event("d", "impression", NOW, request=skipped)),
            record(4, event("e", "click", NOW + 10, request=kept)),
        ],
        NOW + 10,
    )
    # Only the measured, trained request's impression, once; its click follows in the same call.
    assert [(s.request_id, s.label) for s in out.opened] == [(kept, 0)]
    assert labels(out.trained) == [(kept, "i1", 1)]
    assert Ingest(window_ms=WINDOW_MS).process([record(0, event("a", "impression", NOW))], NOW).opened == []


def item(offset: int, **fields: object) -> Record:
    body = {"item_id": "i1", "ts": NOW, "title": "red running shoe", **fields}
    return Record(topic="items", partition=0, offset=offset, key=b"i1", value=orjson.dumps(body))


def test_item_updates_feed_the_catalogue_and_fill_what_an_impression_lacks() -> None:
    ingest = Ingest(window_ms=WINDOW_MS, items_topic="items")
    bare = orjson.dumps(
        {
            "event_id": "imp",
            "type": "impression",
            "ts": NOW,
            "user_id": "u1",
            "request_id": "r1",
            "item_id": "i1",
            "position": 0,
            "item": {"brand": "own brand"},
        }
    )
    out = ingest.process(
        [
            item(0, category="shoes", brand="acme", price=59.0),
            Record("items", 0, 1, b"i2", orjson.dumps({"item_id": "i2", "ts": NOW})),
            record(0, bare),
        ],
        NOW,
    )
    assert [(d.topic, d.reason, d.detail) for d in out.dead] == [("items", "missing_field", "title")]
    [sample] = ingest.drain().trained
    # The impression's own brand wins (what the shopper saw); the rest comes from the catalogue.
    assert (sample.category, sample.brand, sample.price) == ("shoes", "own brand", 59.0)
    counts = ingest.counts
    assert (counts.events_consumed, counts.item_updates_consumed, counts.item_updates_valid) == (1, 2, 1)
    assert ingest.positions == {"items:0": 2, "events:0": 1}


def test_an_event_with_a_title_updates_the_catalogue_and_the_state_keeps_it() -> None:
    ingest = Ingest(window_ms=WINDOW_MS, items_topic="items")
    titled = orjson.loads(event("imp", "impression", NOW))
    titled["item"]["title"] = "acme red shoe"
    ingest.process([record(0, orjson.dumps(titled))], NOW)
    known = ingest.catalogue.get("i1")
    assert known is not None and (known.title, known.brand, known.price) == ("acme red shoe", "acme", 10.0)
    again = Ingest(window_ms=WINDOW_MS, items_topic="items")
    again.restore(ingest.state())
    assert again.catalogue.get("i1") == known
    # A redelivered item record is skipped by the ledger like any other.
    again.process([item(0, title="newer")], NOW + 1)
    again.process([item(0, title="newer again")], NOW + 2)
    assert again.catalogue.updates == 2 and again.counts.item_updates_consumed == 1


def test_a_fetch_yields_its_samples_in_the_order_their_labels_became_known() -> None:
    # One fetch spanning 4 s of a backlog: misses of windows that closed inside it and clicks
    # inside it come out interleaved by when each label was known, not clicks first.
    ingest = Ingest(window_ms=WINDOW_MS)
    values = [event(f"imp{k}", "impression", NOW + 1_000 * k, request=f"r{k}") for k in range(4)]
    values += [
        event("clk3", "click", NOW + 3_100, request="r3"),
        event("clk1", "click", NOW + 1_200, request="r1"),
    ]
    values.append(event("imp9", "impression", NOW + 4_500, request="r9"))
    out = ingest.process([record(i, v) for i, v in enumerate(values)], NOW + 4_500)
    # r0's window closed at +1.0 s, r1's click at +1.2, r2's window at +3.0, r3's click at +3.1.
    assert labels(out.trained) == [("r0", "i1", 0), ("r1", "i1", 1), ("r2", "i1", 0), ("r3", "i1", 1)]


def test_a_partition_with_records_still_unread_keeps_its_windows_open() -> None:
    ingest = Ingest(window_ms=WINDOW_MS)
    ingest.process([record(0, event("imp-b", "impression", NOW, request="b"), partition=1)], NOW)
    ahead = [record(i, event(f"imp{i}", "impression", NOW + 500 * i, request=f"a{i}")) for i in range(10)]
    out = ingest.process(ahead, NOW + 5_000, behind={"events:1"})
    assert "b" not in {s.request_id for s in out.trained}
    click = ingest.process(
        [record(1, event("clk-b", "click", NOW + 300, request="b"), partition=1)], NOW + 5_000
    )
    assert labels(click.trained) == [("b", "i1", 1)] and click.dead == []
