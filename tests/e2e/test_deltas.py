"""Deltas on real components: rows learned after a version reach Triton in place, no reload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.delta import DELTA_DIR, DeltaLog
from exporter.records import Serving
from exporter.triton import Candidate, Ranking, TritonModel
from rankcore.features import Vocabularies, encode
from rankcore.features import score as rank_scores
from rankcore.model import Ranker
from rankcore.sample import Sample
from tests.e2e.helpers import Lane, event, now_ms, traffic, wait_for
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e


def score(ranking: Ranking) -> dict[str, float]:
    return {c.item_id: s for c, s in ranking.items}


def model_scores(
    model: Ranker, vocabs: Vocabularies, updater: Updater, candidates: list[Candidate]
) -> dict[str, float]:
    """What ``model`` scores ``candidates`` for the test's user and query (none of them titled)."""
    samples = [
        Sample("u1", "trail shoes", c.item_id, c.category, c.brand, c.price, 0, 0, 0) for c in candidates
    ]
    batch = encode(samples, vocabs, updater.settings.model.max_tokens, grow=False)
    return {c.item_id: float(v) for c, v in zip(candidates, rank_scores(model, batch), strict=True)}


def learner_scores(updater: Updater, candidates: list[Candidate]) -> dict[str, float]:
    return model_scores(updater.learner.model, updater.vocabs, updater, candidates)


async def settled(updater: Updater) -> None:
    """Until nothing is left to learn and the last delta written is the last one served."""
    trained = -1
    while True:
        deltas = updater.status()["deltas"]
        now = updater.learner.samples_trained
        idle = not updater.deltas.busy and deltas["last_served_seq"] == deltas["last_seq"]
        if now == trained and idle and updater.trainer.qsize() == 0:
            return
        trained = now
        await asyncio.sleep(1.0)


def launch(requests: int, start_ms: int) -> list[Any]:
    """A new item, "launch", shown for a new query beside "cold" and a filler, always clicked."""
    records: list[Any] = []
    for r in range(requests):
        ts, user, request = start_ms + r * 20, f"u{r % 40}", f"launch-r{r}"
        for pos, item in enumerate(("cold", "launch", f"f{r % 30}")):
            records.append(
                event("impression", ts, user, request, item, f"l{r}-{item}-imp", "trail shoes", pos)
            )
        records.append(event("click", ts + 5, user, request, "launch", f"l{r}-launch-clk", "trail shoes"))
    return records


# On the shared stack: its own lane's topic, model and state directory.
async def test_rows_learned_after_a_version_are_served_in_place(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    # One version, then deltas only: the publish interval outlasts the test.
    settings = settings_for(lane, publish_interval_s=3600.0, delta_interval_s=0.2)
    start = now_ms() - 120_000
    records, expected = traffic(300, start)
    candidates = [Candidate(i, "shoes", "acme", 49.0) for i in ("cold", "f3", "launch", "f7")]
    updater = Updater.from_settings(settings)
    async with updater, TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        await lane.send(records)
        await wait_for(lambda: updater.status()["live_version"] is not None, 60, "a first version live")
        version = updater.status()["live_version"]
        cut = updater.release.cuts[version]
        before = await triton.rank("u1", "trail shoes", candidates)
        assert before.version == version

        await lane.send(launch(300, start + 10_000))
        expected += 300 * 3
        # The item and the query are new to the version: only deltas can teach Triton them.
        await wait_for(lambda: updater.learner.samples_trained >= expected - 300, 60, "the launch learned")
        await settled(updater)
        after = await triton.rank("u1", "trail shoes", candidates)
        # What Triton answers is what the learner says now, to float precision.
        assert score(after) == pytest.approx(learner_scores(updater, candidates), abs=1e-5)
        assert score(after)["launch"] > score(before)["launch"] + 0.02, (before, after)
        assert after.version == version and after.delta_seq > cut, (after.state, cut)
        assert await triton.served_version() == version  # no reload: the same version, newer rows
        status = updater.status()
        assert status["live_version"] == version
        deltas = status["deltas"]
        assert deltas["written"] >= 1 and deltas["refused"] == 0 and deltas["rows"] > 0
        assert deltas["last_served_seq"] >= 1 and deltas["last_served_s"] < 5
        log = DeltaLog(Path(settings.repository) / lane.model_name / DELTA_DIR)
        assert log.last() == deltas["last_seq"]

        # Pinned, the version serves as it was cut: none of the deltas ("launch" unknown again).
        await updater.release.apply_serving(Serving("pinned", version, "test"))
        pinned = await triton.rank("u1", "trail shoes", candidates)
        assert pinned.state == (version, cut)
        live = updater.release.live
        assert live is not None and live.version == version
        assert score(pinned) == pytest.approx(
            model_scores(live.model, live.vocabs, updater, candidates), abs=1e-5
        )
        # Unpinned, it follows the log again from where it was cut.
        await updater.release.apply_serving(Serving())
        again = await triton.rank("u1", "trail shoes", candidates)
        assert again.version == version and again.delta_seq >= after.delta_seq
        assert score(again) == pytest.approx(score(after), abs=1e-6) or again.delta_seq > after.delta_seq
