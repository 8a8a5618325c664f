"""One writer: a second updater for the same model waits, then takes over from a dead first."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import Lane, event, now_ms, traffic, updater_command, wait_for
from updater.registry import Registry
from updater.status import read_status

pytestmark = pytest.mark.e2e


# On the shared stack: both updaters contend for their lane's model, in their lane's database.
async def test_second_updater_is_a_standby_and_takes_over(lane: Lane, tmp_path: Path) -> None:
    state = lane.state_dir  # one state directory for both updaters
    status_file = state / "status.json"
    cmd = updater_command(
        lane,
        state,
        "--batch-size",
        "64",
        "--window",
        "2",
        "--publish-interval",
        "0.5",
        "--checkpoint-interval",
        "0.5",
    )
    start = now_ms() - 600_000
    first, first_samples = traffic(300, start, seed=1, prefix="a")
    await lane.send(first)

    logs = {name: open(tmp_path / f"{name}.log", "ab") for name in ("a", "b")}  # noqa: SIM115, ASYNC230
    primary = subprocess.Popen(cmd, stdout=logs["a"], stderr=logs["a"])  # noqa: ASYNC220
    standby = None
    try:
        await wait_for(
            lambda: (read_status(status_file).get("live_version") or 0) >= 1, 60, "the first writer"
        )
        assert read_status(status_file)["writer_token"] == 1
        standby = subprocess.Popen(cmd, stdout=logs["b"], stderr=logs["b"])  # noqa: ASYNC220
        await wait_for(lambda: b"waiting as standby" in (tmp_path / "b.log").read_bytes(), 60, "the standby")
        await asyncio.sleep(3)
        assert standby.poll() is None and read_status(status_file)["pid"] == primary.pid

        primary.kill()  # its PostgreSQL session ends, and with it the lock
        primary.wait()
        second, second_samples = traffic(300, start + 20_000, seed=2, prefix="b")
        second.append(event("impression", start + 100_000, "u0", "closer", "x", "closer"))
        await lane.send(second)
        total = first_samples + second_samples
        await wait_for(
            lambda: (
                read_status(status_file).get("pid") == standby.pid
                and read_status(status_file).get("samples_trained") == total
            ),
            90,
            "the standby to take over and learn the rest",
        )
        taken = read_status(status_file)
        assert taken["writer_token"] == 2
        assert taken["events_consumed"] == len(first) + len(second)  # resumed from the first's checkpoint
        standby.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(standby.wait, 60)
        except subprocess.TimeoutExpired:
            standby.send_signal(signal.SIGUSR1)  # the updater writes its tasks' stacks to its log
            await asyncio.sleep(1)
            raise AssertionError((tmp_path / "b.log").read_text()[-6000:]) from None
        assert code == 0
    finally:
        for proc in (primary, standby):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for fh in logs.values():
            fh.close()

    async with Registry(lane.pg_dsn, model=lane.model_name) as registry:
        versions = sorted(await registry.versions(limit=1000), key=lambda v: v["version"])
    tokens = [v["metrics"]["writer_token"] for v in versions]
    assert tokens == sorted(tokens) and set(tokens) == {1, 2}  # the writers never interleaved
