"""Safe publishing on the real stack: a poisoned period is rolled back, pins hold serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.gate import GateSettings
from exporter.publish import Publisher
from exporter.records import Serving, SetServing
from exporter.triton import TritonModel
from tests.e2e.helpers import Lane, ShopTraffic, now_ms, shop, wait_for
from updater.registry import Registry
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e


# On the shared stack: the updater and `freshrank pin/unpin/rollback/versions` act on its lane's model.
async def test_a_poisoned_period_is_rolled_back_and_pins_hold(
    lane: Lane, settings_for: Callable[..., UpdaterSettings]
) -> None:
    settings = settings_for(
        lane,
        holdout_every=4,
        holdout_window=400,
        publish_interval_s=1.0,
        # Versions alone: here a rollback is what catches a poisoned version once it is live.
        # With deltas, a check between versions can hold serving first instead (that path is
        # tests/e2e/test_deltas.py's), which on a slow run left this test waiting for a rollback.
        delta_interval_s=0,
        gate=GateSettings(
            auc_margin=0.02, logloss_margin=0.05, min_samples=100, rollback_auc_drop=0.05, rollback_history=10
        ),
    )
    traffic = ShopTraffic(lane, now_ms() - 600_000)
    phase = traffic.phase

    updater = Updater.from_settings(settings)
    async with updater:
        await phase(10, flipped=False)
        await wait_for(lambda: (updater.status()["live_version"] or 0) >= 3, 30, "good versions live")
        good = updater.status()["live_version"] or 0
        await phase(8, flipped=True)  # bot clicks on "cold", none on "hot": poison
        enough = asyncio.Event()  # clean traffic until then (see ShopTraffic.phase)
        clean = asyncio.create_task(phase(30, flipped=False, until=enough))
        try:
            await wait_for(lambda: updater.status()["rollbacks"] >= 1, 30, "a rollback")
        except AssertionError as exc:
            s = updater.status()
            seen = {
                k: s.get(k) for k in ("live_version", "versions_published", "versions_rejected", "deltas")
            }
            raise AssertionError(f"{exc}; {seen}") from exc
        finally:
            enough.set()
            await clean
        rollback = updater.status()["last_rollback"]
        print(f"rollback: {rollback}")
        assert rollback["to"] < rollback["from"]
        assert rollback["from"] > good  # the version rolled back came after the good ones: the poison
        assert rollback["seconds_to_serve"] < 10
        assert rollback["served"] == rollback["to"]  # Triton's first answer after the rollback
        # Since then Triton served the version rolled back to, or a newer candidate that passed the
        # gate against it: never one of the versions rolled back, never an older one.
        async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
            served = await triton.served_version()
        rolled_back = set(range(rollback["to"] + 1, rollback["from"] + 1))
        assert served is not None and served >= rollback["to"], (served, rollback)
        assert served not in rolled_back, (served, rollback)
        # The rolled-back versions left Triton's sight: "the newest" can never be one of them.
        assert rolled_back.isdisjoint(Publisher(Path(lane.repository), model=lane.model_name).versions())

        # An operator pins a version: exports go on, serving stays.
        cli = [sys.executable, "-m", "freshrank.cli"]
        common = [
            "--pg-dsn",
            lane.pg_dsn,
            "--triton-grpc",
            lane.triton_grpc,
            "--model-repository",
            lane.repository,
        ]
        common += ["--model-name", lane.model_name]
        pinned = rollback["to"]
        out = await asyncio.to_thread(
            subprocess.run, [*cli, "pin", str(pinned), *common], capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout)["served_version"] == pinned
        await wait_for(
            lambda: updater.status()["serving"]["mode"] == "pinned", 10, "the updater to see the pin"
        )

        def exports() -> int:
            status = updater.status()
            return int(status["versions_published"]) + int(status["versions_rejected"])

        # The updater applies the pin before the next release starts; the one in flight when it
        # saw the pin may count after this point. So two exports: the second began under the pin.
        before = exports()
        for n, seed in ((1, 999), (2, 998)):
            await lane.send(shop(200, traffic.t + n * 10_000, seed, f"late{n}-", flipped=False))
            # Published, or rejected by the gate against the version held: either way not served.
            await wait_for(lambda n=n: exports() >= before + n, 30, f"export {n} while pinned")
        async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
            assert await triton.probe() == pinned  # what answers requests, not the index
        await asyncio.to_thread(subprocess.run, [*cli, "unpin", *common], capture_output=True, check=True)
        await wait_for(
            lambda: updater.status()["serving"]["mode"] == "latest", 10, "the updater to see the unpin"
        )

        # `versions` shows what happened; `rollback --to` holds an earlier version by hand.
        listed = await asyncio.to_thread(
            subprocess.run,
            [
                *cli,
                "versions",
                "--json",
                "--limit",
                "1000",
                "--pg-dsn",
                lane.pg_dsn,
                "--model-name",
                lane.model_name,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(listed.stdout)
        assert report["serving"]["mode"] == "latest"
        assert {v["version"]: v["status"] for v in report["versions"]}[rollback["from"]] == "rolled_back"
        back = await asyncio.to_thread(
            subprocess.run,
            [*cli, "rollback", "--to", str(pinned), *common],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(back.stdout)["served_version"] == pinned
        await wait_for(
            lambda: updater.status()["serving"]["mode"] == "pinned", 10, "the updater to see the rollback"
        )

    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        versions = await registry.versions(limit=1000)
    by_status: dict[str, list[int]] = {}
    for v in versions:
        by_status.setdefault(v["status"], []).append(v["version"])
    assert rollback["from"] in by_status["rolled_back"]
    rolled = next(v for v in versions if v["version"] == rollback["from"])
    assert "fell below" in rolled["reason"]
    assert all("holdout_auc" in v["metrics"] for v in versions)


async def test_the_updaters_own_serving_decisions_never_overwrite_an_operators(lane: Lane) -> None:
    # On the lane's PostgreSQL: a rollback (or its end) queued in the updater's outbox reaches
    # the registry after an operator's pin; the pin must survive it.
    rollback = Serving("rolled_back", 3, "worse")
    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        await registry.apply_ops([SetServing.of(rollback, over=Serving())])  # no row yet: applies
        assert await registry.serving() == rollback
        pin = Serving("pinned", 2, "by hand")
        await registry.apply_ops([SetServing.of(pin)])  # the operator: always applies
        await registry.apply_ops([SetServing.of(Serving(), over=rollback)])  # the rollback's end
        await registry.apply_ops([SetServing.of(Serving("rolled_back", 1, "worse"), over=Serving())])
        assert await registry.serving() == pin
        await registry.apply_ops([SetServing.of(Serving())])  # unpinned by hand
        await registry.apply_ops([SetServing.of(rollback, over=Serving())])  # over "latest": applies
        assert await registry.serving() == rollback
        await registry.apply_ops([SetServing.of(Serving(), over=rollback)] * 2)  # idempotent
        assert await registry.serving() == Serving()
