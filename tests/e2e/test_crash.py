"""Exactly-once learning across SIGKILLs of a real updater process."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import Lane, event, now_ms, traffic, updater_command
from updater.status import read_status

pytestmark = pytest.mark.e2e

KILLS = 5


# On the shared stack: only the updater process is killed, never a dependency.
async def test_sigkill_restarts_learn_every_sample_exactly_once(lane: Lane, tmp_path: Path) -> None:
    state = lane.state_dir
    status_file = state / "status.json"
    cmd = updater_command(
        lane,
        state,
        "--batch-size",
        "32",
        "--window",
        "2",
        "--publish-interval",
        "0.5",
        "--checkpoint-interval",
        "0.4",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "updater.log", "ab")  # noqa: ASYNC230, SIM115 - closed below

    # Known content, produced in chunks while the updater is being killed.
    start = now_ms() - 600_000
    chunks = []
    expected = 0
    for c in range(8):
        records, samples = traffic(400, start + c * 10_000, seed=c, prefix=f"c{c}-")
        chunks.append(records)
        expected += samples
    closer = event("impression", start + 200_000, "u0", "closer", "x", "closer")
    total_records = sum(len(c) for c in chunks) + 1

    async def produce() -> None:
        for records in chunks:
            await lane.send(records)
            await asyncio.sleep(1.5)
        await lane.send([closer])

    producer = asyncio.create_task(produce())
    rng = random.Random(42)
    kills = 0
    try:
        trained_before = 0
        while kills < KILLS:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)  # noqa: ASYNC220
            # Kill only once this run has learned something new, at a random moment after that.
            for _ in range(600):
                await asyncio.sleep(0.1)
                assert proc.poll() is None, (tmp_path / "updater.log").read_text()[-3000:]
                current = read_status(status_file)
                # This run's own status (the file outlives each killed run), with something new learned.
                learned = int(current.get("samples_trained") or 0)
                if current.get("pid") == proc.pid and learned > trained_before:
                    break
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            proc.kill()
            proc.wait()
            kills += 1
            trained_before = int(read_status(status_file).get("samples_trained") or 0)
        await producer

        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)  # noqa: ASYNC220
        status: dict[str, object] = {}
        for _ in range(1800):
            await asyncio.sleep(0.1)
            status = read_status(status_file)
            if (
                status.get("pid") == proc.pid  # not the last killed run's file: it may be complete already
                and status.get("samples_trained") == expected
                and status.get("events_consumed") == total_records
            ):
                break
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        # Graceful: batch finished, checkpoint written, offsets committed.
        assert code == 0, (tmp_path / "updater.log").read_text()[-3000:]
    finally:
        producer.cancel()
        log.close()

    status = read_status(status_file)
    print(
        f"{kills} SIGKILLs + SIGTERM: {total_records} records, {expected} samples in the stream, "
        f"{status['samples_trained']} learned, {status['checkpoints']} checkpoints"
    )
    assert kills == KILLS
    assert status["samples_trained"] == expected  # every sample learned, none twice
    assert status["events_consumed"] == total_records
    ranges = status["ledger"]["ranges"]  # type: ignore[index]
    assert sum(r["records"] for r in ranges.values()) == total_records
    assert status["duplicates"] == 0
    assert status["checkpoints"] >= 1
