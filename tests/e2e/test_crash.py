"""Exactly-once learning across SIGKILLs of a real updater process, with deltas flowing: a kill
mid-delta leaves no half delta served, no number used twice, and Triton's state reproducible
from the newest version and the log."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import signal
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from exporter.check import feeds
from exporter.delta import DELTA_DIR, Delta, DeltaLog
from exporter.publish import Publisher
from exporter.triton import Candidate, TritonModel
from rankcore.sample import Sample
from tests.e2e.helpers import Lane, chunked_traffic, now_ms, trickle, updater_command
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
        "--delta-interval",  # often, so that kills land while one is being written
        "0.1",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "updater.log", "ab")  # noqa: ASYNC230, SIM115 - closed below

    # Known content, produced in chunks while the updater is being killed (each over ~4 s: the
    # stream goes on while a run publishes and cuts deltas).
    chunks, expected, closer = chunked_traffic(8, now_ms() - 600_000, "c")
    total_records = sum(len(c) for c in chunks) + 1

    rng = random.Random(42)
    kills = 0
    producers: list[asyncio.Task[None]] = []
    try:
        trained_before = 0
        while kills < KILLS:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)  # noqa: ASYNC220
            producers.append(asyncio.create_task(trickle(lane, chunks[kills], 0.4)))
            # Kill once this run has learned something new and written a delta (a version of
            # its own is live), at a random moment after that: deltas are cut every 0.1 s.
            for _ in range(600):
                await asyncio.sleep(0.1)
                assert proc.poll() is None, (tmp_path / "updater.log").read_text()[-3000:]
                current = read_status(status_file)
                # This run's own status (the file outlives each killed run), with something new learned.
                learned = int(current.get("samples_trained") or 0)
                written = int((current.get("deltas") or {}).get("written", 0))  # type: ignore[attr-defined]
                if current.get("pid") == proc.pid and learned > trained_before and written > 0:
                    break
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            proc.kill()
            proc.wait()
            kills += 1
            trained_before = int(read_status(status_file).get("samples_trained") or 0)
        for records in chunks[kills:]:
            await lane.send(records)
        await lane.send([closer])
        await asyncio.gather(*producers)

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
        for task in producers:
            task.cancel()
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

    # The delta log: whole files only, numbered on across the runs without a gap or a reuse.
    model_dir = Path(lane.repository) / lane.model_name
    log = DeltaLog(model_dir / DELTA_DIR)
    seqs = log.seqs()
    print(f"deltas {seqs[0]}..{seqs[-1]} in the log, {status['deltas']['written']} by the last run")
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert not list(log.directory.glob(".*.tmp"))
    for seq in seqs:
        assert Delta.from_bytes(log.path(seq).read_bytes()).seq == seq
    # Triton serves the newest version plus every delta after its cut ...
    newest = Publisher(Path(lane.repository), model=lane.model_name).versions()[-1]
    candidates = [Candidate(i, "shoes", "acme", 49.0) for i in ("hot", "cold", "f1", "f2", "f3")]
    async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        await wait_for_state(triton, (newest, seqs[-1]))
        served = await triton.rank("u1", "red shoes", candidates)
    # ... which is exactly that version's files with the log replayed over them, here.
    replayed = LIVE.LiveModel(str(model_dir / str(newest) / "model.onnx"), version=newest)
    LIVE.DeltaFollower(replayed, str(log.directory)).catch_up()
    assert replayed.state.tolist() == [newest, seqs[-1]]
    samples = [
        Sample("u1", "red shoes", c.item_id, c.category, c.brand, c.price, 0, 0, 0) for c in candidates
    ]
    scores, _ = replayed.run(feeds(samples))
    expected = {c.item_id: float(v) for c, v in zip(candidates, scores, strict=True)}
    assert {c.item_id: v for c, v in served.items} == pytest.approx(expected, abs=1e-6)


def _live_backend() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "exporter" / "backend" / "onnxruntime" / "live.py"
    spec = importlib.util.spec_from_file_location("freshrank_live_e2e", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LIVE = _live_backend()


async def wait_for_state(triton: TritonModel, state: tuple[int, int]) -> None:
    for _ in range(100):
        if await triton.probe_state() == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Triton answers with {await triton.probe_state()}, expected {state}")
