"""Hostile input through the real broker: every record ends in exactly one place."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.e2e.helpers import Lane, Record, event, now_ms, traffic, wait_for
from updater.registry import Registry
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e


def corpus(ts: int) -> tuple[list[Record], dict[str, int], int]:
    """(records, expected dead letters by reason, expected duplicates)."""

    def body(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "event_id": "h-ok",
            "type": "impression",
            "ts": ts,
            "user_id": "uh",
            "request_id": "rh",
            "query": "tent",
            "item_id": "ih",
            "position": 0,
            "item": {"category": "tent", "brand": "acme", "price": 99.0},
        }
        base.update(overrides)
        return base

    def enc(**overrides: Any) -> bytes:
        return orjson.dumps(body(**overrides))

    valid = enc(event_id="h-valid")
    records: list[Record] = [
        (b"uh", b"{not json"),  # not JSON
        (b"uh", b"\xff\xfe\x00\x81 binary"),  # not UTF-8
        (b"uh", b"[1, 2, 3]"),  # not an object
        (b"uh", orjson.dumps({k: v for k, v in body(event_id="h-1").items() if k != "user_id"})),  # missing
        (b"uh", enc(event_id="h-2", position="3")),  # wrongly typed
        (b"uh", enc(event_id="h-3").replace(b'"price":99.0', b'"price":NaN')),  # NaN
        (b"uh", enc(event_id="h-4").replace(b'"price":99.0', b'"price":Infinity')),  # Infinity
        (b"uh", enc(event_id="h-5", item={"price": -5.0})),  # negative price
        (b"uh", enc(event_id="h-6", query="x" * 900_000)),  # a 900 KB string
        (b"uh", enc(event_id="h-7", type="wishlist")),  # unknown type
        (b"uh", enc(event_id="h-8", ts=ts + 30 * 24 * 3600 * 1000)),  # far in the future
        (b"uh", enc(event_id="h-9", ts=631_152_000_000)),  # 1990
        (b"uh", enc(event_id="h-10", type="click", request_id="never-shown")),  # orphan click
        (b"uh", b""),  # empty record
        (b"uh", None),  # null value (tombstone)
        (b"uh", b"[" * 5_000 + b"]" * 5_000),  # deeply nested JSON
        (None, valid),  # null key: still a valid impression
        (b"uh", valid),  # the same record again: a duplicated Kafka record
        (b"uh", enc(event_id="h-valid", item_id="other")),  # a different event reusing the id
    ]
    expected = {
        "not_json": 4,
        "not_utf8": 1,
        "not_object": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "bad_value": 1,
        "too_large": 1,
        "unknown_type": 1,
        "bad_timestamp": 2,
        "orphan_action": 1,
        "empty_record": 2,
    }
    return records, expected, 2


# On the shared stack: its records, dead letters and replay stay in its lane's topic and database.
async def test_every_hostile_record_ends_in_exactly_one_place(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    start = now_ms() - 120_000
    normal, normal_samples = traffic(100, start, seed=5)
    bad, expected_dead, expected_dups = corpus(start + 1_000)
    closer = event("impression", start + 60_000, "u0", "closer", "x", "closer")
    records = normal + bad + [closer]
    await lane.send(records)

    updater = Updater.from_settings(settings_for(lane))
    async with updater:
        await wait_for(
            lambda: updater.status()["events_consumed"] == len(records), 60, "every record consumed"
        )
        await wait_for(lambda: updater.learner.samples_trained == normal_samples + 1, 30, "samples trained")
        status = updater.status()
        assert status["dead_letters_by_reason"] == expected_dead
        assert status["duplicates"] == expected_dups
        # Exactly one place each: a dead letter, a duplicate, or a valid event (the orphan click
        # was valid, then dead: it is the one record counted twice).
        accounted = status["dead_letters"] + status["duplicates"] + status["events_valid"]
        assert accounted == len(records) + expected_dead["orphan_action"]

        # The click's impression shows up late; replaying the dead letter now joins them.
        late = event("impression", start + 61_000, "uh", "never-shown", "ih", "late-impression")
        await lane.send([late])
        await wait_for(lambda: updater.status()["events_consumed"] == len(records) + 1, 30, "late impression")
        positives = updater.learner.metrics.positives
        cli = [
            sys.executable,
            "-m",
            "freshrank.cli",
            "dead-letters",
            "--pg-dsn",
            lane.pg_dsn,
            "--bootstrap",
            lane.bootstrap,
            "--topic",
            lane.topic,
        ]
        await wait_for(
            lambda: updater.status()["registry_outbox"]["pending"] == 0, 30, "dead letters in PostgreSQL"
        )
        listed = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--reason", "orphan_action", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert [d["detail"] for d in json.loads(listed.stdout)["dead_letters"]] == [
            "no impression with this request_id and item_id"
        ]
        replay = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--reason", "orphan_action", "--replay", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(replay.stdout)["replayed"] == 1
        await wait_for(lambda: updater.learner.metrics.positives == positives + 1, 30, "the replayed click")

    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        stored = await registry.dead_letters(limit=1000)
    assert len(stored) == sum(expected_dead.values())
    sent = {v for _, v in bad}
    assert all(d["raw"] in sent or (d["raw"] is None and None in sent) for d in stored)
    assert any(d["raw"] == b"\xff\xfe\x00\x81 binary" for d in stored)  # raw bytes kept as they came
    assert [d["replayed_at"] is not None for d in stored if d["reason"] == "orphan_action"] == [True]
