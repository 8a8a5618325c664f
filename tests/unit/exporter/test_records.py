"""Registry operations: typed, round-tripped through the outbox's JSON form, validated."""

from __future__ import annotations

import orjson
import pytest

from exporter.records import (
    AddVersion,
    ListSink,
    MarkLive,
    Serving,
    SetServing,
    SetStatus,
    from_dict,
    to_dict,
)


@pytest.mark.parametrize(
    "op",
    [
        AddVersion(7, "published", {"events:0": 12}, 12, {"holdout_auc": 0.7}, "/r/ranker/7", 10, "ab"),
        AddVersion(8, "rejected", {"events:0": 20}, 20, {}, reason="gate: worse"),
        MarkLive(7, {"load_s": 1.5}),
        SetStatus(7, "rolled_back", "held-out AUC fell"),
        SetServing("pinned", 6, "pinned by hand: incident 42"),
    ],
)
def test_every_operation_round_trips_through_json(op: object) -> None:
    data = orjson.loads(orjson.dumps(to_dict(op)))  # type: ignore[arg-type]
    assert from_dict(data) == op


def test_an_unknown_or_malformed_operation_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a registry operation"):
        from_dict({"op": "drop_table"})
    with pytest.raises(TypeError):
        from_dict({"op": "mark_live", "verison": 3})


def test_serving_holds_a_version_exactly_when_not_latest() -> None:
    assert Serving().held is None
    assert Serving("pinned", 4, "x").held == 4
    with pytest.raises(ValueError, match="expected a version exactly when holding one"):
        Serving("pinned", None, "x")
    with pytest.raises(ValueError, match="expected a version exactly when holding one"):
        Serving("latest", 3, None)
    with pytest.raises(ValueError, match="expected serving mode"):
        Serving("frozen", 3, None)
    assert SetServing.of(Serving("rolled_back", 2, "worse")) == SetServing("rolled_back", 2, "worse")


def test_a_list_sink_keeps_the_order() -> None:
    sink = ListSink()
    sink.record(SetServing.of(Serving()))
    sink.record(MarkLive(3))
    assert sink.ops == [SetServing("latest", None, None), MarkLive(3)]
