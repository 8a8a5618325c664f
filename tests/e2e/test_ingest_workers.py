"""Ingest workers on the real stack: a SIGKILLed worker or updater, restarts with another worker
count, and every sample learned exactly once; the versions cut meanwhile serve."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from exporter.publish import Publisher
from exporter.triton import TritonModel
from tests.e2e.helpers import Lane, chunked_traffic, now_ms, trickle, updater_command
from updater.status import read_status

pytestmark = pytest.mark.e2e

# (ingest workers, what is killed) per run; the last run is stopped with SIGTERM.
RUNS = [(2, "worker"), (2, "updater"), (3, "worker"), (0, "updater"), (2, None)]


# On the shared stack: only freshrank's processes are killed, never a dependency.
async def test_killed_ingest_workers_lose_and_repeat_nothing(lane: Lane, tmp_path: Path) -> None:
    state = lane.state_dir
    status_file = state / "status.json"
    base = updater_command(
        lane, state, "--batch-size", "32", "--window", "2", "--publish-interval", "0.5",
        "--checkpoint-interval", "0.4",
    )  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "updater.log"
    log = open(log_path, "ab")  # noqa: ASYNC230, SIM115 - closed below

    chunks, expected, closer = chunked_traffic(len(RUNS), now_ms() - 600_000, "w")
    total_records = sum(len(c) for c in chunks) + 1

    rng = random.Random(7)
    producers: list[asyncio.Task[None]] = []
    worker_kills = 0
    try:
        trained_before = 0
        for run, (workers, victim) in enumerate(RUNS):
            cmd = [*base, "--ingest-workers", str(workers)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)  # noqa: ASYNC220
            producers.append(asyncio.create_task(trickle(lane, chunks[run], 0.3)))
            if victim is None:
                break
            status: dict[str, object] = {}
            for _ in range(600):
                await asyncio.sleep(0.1)
                assert proc.poll() is None, log_path.read_text()[-3000:]
                status = read_status(status_file)
                learned = int(status.get("samples_trained") or 0)  # type: ignore[call-overload]
                if status.get("pid") == proc.pid and learned > trained_before:
                    break
            described = list(status.get("ingest_workers") or [])  # type: ignore[call-overload]
            pids = [w["pid"] for w in described]
            assert not status.get("ingest_stalled") and all(w["alive"] for w in described)
            assert len(pids) == workers and all(psutil.pid_exists(p) for p in pids)
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            if victim == "worker":
                os.kill(pids[-1], signal.SIGKILL)
                # The updater notices at its next fetch and stops without a checkpoint.
                code = await asyncio.to_thread(proc.wait, 60)
                assert code != 0
                worker_kills += 1
            else:
                proc.kill()
                proc.wait()
            # Nothing outlives the updater: its workers see the pipe close and end.
            for _ in range(100):
                if not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"ingest workers {pids} outlived their updater")
            trained_before = int(read_status(status_file).get("samples_trained") or 0)  # type: ignore[call-overload]
        await lane.send([closer])
        await asyncio.gather(*producers)

        status = {}
        for _ in range(1800):
            await asyncio.sleep(0.1)
            status = read_status(status_file)
            if (
                status.get("pid") == proc.pid
                and status.get("samples_trained") == expected
                and status.get("events_consumed") == total_records
            ):
                break
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == 0, log_path.read_text()[-3000:]
    finally:
        for task in producers:
            task.cancel()
        log.close()

    text = log_path.read_text()
    # Each killed worker named in the updater's error, by index and pid.
    assert len(set(re.findall(r"error: ingest worker \d+ \(pid (\d+)\) died", text))) == worker_kills == 2
    status = read_status(status_file)
    print(
        f"runs {RUNS}: {total_records} records, {expected} samples in the stream, "
        f"{status['samples_trained']} learned, {status['checkpoints']} checkpoints"
    )
    assert status["samples_trained"] == expected  # every sample learned, none twice
    assert status["events_consumed"] == total_records
    ranges = status["ledger"]["ranges"]  # type: ignore[index]
    assert sum(r["records"] for r in ranges.values()) == total_records
    assert status["duplicates"] == 0 and status["dead_letters"] == 0
    # What the workers' runs learned is published, and Triton serves it.
    versions = Publisher(Path(lane.repository), model=lane.model_name).versions()
    async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        assert await triton.probe() == versions[-1]
