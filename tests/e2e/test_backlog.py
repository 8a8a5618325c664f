"""A backlog: the updater starts behind 100k+ records; its memory stays bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.e2e.helpers import Lane, event, now_ms, traffic, updater_command
from updater.status import read_status

pytestmark = pytest.mark.e2e

RSS_LIMIT = 2 * 1024**3


# On the shared stack: the memory measured is the updater process's, on its own lane.
async def test_backlog_is_worked_off_with_bounded_memory(lane: Lane, tmp_path: Path) -> None:
    start = now_ms() - 3_600_000
    total_records = total_samples = 0
    for chunk in range(25):
        records, samples = traffic(1_000, start + chunk * 25_000, seed=chunk, prefix=f"b{chunk}-")
        await lane.send(records)
        total_records += len(records)
        total_samples += samples
    await lane.send([event("impression", start + 3_000_000, "u0", "closer", "x", "closer")])
    total_records += 1

    state = lane.state_dir
    cmd = updater_command(lane, state)
    log_path = tmp_path / "updater.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)  # noqa: ASYNC220
    peak = 0
    status: dict[str, object] = {}
    try:
        ps = psutil.Process(proc.pid)
        for _ in range(1200):
            await asyncio.sleep(0.1)
            assert proc.poll() is None
            peak = max(peak, ps.memory_info().rss)
            status = read_status(state / "status.json") or status
            if (
                status.get("events_consumed") == total_records
                and status.get("samples_trained") == total_samples
            ):
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        log_file.close()
    assert status["events_consumed"] == total_records, status
    assert status["samples_trained"] == total_samples
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    print(
        f"backlog of {total_records} records: peak RSS {peak / 2**20:.0f} MiB, "
        f"uptime {status['uptime_s']} s, backpressure pauses {status['backpressure_pauses']}"
    )
