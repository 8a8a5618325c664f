"""Two updaters training one model (--world-size 2) on the real stack: a rank that stalls is
named in the other's status; either one SIGKILLed while traffic flows stops the other, the
restarted pair resumes from the checkpoint both hold, and every sample is learned exactly once,
by the rank that owns its partition; rank 0's versions serve."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from exporter.publish import Publisher
from exporter.triton import TritonModel
from freshrank.stack import free_port
from tests.e2e.helpers import Lane, chunked_traffic, event, now_ms, trickle, updater_command
from updater.status import read_status

pytestmark = pytest.mark.e2e

WORLD = 2
# The rank SIGKILLed in each run; the last run is stopped with SIGTERM to rank 1 (a group stops together).
KILLS = [1, 0, None]


def started(proc: subprocess.Popen[bytes], status: dict[str, Any], trained_before: int) -> bool:
    return status.get("pid") == proc.pid and int(status.get("samples_trained") or 0) > trained_before


async def test_a_killed_rank_loses_and_repeats_nothing(lane: Lane, tmp_path: Path) -> None:
    states = [lane.state_dir, tmp_path / "rank1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"rank{r}.log" for r in range(WORLD)]
    outs = [open(p, "ab") for p in logs]  # noqa: ASYNC230, SIM115 - closed below
    chunks, expected, _ = chunked_traffic(len(KILLS), now_ms() - 600_000, "g")
    # A closer on every partition (events are keyed by user): each rank's windows close by its
    # own partitions' time.
    closers = [
        event("impression", now_ms() - 300_000, f"u{u}", "closer", "x", f"closer-{u}") for u in range(41)
    ]
    total_records = sum(len(c) for c in chunks) + len(closers)
    rng = random.Random(11)
    producers: list[asyncio.Task[None]] = []
    procs: list[subprocess.Popen[bytes]] = []

    def launch(run: int) -> list[subprocess.Popen[bytes]]:
        init = f"tcp://127.0.0.1:{free_port()}"
        procs = []
        for rank in range(WORLD):
            cmd = updater_command(
                lane, states[rank], "--batch-size", "32", "--window", "2", "--publish-interval", "0.5",
                "--checkpoint-interval", "0.4", "--world-size", str(WORLD), "--rank", str(rank),
                "--group-init", init, "--timeout-group-s", "10",
            )  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=outs[rank], stderr=outs[rank], env=env))
        return procs

    def tails() -> str:
        return "\n".join(f"--- rank {r}\n{p.read_text()[-2500:]}" for r, p in enumerate(logs))

    try:
        trained = [0, 0]
        for run, victim in enumerate(KILLS):
            procs = launch(run)
            producers.append(asyncio.create_task(trickle(lane, chunks[run], 0.3)))
            if victim is None:
                break
            for _ in range(900):
                await asyncio.sleep(0.1)
                assert all(p.poll() is None for p in procs), tails()
                statuses = [read_status(states[r] / "status.json") for r in range(WORLD)]
                if all(started(procs[r], statuses[r], trained[r]) for r in range(WORLD)):
                    break
            else:
                raise AssertionError("the group did not learn within 90 s\n" + tails())
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            survivor = procs[1 - victim]
            if run == 0:
                # A rank that stalls is named in the others' status (past a sixth of the round timeout).
                procs[victim].send_signal(signal.SIGSTOP)
                stalled = ""
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    group = read_status(states[1 - victim] / "status.json").get("group") or {}
                    stalled = str(group.get("stalled") or "")  # type: ignore[union-attr]
                    if stalled:
                        break
                assert f"rank(s) [{victim}]" in stalled, tails()
                print(f"rank {1 - victim}'s status while rank {victim} is stopped: {stalled!r}")
            procs[victim].kill()
            procs[victim].wait()
            # The survivor's next round fails: it stops without a checkpoint (the restart resumes).
            code = await asyncio.to_thread(survivor.wait, 60)
            assert code != 0, tails()
            trained = [
                int(read_status(states[r] / "status.json").get("samples_trained") or 0) for r in range(WORLD)
            ]
        await asyncio.gather(*producers)
        await lane.send(closers)

        statuses: list[dict[str, Any]] = []
        for _ in range(1800):
            await asyncio.sleep(0.1)
            statuses = [read_status(states[r] / "status.json") for r in range(WORLD)]
            if (
                all(s.get("pid") == p.pid for s, p in zip(statuses, procs, strict=True))
                and sum(int(s.get("samples_trained") or 0) for s in statuses) == expected
                and sum(int(s.get("events_consumed") or 0) for s in statuses) == total_records
            ):
                break
        procs[1].send_signal(signal.SIGTERM)  # a rank that stops takes the group to a last checkpoint
        codes = [await asyncio.to_thread(p.wait, 60) for p in procs]
        assert codes == [0, 0], tails()
    finally:
        for task in producers:
            task.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out in outs:
            out.close()

    statuses = [read_status(states[r] / "status.json") for r in range(WORLD)]
    learned = [s["samples_trained"] for s in statuses]
    print(f"kills {KILLS}: {total_records} records, {expected} samples, learned per rank {learned}")
    assert sum(learned) == expected  # every sample learned, none twice
    assert all(n > 0 for n in learned)  # each rank learned its own partitions' samples
    assert sum(s["events_consumed"] for s in statuses) == total_records
    assert all(s["duplicates"] == 0 and s["dead_letters"] == 0 for s in statuses)
    partitions = [set(s["ledger"]["ranges"]) for s in statuses]  # type: ignore[index]
    assert not partitions[0] & partitions[1]  # each partition read by one rank
    versions = Publisher(Path(lane.repository), model=lane.model_name).versions()
    assert versions
    async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
        assert await triton.probe() == versions[-1]
