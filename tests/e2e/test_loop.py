"""The whole loop on real components: events on the broker -> updater -> ONNX -> Triton."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from exporter.triton import Candidate, TritonModel
from freshrank.stack import EmbeddedStack
from tests.e2e.conftest import event, now_ms, send, traffic
from updater.registry import Registry
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e


async def wait_for(predicate: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.2)


async def test_events_reach_a_served_version_that_ranks_clicked_items_first(
    stack: EmbeddedStack, settings_for: Callable[..., UpdaterSettings]
) -> None:
    start = now_ms() - 60_000
    records, expected_samples = traffic(400, start)
    # A record that closes every attribution window, and hostile input that must become dead letters.
    records.append(event("impression", start + 60_000, "u0", "closer", "x", "closer"))
    records += [(None, b"{not json"), (b"u1", b""), (b"u1", b'{"type":"click"}')]
    records.append(event("click", start + 100, "u1", "never-shown", "hot", "orphan"))
    records.append(records[0])  # a duplicated Kafka record
    await send(stack.addresses.bootstrap, records)

    updater = Updater.from_settings(settings_for(stack))
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained >= expected_samples, 60, "all samples trained")
        trained = updater.learner.samples_trained
        await wait_for(
            lambda: updater.last_export.get("version") is not None and updater._published_samples >= trained,
            60,
            "a version with every sample",
        )
        await wait_for(lambda: not updater._export_task or updater._export_task.done(), 60, "the export")
        status = updater.status()

    assert status["samples_trained"] == expected_samples
    assert status["events_consumed"] == len(records)
    assert status["duplicates"] == 1
    assert status["dead_letters_by_reason"] == {
        "not_json": 1,
        "empty_record": 1,
        "missing_field": 1,
        "orphan_action": 1,
    }
    live = status["live_version"]
    assert live is not None and live >= 1

    async with TritonModel(stack.addresses.triton_grpc) as triton:
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

    async with Registry(stack.addresses.pg_dsn) as registry:
        versions = await registry.versions()
        dead = await registry.dead_letters()
    newest = versions[0]
    assert newest["version"] == live and newest["status"] == "live"
    assert sum(newest["offsets"].values()) == len(records)  # learned up to the end of the topic
    assert newest["samples_seen"] == expected_samples
    assert newest["size_bytes"] > 0 and len(newest["sha256"]) == 64
    assert {d["reason"] for d in dead} == {"not_json", "empty_record", "missing_field", "orphan_action"}
    assert any(d["raw"] == b"{not json" for d in dead)


async def test_a_restarted_updater_resumes_from_its_checkpoint(
    stack: EmbeddedStack, settings_for: Callable[..., UpdaterSettings]
) -> None:
    start = now_ms() - 120_000
    first, first_samples = traffic(200, start, seed=1, prefix="a")
    first.append(event("impression", start + 10_000, "u0", "closer1", "x", "closer1"))
    first_samples += 0  # the closer stays pending until the next window closes
    await send(stack.addresses.bootstrap, first)
    settings = settings_for(stack)

    updater = Updater.from_settings(settings)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained >= first_samples, 60, "first half trained")
        await asyncio.sleep(0.5)
    assert updater.learner.samples_trained == first_samples
    assert (settings.state_dir / "checkpoint.pt").exists()

    second, second_samples = traffic(200, start + 20_000, seed=2, prefix="b")
    second.append(event("impression", start + 60_000, "u0", "closer2", "x", "closer2"))
    await send(stack.addresses.bootstrap, second)
    resumed = Updater.from_settings(settings)
    async with resumed:
        # Restored, not retrained: the count starts where the first run stopped.
        assert resumed.learner.samples_trained == first_samples
        assert resumed.counters.events_consumed == len(first)
        total = first_samples + 1 + second_samples  # + closer1, closed by the second half
        await wait_for(lambda: resumed.learner.samples_trained >= total, 60, "second half trained")
        await asyncio.sleep(1.0)
        status = resumed.status()
    assert status["samples_trained"] == total  # nothing learned twice, nothing lost
    assert status["events_consumed"] == len(first) + len(second)
    assert status["duplicates"] == 0
