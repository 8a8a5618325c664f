"""Ingest workers (real processes) against the single-process consumer path on the same stream."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import orjson
import psutil
import pytest

from updater.ingest import WORKERS_STATE, Ingest, Record, merge_states
from updater.ingest_workers import IngestWorkerFailed, IngestWorkers

NOW = 1_800_000_000_000
WINDOW_MS = 1_000
PARTITIONS = 3
SETTINGS: dict[str, Any] = {"window_ms": WINDOW_MS, "holdout_every": 5, "measure_every": 4}


def stream(seed: int = 3, requests: int = 300) -> list[list[Record]]:
    """Fetches of a shop's traffic over 3 partitions (keyed by user) and an items topic: clicks,
    impressions that lack attributes (the items topic's updates fill them), malformed records,
    redelivered offsets and producer retries. (Titles that events carry reach the other
    workers a fetch later: see the test of that below.)"""
    rng = random.Random(seed)
    offsets = {p: 0 for p in range(PARTITIONS)}
    item_offset = 0
    fetches: list[list[Record]] = []
    for r in range(requests):
        fetch: list[Record] = []
        ts = NOW + r * 50
        if r % 20 == 0:
            item = f"i{rng.randint(0, 9)}"
            value = orjson.dumps(
                {"item_id": item, "ts": ts, "title": f"title {r}", "category": "c", "price": 3.0}
            )
            fetch.append(Record("items", 0, item_offset, item.encode(), value))
            fetch.append(Record("items", 0, item_offset + 1, b"x", b"{not json"))
            item_offset += 2
        for p in range(PARTITIONS):  # every partition in every fetch: all stay active
            user = f"u{p}-{rng.randint(0, 5)}"
            request = f"r{r}-{p}"
            for pos in range(3):
                item = f"i{rng.randint(0, 9)}"
                body: dict[str, Any] = {
                    "event_id": f"{request}-{pos}",
                    "type": "impression",
                    "ts": ts,
                    "user_id": user,
                    "request_id": request,
                    "query": "red shoes",
                    "item_id": item,
                    "position": pos,
                }
                if rng.random() < 0.5:
                    body["item"] = {"category": "shoes", "brand": "acme", "price": 10.0}
                fetch.append(Record("events", p, offsets[p], user.encode(), orjson.dumps(body)))
                offsets[p] += 1
                if rng.random() < 0.3:
                    click = {**body, "event_id": f"{request}-{pos}-c", "type": "click", "ts": ts + 20}
                    fetch.append(Record("events", p, offsets[p], user.encode(), orjson.dumps(click)))
                    offsets[p] += 1
            if rng.random() < 0.05:
                fetch.append(Record("events", p, offsets[p], user.encode(), b'{"type": "click"}'))
                offsets[p] += 1
            if rng.random() < 0.05 and fetch[-1].topic == "events":
                last = fetch[-1]  # a producer retry: the same event at a new offset
                fetch.append(Record("events", last.partition, offsets[last.partition], last.key, last.value))
                offsets[last.partition] += 1
        if r % 50 == 7 and fetches:
            fetch = fetches[-1][:5] + fetch  # redelivered after a rebalance
        fetches.append(fetch)
    return fetches


def times() -> Iterator[int]:
    for i in range(10**6):
        yield NOW + i * 50 + 40


def summary(out: Any) -> tuple[Any, ...]:
    return (
        [asdict(s) for s in out.trained],
        sorted(asdict(s)["request_id"] + s.item_id for s in out.held_out),
        [(d.topic, d.partition, d.offset, d.reason) for d in out.dead],
        sorted((s.request_id, s.item_id) for s in out.opened),
    )


async def run_workers(workers: IngestWorkers, fetches: list[list[Record]], clock: Iterator[int]) -> list[Any]:
    return [summary(await workers.aprocess(f, next(clock), ())) for f in fetches]


def test_workers_make_what_one_process_makes() -> None:
    fetches = stream()
    single = Ingest(**SETTINGS, items_topic="items")
    clock = times()
    expected = [summary(single.process(f, next(clock), ())) for f in fetches]

    async def main() -> list[Any]:
        workers = IngestWorkers(2, items_topic="items", **SETTINGS)
        try:
            got = await run_workers(workers, fetches, times())
            assert workers.counts == single.counts
            assert workers.positions == single.positions
            assert workers.ledger_state() == single.ledger_state()
            assert workers.pending == single.pending
            assert workers.catalogue.titles() == single.catalogue.titles()
            held = sorted((s.request_id, s.item_id) for s in await workers.aopen_holdout())
            assert held == sorted((s.request_id, s.item_id) for s in single.open_holdout())
            await workers.close()
            assert workers.counts == single.counts  # still readable once stopped (summaries)
            return got
        finally:
            await workers.close()

    got = asyncio.run(main())
    assert sum(len(t[0]) for t in expected) > 500 and sum(len(t[2]) for t in expected) > 20
    assert got == expected  # the same samples in the same order, the same dead letters


@pytest.mark.parametrize("before, after", [(2, 3), (2, 0), (0, 2)])
def test_a_checkpoint_resumes_under_another_worker_count(before: int, after: int) -> None:
    fetches = stream(seed=5)
    half = len(fetches) // 2
    single = Ingest(**SETTINGS, items_topic="items")
    clock = times()
    expected = [summary(single.process(f, next(clock), ())) for f in fetches]

    async def stage(
        n: int, state: dict[str, Any] | None, part: list[list[Record]], clock: Iterator[int]
    ) -> Any:
        ingest: Any = (
            IngestWorkers(n, items_topic="items", **SETTINGS)
            if n
            else Ingest(**SETTINGS, items_topic="items")
        )
        try:
            if state is not None:
                ingest.restore(state)
            got = [summary(await ingest.aprocess(f, next(clock), ())) for f in part]
            return got, (await ingest.state_capture())(), ingest.counts
        finally:
            await ingest.close()

    async def main() -> Any:
        clock = times()
        first, state, _ = await stage(before, None, fetches[:half], clock)
        assert (WORKERS_STATE in state) == (before > 0)
        second, _, counts = await stage(after, state, fetches[half:], clock)
        return first + second, counts

    got, counts = asyncio.run(main())
    assert counts == single.counts
    assert got == expected


def impression(partition: int, offset: int, request: str, title: str | None, ts: int = NOW) -> Record:
    """An impression of item i1 on ``partition``, with the item's attributes when ``title``."""
    body: dict[str, Any] = {
        "event_id": f"{request}-e",
        "type": "impression",
        "ts": ts,
        "user_id": "u",
        "request_id": request,
        "query": "q",
        "item_id": "i1",
        "position": 0,
    }
    if title is not None:
        body["item"] = {"category": "c", "brand": "b", "price": 1.0, "title": title}
    return Record("events", partition, offset, b"u", orjson.dumps(body))


def test_a_title_an_event_carries_fills_the_other_workers_impressions_from_the_next_fetch() -> None:
    async def main() -> list[Any]:
        workers = IngestWorkers(2, items_topic="items", window_ms=WINDOW_MS)
        try:
            await workers.aprocess([impression(1, 0, "a", "red shoe")], NOW, ())  # worker 1
            assert workers.catalogue.get("i1") is not None  # back with worker 1's answer
            await workers.aprocess([impression(0, 0, "b", None)], NOW + 10, ())  # worker 0: filled
            later = NOW + WINDOW_MS + 100  # both partitions' watermarks pass the windows
            out = await workers.aprocess(
                [impression(0, 1, "c", None, later), impression(1, 1, "d", None, later)], later, ()
            )
            return sorted((s.request_id, s.title, s.category) for s in out.trained)
        finally:
            await workers.close()

    assert asyncio.run(main()) == [("a", "red shoe", "c"), ("b", "red shoe", "c")]


def test_the_catalogues_agree_with_one_process_on_what_is_newest() -> None:
    # An event re-states item i1 at a later time than the items topic's latest; an older
    # retitle then arrives on the items topic: stale, here as in one process.
    def item(offset: int, ts: int, title: str) -> Record:
        value = orjson.dumps({"item_id": "i1", "ts": ts, "title": title, "category": "c"})
        return Record("items", 0, offset, b"i1", value)

    fetches = [
        [item(0, NOW, "title a")],
        # On partition 1: worker 1's.
        [impression(1, 0, "r0", "title a", NOW + 200), impression(1, 1, "r1", "title a", NOW + 300)],
        [item(1, NOW + 150, "b")],
    ]
    single = Ingest(window_ms=WINDOW_MS, items_topic="items")
    for f in fetches:
        single.process(f, NOW + 400, ())

    async def main() -> tuple[Any, Any, int]:
        workers = IngestWorkers(2, window_ms=WINDOW_MS, items_topic="items")
        try:
            await workers.aprocess(fetches[0], NOW + 400, ())
            await workers.aprocess(fetches[1], NOW + 400, ())
            forwarded = len(workers._workers[0].forward)  # worker 1's two restatements, once
            await workers.aprocess(fetches[2], NOW + 400, ())
            return workers.catalogue.get("i1"), workers.catalogue.stale, forwarded
        finally:
            await workers.close()

    known, stale, forwarded = asyncio.run(main())
    assert forwarded == 1
    assert known == single.catalogue.get("i1") and known is not None and known.title == "title a"
    assert stale == single.catalogue.stale == 1


def test_a_partition_gone_quiet_is_closed_by_the_others_progress_across_workers() -> None:
    fetches = [
        [impression(0, 0, "a", None, NOW), impression(1, 0, "b", None, NOW)],
        [impression(0, 1, "closer", None, NOW + 10 * WINDOW_MS)],  # partition 1 (worker 1) goes quiet
        [],
        [],
    ]
    clock = [NOW, NOW + 100, NOW + 3_000, NOW + 6_000]  # the join's idle time is 2 s
    single = Ingest(window_ms=WINDOW_MS)
    expected = [
        sorted(s.request_id for s in single.process(f, t, ()).trained)
        for f, t in zip(fetches, clock, strict=True)
    ]

    async def main() -> list[list[str]]:
        workers = IngestWorkers(2, window_ms=WINDOW_MS)
        try:
            return [
                sorted(s.request_id for s in (await workers.aprocess(f, t, ())).trained)
                for f, t in zip(fetches, clock, strict=True)
            ]
        finally:
            await workers.close()

    got = asyncio.run(main())
    assert [r for fetch in got for r in fetch] == ["a", "b"]  # both closed, none left open
    assert got == expected


def test_a_worker_that_dies_is_named_and_fails_the_next_fetch() -> None:
    async def main() -> None:
        workers = IngestWorkers(2, items_topic="items", **SETTINGS)
        try:
            fetches = stream(requests=4)
            await workers.aprocess(fetches[0], NOW, ())
            victim = workers.pids()[1]
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(IngestWorkerFailed, match=rf"ingest worker 1 \(pid {victim}\) died"):
                await workers.aprocess(fetches[1], NOW + 100, ())
        finally:
            await workers.close()

    asyncio.run(main())


def test_a_worker_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one ingest worker"):
        IngestWorkers(0)


def test_a_stop_signal_to_the_process_group_leaves_the_workers_to_the_updater() -> None:
    # Ctrl-C or systemd signal every process of the group: the updater's graceful stop still
    # needs its workers' states for the final checkpoint.
    async def main() -> None:
        workers = IngestWorkers(2, window_ms=WINDOW_MS)
        try:
            await workers.aprocess([impression(0, 0, "a", None)], NOW, ())
            for pid in workers.pids():
                assert pid is not None
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGINT)
            await asyncio.sleep(0.2)
            await workers.aprocess([impression(1, 0, "b", None)], NOW + 10, ())
            assert workers.pending == 2
            state = (await workers.state_capture())()
            assert len(state[WORKERS_STATE]["workers"]) == 2
        finally:
            await workers.close()

    asyncio.run(main())


