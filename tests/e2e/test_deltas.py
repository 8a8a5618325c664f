"""Deltas on real components: rows learned after a version reach Triton in place, no reload;
a served state that fails the gate between versions is held at the snapshot, then released."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.delta import DELTA_DIR, DeltaLog
from exporter.gate import GateSettings
from exporter.records import Serving
from exporter.triton import Candidate, Ranking, TritonModel
from rankcore.errors import DependencyError
from rankcore.features import Vocabularies, encode
from rankcore.features import score as rank_scores
from rankcore.model import Ranker
from rankcore.sample import Sample
from tests.e2e.helpers import Lane, ShopTraffic, event, now_ms, traffic, wait_for
from updater.registry import Registry
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
        # Pinned with deltas up to one: that state between versions, exactly.
        await updater.release.apply_serving(Serving("pinned", version, "test", delta=cut + 1))
        assert (await triton.rank("u1", "trail shoes", candidates)).state == (version, cut + 1)
        # Unpinned, it follows the log again from where it was cut.
        await updater.release.apply_serving(Serving())
        again = await triton.rank("u1", "trail shoes", candidates)
        assert again.version == version and again.delta_seq >= after.delta_seq
        assert score(again) == pytest.approx(score(after), abs=1e-6) or again.delta_seq > after.delta_seq


# On the shared stack: its own lane. Between versions the gate judges what Triton serves.
async def test_a_poisoned_state_between_versions_is_held_at_the_snapshot_and_released(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    settings = settings_for(
        lane,
        holdout_every=4,
        holdout_window=400,
        publish_interval_s=3600.0,  # one version: everything after it is deltas
        delta_interval_s=0.2,
        gate=GateSettings(min_samples=100, check_interval_s=1.0, check_auc_margin=0.05),
    )
    phase = ShopTraffic(lane, now_ms() - 600_000).phase

    seen: list[tuple[float, int, int]] = []  # what Triton answered with, as it happened

    async def watch(triton: TritonModel) -> None:
        while True:
            with contextlib.suppress(DependencyError):
                version, seq = await triton.probe_state()
                seen.append((time.time(), version, seq))
            await asyncio.sleep(0.05)

    updater = Updater.from_settings(settings)
    async with updater, TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        watcher = asyncio.create_task(watch(triton))
        try:
            await phase(10, flipped=False)
            await wait_for(lambda: updater.status()["deltas"]["checks"] >= 2, 30, "checks between versions")
            version = updater.status()["live_version"]
            cut = updater.release.cuts[version]
            assert updater.status()["deltas"]["held"] is None
            await phase(8, flipped=True)  # bot clicks on "cold", none on "hot": poison
            enough = asyncio.Event()  # clean traffic until then (see ShopTraffic.phase)
            clean = asyncio.create_task(phase(40, flipped=False, until=enough))
            try:
                # On 2 shared cores under the whole suite the checks fall behind the traffic:
                # 60 s, and what the checks saw if even that is not enough.
                await wait_for(
                    lambda: updater.status()["deltas"]["holds"] >= 1,
                    60,
                    "a hold",
                    lambda: {
                        k: updater.status()["deltas"][k] for k in ("checks", "checks_failed", "last_check")
                    },
                )
                hold = updater.status()["deltas"]["last_hold"]
                print(f"hold: {hold}")
                assert (hold["version"], hold["upto"], hold["by"]) == (version, cut, "check")

                def back_at_the_cut() -> list[float]:
                    return [t for t, v, s in seen if t >= hold["at"] and (v, s) == (version, cut)]

                # Triton goes back to the version as cut, without a reload, within seconds ...
                await wait_for(lambda: bool(back_at_the_cut()), 5, "Triton back at the snapshot")
                assert back_at_the_cut()[0] - hold["at"] < 5
                assert max(s for t, _, s in seen if t < hold["at"]) > cut  # it had been past the cut
                # ... and follows the deltas again once the served state passes a check.
                await wait_for(lambda: updater.status()["deltas"]["held"] is None, 40, "the hold lifted")
                await wait_for(lambda: seen[-1][2] > cut, 10, "Triton following the deltas again")
            finally:
                enough.set()
                await clean
            assert {v for _, v, _ in seen} == {version}  # one version all along: no reload
            assert await triton.served_version() == version
            status = updater.status()["deltas"]
            assert status["checks_failed"] >= 1 and status["refused"] == 0
            written = status["written"]
            await wait_for(lambda: updater.status()["registry_outbox"]["pending"] == 0, 20, "the outbox")
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    # Every delta written is in the registry, with the offsets it had learned up to.
    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        rows = await registry.deltas(limit=100_000)
    assert len(rows) >= written and [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    positions = [sum(r["offsets"].values()) for r in rows]
    assert positions == sorted(positions) and positions[-1] > 0
    assert all(r["size_bytes"] > 0 for r in rows)
