"""The whole loop on real components: events on the broker -> updater -> ONNX -> Triton."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from exporter.triton import Candidate, TritonModel
from rankcore.catalogue import Item
from tests.e2e.helpers import Lane, event, now_ms, traffic, wait_for
from updater.registry import Registry
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e


# On the shared stack: it only produces to, trains from and serves its own lane.
async def test_events_reach_a_served_version_that_ranks_clicked_items_first(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    start = now_ms() - 60_000
    records, expected_samples = traffic(400, start)
    # A record that closes every attribution window, and hostile input that must become dead letters.
    records.append(event("impression", start + 60_000, "u0", "closer", "x", "closer"))
    records += [(None, b"{not json"), (b"u1", b""), (b"u1", b'{"type":"click"}')]
    records.append(event("click", start + 100, "u1", "never-shown", "hot", "orphan"))
    records.append(records[0])  # a duplicated Kafka record
    await lane.send(records)
    # The product-attribute stream: two items, one newer title, one update without a title.
    items = [
        (b"hot", orjson.dumps({"item_id": "hot", "ts": start, "title": "red running shoe", "price": 49.0})),
        (b"cold", orjson.dumps({"item_id": "cold", "ts": start, "title": "grey boot", "brand": "acme"})),
        (b"hot", orjson.dumps({"item_id": "hot", "ts": start + 10, "title": "red trail running shoe"})),
        (b"x", orjson.dumps({"item_id": "x", "ts": start})),
    ]
    await lane.send_items(items)

    updater = Updater.from_settings(settings_for(lane))
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained >= expected_samples, 60, "all samples trained")
        await wait_for(
            lambda: updater.status()["catalogue"]["updates_consumed"] == len(items), 30, "every item update"
        )
        assert updater.ingest.catalogue.get("hot") == Item(
            "hot", start + 10, "red trail running shoe", price=49.0
        )
        # Every click learned is served, no export running, and a version with every sample was
        # released (the last samples may be negatives, which freshness does not wait for).
        await wait_for(
            lambda: updater.freshness_settled and updater.release.samples_released >= expected_samples,
            60,
            "a served version with every sample",
        )
        status = updater.status()

    assert status["samples_trained"] == expected_samples
    assert status["events_consumed"] == len(records)
    assert status["duplicates"] == 1
    assert status["dead_letters_by_reason"] == {
        "not_json": 1,
        "empty_record": 1,
        "missing_field": 2,  # a click without its fields, an item update without its title
        "orphan_action": 1,
    }
    assert status["catalogue"] == {
        "items": 2,
        "updates_consumed": 4,
        "updates_valid": 3,
        "stale": 0,
        "forgotten": 0,
    }
    live = status["live_version"]
    assert live is not None and live >= 1

    async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        assert await triton.served_version() == live
        ranking = await triton.rank(
            "u1", "red shoes", [Candidate(i, "shoes", "acme", 49.0) for i in ("cold", "f3", "hot", "f7")]
        )
    assert ranking.version == live
    scores = {c.item_id: s for c, s in ranking.items}
    # Clicked whenever shown rises to the top, never clicked sinks to the bottom, fillers between.
    order = [c.item_id for c, _ in ranking.items]
    assert order[0] == "hot" and order[-1] == "cold", scores
    assert scores["hot"] > 2 * scores["cold"], scores

    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        versions = await registry.versions()
        dead = await registry.dead_letters()
    newest = versions[0]
    assert newest["version"] == live and newest["status"] == "live"
    offsets = newest["offsets"]
    # Learned up to the end of both topics.
    assert sum(v for k, v in offsets.items() if k.startswith(f"{lane.topic}:")) == len(records)
    assert sum(v for k, v in offsets.items() if k.startswith(f"{lane.items_topic}:")) == len(items)
    assert newest["samples_seen"] == expected_samples
    assert newest["size_bytes"] > 0 and len(newest["sha256"]) == 64
    assert {d["reason"] for d in dead} == {"not_json", "empty_record", "missing_field", "orphan_action"}
    assert any(d["raw"] == b"{not json" for d in dead)
    assert [(d["topic"], d["detail"]) for d in dead if d["raw"] == items[-1][1]] == [
        (lane.items_topic, "title")
    ]


# On the shared stack: two updaters in turn on one lane (its state directory, database, topic).
async def test_a_restarted_updater_resumes_from_its_checkpoint(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    start = now_ms() - 120_000
    first, first_samples = traffic(200, start, seed=1, prefix="a")
    # Not counted in first_samples: the closer stays pending until the next window closes.
    first.append(event("impression", start + 10_000, "u0", "closer1", "x", "closer1"))
    await lane.send(first)
    settings = settings_for(lane)

    updater = Updater.from_settings(settings)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained >= first_samples, 60, "first half trained")
        await asyncio.sleep(0.5)
    assert updater.learner.samples_trained == first_samples
    assert (settings.state_dir / "checkpoint.pt").exists()

    second, second_samples = traffic(200, start + 20_000, seed=2, prefix="b")
    second.append(event("impression", start + 60_000, "u0", "closer2", "x", "closer2"))
    await lane.send(second)
    resumed = Updater.from_settings(settings)
    async with resumed:
        # Restored, not retrained: the count starts where the first run stopped.
        assert resumed.learner.samples_trained == first_samples
        assert resumed.status()["events_consumed"] == len(first)
        total = first_samples + 1 + second_samples  # + closer1, closed by the second half
        await wait_for(lambda: resumed.learner.samples_trained >= total, 60, "second half trained")
        await asyncio.sleep(1.0)
        status = resumed.status()
    assert status["samples_trained"] == total  # nothing learned twice, nothing lost
    assert status["events_consumed"] == len(first) + len(second)
    assert status["duplicates"] == 0


# On the shared stack: a warm start from a history file, then live traffic on its lane.
async def test_a_warm_start_is_served_first_and_recorded_in_the_registry(
    lane: Lane, settings_for: Callable[..., UpdaterSettings], tmp_path: Path
) -> None:
    start = now_ms() - 3_600_000
    history, history_samples = traffic(300, start, seed=3, prefix="h")
    history.append(event("impression", start + 60_000, "u0", "hcloser", "x", "hcloser"))
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(value for _, value in history) + b"\n")
    settings = settings_for(lane, warm_start=path)

    updater = Updater.from_settings(settings)
    async with updater:
        learned = updater.learner.samples_trained
        assert learned == history_samples + 1  # the whole file, its last window closed too
        # Nothing on the topic yet: the first version is the warm model, served by Triton.
        await wait_for(lambda: updater.status()["live_version"] is not None, 60, "a version served")
        live = updater.status()["live_version"]
        async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
            ranking = await triton.rank(
                "u1", "red shoes", [Candidate(i, "shoes", "acme", 49.0) for i in ("cold", "hot")]
            )
        assert ranking.version == live
        assert [c.item_id for c, _ in ranking.items] == ["hot", "cold"]  # learned from the history
    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        first = (await registry.versions())[-1]
    assert first["samples_seen"] == learned and first["offsets"] == {}
    assert first["metrics"]["warm_start"]["samples_trained"] == learned
    assert first["metrics"]["warm_start"]["source"] == str(path)