def test_a_stalled_worker_is_named_then_stopped() -> None:
    async def main() -> None:
        workers = IngestWorkers(2, window_ms=WINDOW_MS, answer_s=1.5, stalled_after_s=0.3)
        try:
            await workers.aprocess([impression(0, 0, "a", None)], NOW, ())
            assert workers.stalled() == [] and all(w["alive"] for w in workers.describe())
            victim = workers.pids()[1]
            assert victim is not None
            os.kill(victim, signal.SIGSTOP)  # a worker that stops answering
            # A request larger than the pipe's buffer: the send itself blocks on a worker that
            # does not read.
            large = [impression(1, i, f"b{i}", "x" * 300) for i in range(5_000)]
            fetch = asyncio.ensure_future(workers.aprocess(large, NOW + 10, ()))
            await asyncio.sleep(0.8)
            (named,) = workers.stalled()
            assert named.startswith(f"ingest worker 1 (pid {victim}): no answer for ")
            assert [w["stalled"] for w in workers.describe()] == [False, True]
            with pytest.raises(IngestWorkerFailed, match=r"ingest worker 1 .* did not answer within 2 s"):
                await fetch
            assert not psutil.pid_exists(victim)  # killed and reaped
            assert [w["alive"] for w in workers.describe()] == [True, False]
        finally:
            await workers.close()

    asyncio.run(main())


