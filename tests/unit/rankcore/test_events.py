from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankcore.events import (
    Event,
    Rejection,
    _checked,
    _well_formed,
    normalise_query,
    parse_event,
    query_tokens,
)

NOW = 1_800_000_000_000


def good(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "e1",
        "type": "impression",
        "ts": NOW - 1000,
        "user_id": "u1",
        "request_id": "r1",
        "query": "  iPhone   12 ",
        "item_id": "i1",
        "position": 3,
        "item": {"category": "Phone", "brand": "acme", "price": 199.5},
        "context": {"device": "Mobile", "country": "de"},
        "unknown_field": {"ignored": True},
    }
    event.update(overrides)
    return event


def parse(obj: object) -> Event | Rejection:
    return parse_event(orjson.dumps(obj), NOW)


def test_valid_event_is_normalised() -> None:
    event = parse(good())
    assert isinstance(event, Event)
    assert event.query == "iphone 12"
    assert event.category == "Phone"  # ids stay verbatim: the serving graph maps them raw
    assert event.country == "de"
    assert event.price == 199.5
    assert event.position == 3


def test_iso_timestamp_and_optional_parts() -> None:
    event = parse(good(ts="2026-11-29T10:00:00Z", type="click", item=None, context=None))
    assert isinstance(event, Event)
    assert event.ts_ms == 1_795_946_400_000
    assert event.category == "" and event.price == 0.0


BAD: list[tuple[bytes | None, str]] = [
    (b"", "empty_record"),
    (None, "empty_record"),
    (b"{" + b'"a":"' + b"x" * 70_000 + b'"}', "too_large"),
    (b"\xff\xfe{}", "not_utf8"),
    (b"{not json", "not_json"),
    (b"NaN", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"just a string"', "not_object"),
    (b"[" * 5000 + b"]" * 5000, "not_json"),
    (orjson.dumps({k: v for k, v in good().items() if k != "user_id"}), "missing_field"),
    (orjson.dumps({k: v for k, v in good().items() if k != "ts"}), "missing_field"),
    (orjson.dumps({k: v for k, v in good().items() if k != "position"}), "missing_field"),
    (orjson.dumps(good(user_id="")), "missing_field"),
    (orjson.dumps(good(user_id=["u"])), "wrong_type"),
    (orjson.dumps(good(position="3")), "wrong_type"),
    (orjson.dumps(good(ts="yesterday")), "wrong_type"),
    (orjson.dumps(good(ts=True)), "wrong_type"),
    (orjson.dumps(good(item={"price": "cheap"})), "wrong_type"),
    (orjson.dumps(good(item=[1])), "wrong_type"),
    (
        b'{"event_id":"e","type":"click","ts":1800000000000,"user_id":"u","request_id":"r","item_id":"i",'
        b'"item":{"price":Infinity}}',
        "not_json",
    ),
    (orjson.dumps(good(item={"price": -1.0})), "bad_value"),
    (orjson.dumps(good(item={"price": 1e12})), "bad_value"),
    (orjson.dumps(good(position=-1)), "bad_value"),
    (orjson.dumps(good(user_id="u" * 1_000_000)), "too_large"),
    (orjson.dumps(good(user_id="u" * 300)), "bad_value"),
    (orjson.dumps(good(type="wishlist")), "unknown_type"),
    (orjson.dumps(good(ts=NOW + 10 * 24 * 3600 * 1000)), "bad_timestamp"),
    (orjson.dumps(good(ts=900_000_000_000)), "bad_timestamp"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD)
def test_bad_records_get_a_specific_reason(raw: bytes | None, reason: str) -> None:
    result = parse_event(raw, NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == reason


@given(st.binary(max_size=300))
def test_any_bytes_end_in_event_or_rejection(raw: bytes) -> None:
    assert isinstance(parse_event(raw, NOW), Event | Rejection)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(list(good())), json_values, max_size=5), st.booleans())
def test_any_json_object_ends_in_event_or_rejection(changes: dict[str, object], drop: bool) -> None:
    """Valid events with some fields replaced (or only the replaced fields kept)."""
    obj = changes if drop else {**good(), **changes}
    assert isinstance(parse(obj), Event | Rejection)


item_values = st.dictionaries(
    st.sampled_from(["category", "brand", "price"]),
    st.none() | st.integers(-5, 2**40) | st.floats() | st.text(max_size=300) | st.booleans(),
    max_size=3,
)
field_values = (
    json_values | item_values | st.integers(NOW - 10**13, NOW + 10**8) | st.text(min_size=250, max_size=600)
)


def test_the_fast_path_takes_the_common_event() -> None:
    obj = orjson.loads(orjson.dumps(good()))
    fast = _well_formed(obj, NOW)
    assert fast is not None
    assert fast == _checked(obj, NOW)
    assert _well_formed({**obj, "ts": NOW + 10**8}, NOW) is None  # out of range: the full checks say why


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(st.dictionaries(st.sampled_from(list(good())), field_values, max_size=4))
def test_the_fast_path_accepts_only_what_the_full_checks_accept(changes: dict[str, object]) -> None:
    """The consumer's fast path builds exactly the event the full checks build, or defers."""
    obj = orjson.loads(orjson.dumps({**good(), **changes}))
    fast = _well_formed(obj, NOW)
    if fast is not None:
        assert _checked(obj, NOW) == fast


def test_query_tokens_match_the_graph_split() -> None:
    # Lower case, runs of spaces collapsed; a tab stays inside its token, as in the graph.
    assert normalise_query(" Red  Shoes   XL ") == "red shoes xl"
    assert normalise_query("Red\tShoes XL") == "red\tshoes xl"
    assert query_tokens("red shoes xl") == ["red", "shoes", "xl"]
    assert query_tokens("") == []
