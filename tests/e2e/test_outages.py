"""PostgreSQL stopped, the broker frozen, Triton killed: the updater keeps going and loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.publish import Publisher
from exporter.triton import TritonModel
from freshrank.stack import EmbeddedStack
from tests.e2e.helpers import event, now_ms, send, traffic, wait_for
from updater.registry import Registry
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e

OUTAGE_S = 30.0


class Traffic:
    """Known content, sent in small chunks until stopped."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.records = 0
        self.samples = 0
        self.stop = asyncio.Event()
        self.start_ms = now_ms() - 3_600_000

    async def run(self) -> None:
        chunk = 0
        while not self.stop.is_set():
            # Bad records too, so dead letters are written while PostgreSQL is away.
            records, samples = traffic(40, self.start_ms + chunk * 2_000, seed=chunk, prefix=f"t{chunk}-")
            records.append((b"u0", b"{broken"))
            await send(self.bootstrap, records)
            self.records += len(records)
            self.samples += samples
            chunk += 1
            await asyncio.sleep(0.5)

    async def finish(self) -> None:
        self.stop.set()
        closer = event("impression", self.start_ms + 3_000_000, "u0", "closer", "x", "closer")
        await send(self.bootstrap, [closer])
        self.records += 1


# A stack of its own: it stops PostgreSQL, freezes the broker and kills Triton.
async def test_updater_rides_out_outages_of_every_dependency(
    stack: EmbeddedStack, settings_for: Callable[..., UpdaterSettings]
) -> None:
    a = stack.addresses
    load = Traffic(a.bootstrap)
    producer = asyncio.create_task(load.run())
    updater = Updater.from_settings(settings_for(stack))
    timeline: dict[str, Any] = {}

    def health(dependency: str) -> dict[str, Any]:
        return dict(updater.status()["dependencies"][dependency])

    try:
        async with updater:
            await wait_for(lambda: updater.status()["live_version"] is not None, 60, "a first live version")

            # 1. PostgreSQL stopped for 30 s: training and publishing go on, writes wait on disk.
            trained = updater.learner.samples_trained
            published = updater.status()["versions_published"]
            await asyncio.to_thread(stack.postgres.stop)
            await asyncio.sleep(OUTAGE_S)
            status = updater.status()
            assert status["dependencies"]["postgres"]["ok"] is False
            assert status["registry_outbox"]["pending"] > 0
            assert updater.learner.samples_trained > trained
            assert updater.status()["versions_published"] > published
            await asyncio.to_thread(stack.postgres.start)
            await wait_for(
                lambda: updater.status()["registry_outbox"]["pending"] == 0, 30, "the outbox to drain"
            )
            assert health("postgres")["ok"] is True
            timeline["postgres_longest_outage_s"] = health("postgres")["longest_outage_s"]

            # 2. The broker frozen (SIGSTOP) for 30 s.
            broker = stack.broker.process.proc
            assert broker is not None
            consumed = updater.status()["events_consumed"]
            os.kill(broker.pid, signal.SIGSTOP)
            await asyncio.sleep(OUTAGE_S)
            os.kill(broker.pid, signal.SIGCONT)
            await wait_for(
                lambda: updater.status()["events_consumed"] > consumed + 500, 60, "consumption to resume"
            )
            assert health("kafka")["outages"] >= 1  # commits timed out and it said so
            timeline["kafka_longest_outage_s"] = health("kafka")["longest_outage_s"]

            # 3. Triton killed and restarted: the newest published version is served again.
            triton = stack.triton.process.proc  # type: ignore[union-attr]
            assert triton is not None
            os.killpg(triton.pid, signal.SIGKILL)
            triton.wait()
            await asyncio.sleep(5)
            assert health("triton")["ok"] is False
            restarted = time.monotonic()
            await asyncio.to_thread(stack.triton.start)
            await wait_for(
                lambda: (
                    updater.served_version is not None
                    and updater.served_version == Publisher(Path(a.repository)).versions()[-1]
                ),
                60,
                "Triton to serve the newest version again",
            )
            timeline["triton_back_to_serving_s"] = round(time.monotonic() - restarted, 1)

            await load.finish()
            await producer
            await wait_for(
                lambda: (
                    updater.status()["events_consumed"] == load.records
                    and updater.learner.samples_trained == load.samples
                ),
                90,
                "every record consumed and every sample learned",
            )
        # Read after the stop: a publish skipped while the lease was unsettled is retried, so a
        # version can still be released after the last sample; at stop every write is done.
        status = updater.status()
    finally:
        load.stop.set()
        await producer

    assert status["samples_trained"] == load.samples  # nothing lost, nothing twice
    assert status["events_consumed"] == load.records
    assert status["duplicates"] == 0
    async with Registry(a.pg_dsn) as registry:
        dead = await registry.dead_letter_counts()
        versions = await registry.versions(limit=1000)
    assert dead == status["dead_letters_by_reason"]  # every dead letter reached PostgreSQL once
    assert len(versions) == status["versions_published"]
    async with TritonModel(a.triton_grpc) as triton:
        assert await triton.served_version() == versions[0]["version"]
    print(timeline)
