"""The items contract and the catalogue it feeds."""

from __future__ import annotations

from dataclasses import astuple

import orjson
import pytest

from rankcore.catalogue import Catalogue, Item
from rankcore.events import Rejection
from rankcore.items import MAX_TITLE_CHARS, ItemUpdate, parse_item

NOW = 1_800_000_000_000


def record(**fields: object) -> bytes:
    return orjson.dumps({"item_id": "i1", "ts": NOW, "title": "Trail running shoe", **fields})


def test_a_full_update_is_parsed() -> None:
    got = parse_item(
        record(category="shoes", brand="acme", price=59.5, attributes={"size": "42", "color": "red"}), NOW
    )
    assert got == ItemUpdate(
        "i1", NOW, "Trail running shoe", "shoes", "acme", 59.5, (("color", "red"), ("size", "42"))
    )
    assert parse_item(record(), NOW) == ItemUpdate("i1", NOW, "Trail running shoe")


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"", "empty_record", ""),
        (b"{oops", "not_json", None),
        (b"[1]", "not_object", "list"),
        (orjson.dumps({"ts": NOW, "title": "x"}), "missing_field", "item_id"),
        (orjson.dumps({"item_id": "i1", "title": "x"}), "missing_field", "ts"),
        (orjson.dumps({"item_id": "i1", "ts": NOW}), "missing_field", "title"),
        (record(title=7), "wrong_type", "title"),
        (record(title="x" * (MAX_TITLE_CHARS + 1)), "bad_value", None),
        (record(ts=NOW + 7_200_000), "bad_timestamp", None),
        (record(price=-1), "bad_value", "price"),
        (record(price="9"), "wrong_type", "price"),
        (record(brand=["a"]), "wrong_type", "brand"),
        (record(attributes=["a"]), "wrong_type", "attributes"),
        (record(attributes={"size": 42}), "wrong_type", "attributes.size"),
        (record(attributes={str(i): "v" for i in range(65)}), "bad_value", None),
    ],
)
def test_a_bad_update_is_rejected_with_its_reason(raw: bytes, reason: str, detail: str | None) -> None:
    got = parse_item(raw, NOW)
    assert isinstance(got, Rejection) and got.reason == reason
    if detail is not None:
        assert got.detail == detail


def update(ts: int, **fields: object) -> ItemUpdate:
    return ItemUpdate(
        item_id=str(fields.pop("item_id", "i1")), ts_ms=ts, title=str(fields.pop("title", "t")), **fields
    )  # type: ignore[arg-type]


def test_updates_merge_by_event_time_and_an_older_one_changes_nothing() -> None:
    c = Catalogue()
    assert c.apply(update(10, category="shoes", price=50.0))
    assert c.apply(update(20, title="new title", price=45.0))  # category left out: kept
    assert c.get("i1") == Item("i1", 20, "new title", "shoes", "", 45.0)
    assert not c.apply(update(15, title="old", price=99.0))
    assert c.get("i1") == Item("i1", 20, "new title", "shoes", "", 45.0)
    assert (c.updates, c.stale) == (2, 1)


def test_the_catalogue_is_bounded_and_round_trips() -> None:
    c = Catalogue(capacity=2)
    for n, item in enumerate(("a", "b", "a", "c")):
        c.apply(update(n, item_id=item, attributes=(("k", item),)))
    assert c.get("b") is None and len(c) == 2 and c.forgotten == 1  # "b" was updated least recently
    restored = Catalogue(capacity=2)
    restored.restore(c.state())
    assert restored.get("a") == c.get("a") and restored.get("c") == c.get("c")
    assert (restored.updates, restored.forgotten) == (4, 1)
    # Checkpoints from before the columns held rows of tuples.
    legacy = Catalogue(capacity=2)
    rows = [astuple(item) for item in (c.get("a"), c.get("c")) if item is not None]
    legacy.restore({"capacity": 2, "items": rows, "counters": [4, 0, 1]})
    assert legacy.get("a") == c.get("a") and legacy.get("c") == c.get("c")
    with pytest.raises(ValueError, match="capacity"):
        Catalogue(0)