def test_a_checkpoint_from_before_the_ingest_split_restores_into_workers() -> None:
    fetches = stream(seed=9, requests=40)
    single = Ingest(**SETTINGS, items_topic="items")
    for f in fetches:
        single.process(f, NOW + 10_000, ())
    saved = single.state()
    # Earlier checkpoints kept the counts among the service's counters and had no catalogue.
    saved["counters"] = saved.pop("ingest_counts")
    del saved["catalogue"]

    async def main() -> Any:
        workers = IngestWorkers(2, items_topic="items", **SETTINGS)
        try:
            workers.restore(saved)
            return workers.counts, workers.positions, workers.pending
        finally:
            await workers.close()

    counts, positions, pending = asyncio.run(main())
    assert counts == single.counts and positions == single.positions and pending == single.pending


def test_merged_dedup_memory_keeps_every_workers_newest_ids() -> None:
    a = {"dedup": [f"a{i}" for i in range(5)]}
    b = {"dedup": [f"b{i}" for i in range(5)]}
    workers = [single_state(x["dedup"]) for x in (a, b)]
    merged = merge_states(single_state([]), workers)["dedup"]
    assert sorted(merged) == sorted(a["dedup"] + b["dedup"])
    assert set(merged[-4:]) == {"a3", "a4", "b3", "b4"}  # a trim to 4 keeps both workers' newest


def single_state(dedup: list[str]) -> dict[str, Any]:
    ingest = Ingest(window_ms=WINDOW_MS)
    for event_id in dedup:
        ingest.cleaner.deduper.seen(event_id)
    return ingest.state()
