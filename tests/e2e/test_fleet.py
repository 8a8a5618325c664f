"""Two Triton replicas sharing the model repository: a version is live once both serve it, a
replica killed during a rollout blocks promotion and is reported, and it is caught up when it
comes back (the same versions, and the same deltas, as the other)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.triton import Candidate, TritonModel
from freshrank.stack import Triton, free_port
from tests.e2e.helpers import Lane, now_ms, traffic, wait_for
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e
CANDIDATES = [Candidate(i, "shoes", "acme", 49.0) for i in ("i1", "i2", "i3")]


async def test_two_replicas_serve_one_version_and_a_killed_one_is_caught_up(
    lane: Lane, settings_for: Callable[..., UpdaterSettings], tmp_path: Path
) -> None:
    a = lane.stack.addresses
    second = Triton(tmp_path / "replica-2", Path(a.repository), free_port(), free_port())
    await asyncio.to_thread(second.start)
    try:
        settings = settings_for(
            lane,
            triton_grpc=f"{a.triton_grpc},{second.grpc_url}",
            publish_interval_s=1.0,
            delta_interval_s=0.2,
        )
        start = now_ms() - 120_000
        records, _ = traffic(200, start)
        updater = Updater.from_settings(settings)
        one = TritonModel(a.triton_grpc, model=lane.model_name)
        two = TritonModel(second.grpc_url, model=lane.model_name)
        async with updater, one, two:
            await lane.send(records)
            await wait_for(lambda: (updater.status()["live_version"] or 0) >= 1, 60, "a first version live")
            live = updater.status()["live_version"]
            assert (await one.rank("u1", "shoes", CANDIDATES)).version >= live
            assert (await two.rank("u1", "shoes", CANDIDATES)).version >= live
            replicas = updater.status()["replicas"]
            assert [r["url"] for r in replicas] == [a.triton_grpc, second.grpc_url]
            assert all(r["ok"] for r in replicas), replicas

            # Killed during the rollout: the next versions reach replica 1 only and are not live.
            assert second.process is not None and second.process.proc is not None
            os.killpg(second.process.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(second.process.proc.wait)
            killed_at_live = updater.status()["live_version"]
            more, _ = traffic(200, start + 30_000, seed=1, prefix="b")
            await lane.send(more)
            await wait_for(
                lambda: updater.release.publisher.versions()[-1] > killed_at_live,
                60,
                "a version while one is down",
            )

            def reported_down() -> bool:
                status = updater.status()
                down = {r["url"]: r for r in status["replicas"]}[second.grpc_url]
                return (
                    down["ok"] is False
                    and bool(down["error"])
                    and status["dependencies"]["triton"]["ok"] is False
                )

            await wait_for(reported_down, 30, "replica 2 reported down")
            status = updater.status()
            assert status["live_version"] == killed_at_live  # nothing promoted without replica 2

            # Back (empty, as a restarted Triton is): the reconcile catches it up.
            await asyncio.to_thread(second.start)
            newest = updater.release.publisher.versions()[-1]
            await wait_for(
                lambda: (updater.status()["live_version"] or 0) >= newest, 90, "the fleet live again"
            )
            first, other = await one.probe_state(), await two.probe_state()
            assert first[0] == other[0] >= newest
            assert all(r["ok"] for r in updater.status()["replicas"])
            # Traffic over: both settle on one state (version and deltas) and score alike.
            for _ in range(100):
                r1, r2 = await one.rank("u1", "shoes", CANDIDATES), await two.rank("u1", "shoes", CANDIDATES)
                if r1.state == r2.state:
                    break
                await asyncio.sleep(0.2)
            assert r1.state == r2.state, (r1.state, r2.state)
            assert dict(r1.items) == pytest.approx(dict(r2.items), abs=1e-6)
    finally:
        await asyncio.to_thread(second.stop)
