"""The updater service with fakes for its ports: lifecycle, stop order, failures, fencing, paths.

The real broker, PostgreSQL and Triton are in tests/e2e; these run in seconds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.records import Serving
from rankcore.errors import ConfigError, DependencyError, FreshrankError, LeaseLost, TrainingFailed
from tests.unit.updater.fakes import (
    FakeRegistry,
    InMemorySource,
    Log,
    ManualClock,
    ScriptedLease,
    TinyServer,
    lease_lost,
    settings,
    traffic,
    wait_for,
)
from updater.checkpoint import CheckpointStore
from updater.service import Updater
from updater.settings import Timeouts, UpdaterSettings


def now_ms() -> int:
    return int(time.time() * 1000)


def build(
    tmp: Path,
    values: list[bytes] | None = None,
    *,
    server: bool = False,
    lease_script: list[bool | BaseException] | None = None,
    clock: ManualClock | None = None,
    **overrides: Any,
) -> tuple[Updater, InMemorySource, FakeRegistry, ScriptedLease, TinyServer | None, Log]:
    log = Log()
    s: UpdaterSettings = settings(tmp, **overrides)
    source = InMemorySource(log, values or [])
    registry = FakeRegistry(log)
    lease = ScriptedLease(log, lease_script or [])
    fake_server = TinyServer(log, s.repository / s.model_name) if server else None
    updater = Updater(s, source=source, server=fake_server, registry=registry, lease=lease, clock=clock)
    return updater, source, registry, lease, fake_server, log


async def test_learns_every_sample_once_and_checkpoints_before_committing(tmp_path: Path) -> None:
    values, samples = traffic(60, now_ms())
    updater, source, registry, lease, _, log = build(tmp_path, values)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
        await wait_for(lambda: registry.ops("mark_live"), what="a version")
    assert updater.learner.samples_trained == samples
    saved = CheckpointStore(tmp_path / "state").load()
    assert saved is not None and saved["learner"]["samples_trained"] == samples
    # Offsets move only after the checkpoint that covers them; the lease goes last.
    assert source.committed == {"events:0": len(values)}
    assert log.index("source.stop") < log.index("lease.release") < log.index("registry.stop")
    assert lease.released
    # Every version the updater published is in the registry, traced to its offsets.
    added = registry.ops("add_version")
    assert added and all(op["status"] == "published" and op["offsets"] for op in added)


async def test_a_restart_resumes_from_the_checkpoint_without_learning_twice(tmp_path: Path) -> None:
    values, samples = traffic(40, now_ms())
    updater, *_ = build(tmp_path, values)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
    again, *_ = build(tmp_path, values)
    async with again:
        assert again.learner.samples_trained == samples
        assert again.positions == {"events:0": len(values)}
        await asyncio.sleep(0.3)  # records again from offset 0 would be skipped by the ledger anyway
        assert again.learner.samples_trained == samples
        assert again.ingest.ledger.redelivered == 0  # the source sought to the checkpoint


async def test_no_checkpoint_after_a_failed_training_step(tmp_path: Path) -> None:
    values, _ = traffic(40, now_ms())
    updater, source, *_ = build(tmp_path, values, checkpoint_interval_s=60.0)

    def broken(batch: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    updater.learner.learn = broken  # type: ignore[method-assign]
    with pytest.raises(TrainingFailed) as failed:
        await asyncio.wait_for(updater.run(), timeout=20)
    assert "illegal memory access" in str(failed.value.__cause__)
    assert updater.trainer.failed
    assert not (tmp_path / "state" / "checkpoint.pt").exists()
    assert source.committed == {}  # nothing may claim the batch that failed


async def test_a_dead_trainer_surfaces_as_training_failed_to_the_consumer(tmp_path: Path) -> None:
    values, _ = traffic(200, now_ms())
    updater, *_ = build(tmp_path, values, queue_batches=1, checkpoint_interval_s=60.0)
    updater.trainer.learner.learn = lambda batch: 1 / 0  # type: ignore[assignment, method-assign]
    await updater.start()
    try:
        with pytest.raises(TrainingFailed):
            await asyncio.wait_for(updater.wait(), timeout=20)
        failed = updater.supervisor.failure()
        assert failed is not None and failed[0] in ("train", "consume")
    finally:
        await updater.stop()
    assert not (tmp_path / "state" / "checkpoint.pt").exists()


async def test_backpressure_pauses_the_source_and_resumes_it(tmp_path: Path) -> None:
    values, samples = traffic(150, now_ms())
    updater, source, *_ = build(
        tmp_path, values, queue_batches=1, timeouts=Timeouts(fetch_ms=10, pause_after_s=0.05)
    )
    learn = updater.learner.learn

    def slow(batch: Any) -> Any:
        time.sleep(0.06)
        return learn(batch)

    updater.learner.learn = slow  # type: ignore[method-assign]
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, timeout_s=40, what="all learned")
        assert source.pauses >= 1
        assert updater.status()["backpressure_pauses"] == source.pauses
        assert not source.paused  # resumed once the trainer caught up


async def test_losing_the_lease_stops_without_a_final_checkpoint(tmp_path: Path) -> None:
    values, _ = traffic(40, now_ms())
    # The first confirm (the first publish or checkpoint) finds another writer.
    updater, source, registry, lease, _, _ = build(tmp_path, values, lease_script=[lease_lost()])
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(updater.run(), timeout=20)
    assert not (tmp_path / "state" / "checkpoint.pt").exists()
    assert source.committed == {}
    assert registry.ops("add_version") == []
    assert lease.released


async def test_an_unsettled_lease_skips_one_round_and_carries_on(tmp_path: Path) -> None:
    values, samples = traffic(40, now_ms())
    updater, source, registry, *_ = build(tmp_path, values, lease_script=[False, False])
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
        await wait_for(lambda: registry.ops("mark_live"), what="a version after the skipped rounds")
    assert source.committed == {"events:0": len(values)}


async def test_stop_gives_up_on_a_slow_final_checkpoint_but_waits_for_its_write(tmp_path: Path) -> None:
    values, samples = traffic(20, now_ms())
    updater, source, _, _, _, log = build(
        tmp_path,
        values,
        checkpoint_interval_s=60.0,
        timeouts=Timeouts(fetch_ms=10, stop_s=0.2, export_stop_s=1.0),
    )
    save = updater.checkpointer.store.save
    finished: list[float] = []

    def slow_save(state: dict[str, Any]) -> float:
        time.sleep(1.0)
        seconds = save(state)
        finished.append(time.monotonic())
        log.append("checkpoint.written")
        return seconds

    updater.checkpointer.store.save = slow_save  # type: ignore[method-assign]
    await updater.start()
    await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
    started = time.monotonic()
    await updater.stop()
    assert time.monotonic() - started < 5.0
    # The checkpoint's caller was cancelled after 0.2 s, but its write finished before the lease went.
    assert finished and log.index("checkpoint.written") < log.index("lease.release")
    assert source.committed == {}  # cancelled before the commit: a restart replays from the old state


async def test_a_failed_start_leaks_neither_lease_nor_pool(tmp_path: Path) -> None:
    updater, source, registry, lease, _, log = build(tmp_path, [])
    source.fail_start = True
    with pytest.raises(DependencyError, match="no broker"):
        async with updater:
            pass
    assert lease.released
    assert "registry.stop" in log
    assert not registry.connected


async def test_stop_twice_is_safe(tmp_path: Path) -> None:
    updater, *_, log = build(tmp_path, [])
    await updater.start()
    await updater.stop()
    await updater.stop()
    assert log.count("lease.release") == 1


async def test_a_failed_commit_loses_nothing_and_reports_kafka_down(tmp_path: Path) -> None:
    values, samples = traffic(30, now_ms())
    updater, source, *_ = build(tmp_path, values)
    source.fail_commit = True
    async with updater:
        await wait_for(lambda: updater.status()["checkpoints"] >= 1, what="a checkpoint")
        kafka = updater.status()["dependencies"]["kafka"]
        assert kafka["ok"] is False and "commit" in kafka["error"]
        source.fail_commit = False
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
    assert source.committed == {"events:0": len(values)}  # the final checkpoint committed them


async def test_pinned_serving_publishes_but_loads_nothing_new(tmp_path: Path) -> None:
    values, _ = traffic(30, now_ms())
    updater, source, registry, _, server, _ = build(tmp_path, values, server=True)
    assert server is not None
    async with updater:
        await wait_for(lambda: server.serving is not None, what="a first version served")
        first = server.serving
        registry.serving_row = Serving("pinned", first, "pinned by hand: test")
        await wait_for(lambda: updater.release.serving.mode == "pinned", what="the pin followed")
        # A release already past its pin check may still load the newest; the reconcile then
        # brings the pinned version back. Settled: nothing in hand and the pinned one answering.
        await wait_for(
            lambda: not updater.release.busy and server.serving == first, what="the pinned version served"
        )
        await asyncio.sleep(0.5)  # a few reconciles: nothing more to load
        await wait_for(lambda: not updater.release.busy and server.serving == first, what="settled")
        loads = len(server.loads)
        source.extend(traffic(40, now_ms(), clicked="cold")[0])
        published = len(registry.ops("add_version"))
        await wait_for(lambda: len(registry.ops("add_version")) > published + 1, what="more versions")
        assert len(server.loads) == loads and server.serving == first
        assert updater.status()["serving"] == {
            "mode": "pinned",
            "version": first,
            "reason": "pinned by hand: test",
            "delta": None,
        }


async def test_while_the_server_is_down_nothing_piles_up_and_it_catches_up(tmp_path: Path) -> None:
    values, _ = traffic(30, now_ms())
    updater, source, registry, _, server, _ = build(tmp_path, values, server=True)
    assert server is not None
    async with updater:
        await wait_for(lambda: server.serving is not None, what="a first version served")
        server.down = True
        await wait_for(lambda: updater.status()["dependencies"]["triton"]["ok"] is False, what="triton down")
        # Publishing holds while the server is down (versions would pile up unserved).
        published = len(registry.ops("add_version"))
        source.extend(traffic(30, now_ms())[0])
        await asyncio.sleep(0.8)
        assert len(registry.ops("add_version")) <= published + 1  # at most the one already in hand
        server.down = False
        await wait_for(lambda: updater.status()["dependencies"]["triton"]["ok"] is True, what="triton back")
        # The newest directory (more may be published now that the server is back) is served again.
        await wait_for(
            lambda: server.serving == updater.release.publisher.versions()[-1],
            what="the newest version served again",
        )


async def test_a_refused_registry_write_is_set_aside_not_an_outage(tmp_path: Path) -> None:
    values, _ = traffic(30, now_ms())
    values.append(b"not json at all")  # one dead letter
    updater, _, registry, *_ = build(tmp_path, values)
    registry.refuse = "dead_letters"
    async with updater:
        await wait_for(lambda: updater.status()["registry_outbox"]["set_aside"] == 1, what="the set-aside")
        status = updater.status()
        assert status["dependencies"]["postgres"]["ok"] is True
        assert status["dependencies"]["postgres"]["outages"] == 0
        assert registry.ops("add_version")  # the rest went through
    lines = (tmp_path / "state" / "registry-rejected.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    kept = orjson.loads(lines[0])
    assert kept["op"]["op"] == "dead_letters" and "SQLSTATE 23514" in kept["error"]
    assert [row[3] for row in kept["op"]["rows"]] == ["not_json"]  # the dead letter's reason


async def test_status_uses_the_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock(at=1_000.0)
    updater, *_ = build(tmp_path, [], clock=clock)
    async with updater:
        status = updater.status()
    assert status["updated_at"] == pytest.approx(clock.time(), abs=5)
    assert status["updated_at"] < 1_000_000  # the fake epoch, not the wall clock


async def test_a_restart_publishes_nothing_new_without_new_samples(tmp_path: Path) -> None:
    values, samples = traffic(40, now_ms())
    updater, _, registry, *_ = build(tmp_path, values)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
        await wait_for(lambda: updater.freshness_settled and registry.ops("mark_live"), what="settled")
    published = len(registry.ops("add_version"))
    again, _, registry2, *_ = build(tmp_path, values)
    registry2.applied = list(registry.applied)  # the same PostgreSQL
    async with again:
        await asyncio.sleep(1.0)  # several publish intervals
    assert len(registry2.ops("add_version")) == published


async def test_versions_go_on_from_the_registry_even_if_it_was_away_at_start(tmp_path: Path) -> None:
    values, _ = traffic(30, now_ms())
    updater, _, registry, *_ = build(tmp_path, values)
    # Another writer published (and the gate rejected) up to version 40 before; no directory shows it.
    registry.applied = [
        {
            "op": "add_version",
            "version": 40,
            "status": "rejected",
            "offsets": {},
            "samples_seen": 0,
            "metrics": {},
        }
    ]
    registry.down = True
    await updater.start()
    try:
        registry.down = False
        await wait_for(lambda: len(registry.ops("add_version")) > 1, what="a version")
        assert registry.ops("add_version")[1]["version"] == 41
    finally:
        await updater.stop()


async def test_a_warm_start_learns_the_history_once_and_its_first_version_says_so(tmp_path: Path) -> None:
    history, samples = traffic(50, now_ms() - 3_600_000)
    learned = samples + 1  # the file is the whole history: its last open window is closed too
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join([*history, b"{not json"]) + b"\n")
    updater, _, registry, *_ = build(tmp_path, [], warm_start=path, holdout_every=0)
    async with updater:
        assert updater.learner.samples_trained == learned  # before the first fetch
        assert updater.positions == {}  # the file's offsets are not Kafka's
        await wait_for(lambda: registry.ops("add_version"), what="a version")
    first = registry.ops("add_version")[0]
    warm = first["metrics"]["warm_start"]
    assert warm["samples_trained"] == learned and warm["events"] == len(history) + 1
    assert warm["dead_letters_by_reason"] == {"not_json": 1}
    assert first["samples_seen"] == learned
    # A restart resumes from the checkpoint: the history is not learned twice.
    again, *_ = build(tmp_path, [], warm_start=path, holdout_every=0)
    async with again:
        assert again.learner.samples_trained == learned


async def test_a_missing_warm_start_file_fails_the_start_clearly(tmp_path: Path) -> None:
    updater, *_ = build(tmp_path, [], warm_start=tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="warm-start"):
        async with updater:
            pass


async def test_impressions_are_scored_on_arrival_and_a_restart_can_turn_it_off(tmp_path: Path) -> None:
    values, samples = traffic(200, now_ms())
    updater, *_ = build(tmp_path, values, measure_every=2)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == samples, what="every sample learned")
    metrics = updater.learner.metrics
    # Only the measured requests' samples count, each with the score its impression got.
    assert metrics.expecting and 0 < metrics.state()["logloss_n"] < samples
    again, *_ = build(tmp_path, values, measure_every=0)
    async with again:
        assert not again.learner.metrics.expecting  # every sample counts again


class CannedGroup:
    """A group whose other rank holds ``theirs``: what ``_group_checkpoint`` gathers."""

    def __init__(self, theirs: list[str]) -> None:
        self.theirs = theirs

    def gather(self, mine: list[str]) -> list[list[str]]:
        return [mine, self.theirs]


def group_checkpoint(
    store: CheckpointStore, token: str, step: int, rank: int = 0, first: bool = False
) -> None:
    store.save({"step": step, "group": {"rank": rank, "world_size": 2, "token": token, "first": first}})


async def test_a_group_rank_resumes_from_the_newest_checkpoint_every_rank_holds(tmp_path: Path) -> None:
    updater, *_ = build(tmp_path, world_size=2, rank=0, group_init="file:///unused")
    store = updater.checkpointer.store
    assert store.keep_previous
    group_checkpoint(store, "t1", 1, first=True)
    group_checkpoint(store, "t2", 2)  # the other rank died before it wrote its own t2
    updater.group = CannedGroup(["t1", "t0"])  # type: ignore[assignment]
    saved = await updater._group_checkpoint()
    assert saved is not None and saved["step"] == 1
    assert store.peek()["step"] == 1 and store.peek(previous=True) is None  # type: ignore[index]
    updater.group = CannedGroup(["t1"])  # type: ignore[assignment]
    assert (await updater._group_checkpoint())["step"] == 1  # type: ignore[index]
    updater.group = CannedGroup(["t9"])  # type: ignore[assignment]
    with pytest.raises(FreshrankError, match="no state in common"):
        await updater._group_checkpoint()
    group_checkpoint(store, "t3", 3)
    group_checkpoint(
        store, "t4", 4
    )  # the first (t1) is gone: this rank's history no longer reaches the start
    updater.group = CannedGroup([""])  # type: ignore[assignment]
    with pytest.raises(FreshrankError, match="no state in common"):
        await updater._group_checkpoint()


async def test_a_group_starts_again_when_one_rank_missed_the_first_checkpoint(tmp_path: Path) -> None:
    updater, *_ = build(tmp_path, world_size=2, rank=1, group_init="file:///unused")
    updater.group = CannedGroup([""])  # type: ignore[assignment]
    assert await updater._group_checkpoint() is None  # no rank has one: a first start
    store = updater.checkpointer.store
    group_checkpoint(store, "t1", 1, rank=1, first=True)  # this rank's first; the other died first
    assert await updater._group_checkpoint() is None
    assert store.peek() is None and not list((tmp_path / "state").glob("tables-*"))
    group_checkpoint(store, "t1", 1, rank=1, first=True)
    updater.group = CannedGroup(["t1", ""])  # type: ignore[assignment]
    assert (await updater._group_checkpoint())["step"] == 1  # type: ignore[index]


async def test_a_lone_updaters_checkpoint_is_not_a_group_ranks(tmp_path: Path) -> None:
    updater, *_ = build(tmp_path, world_size=2, rank=1, group_init="file:///unused")
    updater.group = CannedGroup([""])  # type: ignore[assignment]
    CheckpointStore(tmp_path / "state").save({"step": 5})  # an updater's alone
    with pytest.raises(ConfigError, match=r"rank 1 of 2 .* found one of an updater alone"):
        await updater._group_checkpoint()
