"""Samples/s learned by the updater end to end, against a bare PyTorch loop on the same samples.

The stream is the simulator's, generated offline and produced to the embedded broker before
the clock starts; the updater then works it off as a backlog (Kafka -> decode -> clean -> join
-> batch -> train), once without exports and once publishing to Triton every 2 s. The bare
loop trains the same model on the same samples, encoded into batches in memory beforehand:
the limit the updater could reach if everything around training were free. The ratio
between them is the figure; both run on the same machine in the same minute.

Both learn the same samples in nearly the same order, the order their labels became known (the
bare loop's as the consumer path labels the stream record by record; the updater's fetch by
fetch, a partition at a time), and both report the prequential AUC of each sample scored
as it is learned only in the run without impressions scored on arrival
(``without_exports_unmeasured``): the default runs score 1 request in 4 at its impression
(``--measure-every``), a different and lower measure of the same model. The window of both is
the stream's last 10,000 samples, whose misses come out after every click (the stream ends), so
the AUC there says little of the model. ``prequential_auc_mid_stream`` is the same window read
when half the samples were learned (the updater's within one 50 ms poll of that point).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import math
import os
import pstats
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from freshrank.bench.common import Progress, labelled, labelled_records
from freshrank.simulator import SimulatorConfig, encode_event, generate
from freshrank.stack import EmbeddedStack, free_port
from freshrank.up import rank_command
from rankcore.features import Vocabularies, encode
from rankcore.holdout import DEFAULT_MEASURE_EVERY
from rankcore.model import RankerConfig
from updater.batcher import DEFAULT_BATCH_SIZE
from updater.ingest_workers import IngestWorkers
from updater.joiner import DEFAULT_WINDOW_MS
from updater.learner import Learner
from updater.service import Updater
from updater.settings import UpdaterSettings
from updater.source import ensure_topic
from updater.status import read_status

RATE = 2_000  # simulated events/s: sets how dense requests and actions are in stream time
DURATION_S = 150  # of stream time: about 300k events
TARGET_RATIO = 0.85
NO_EXPORTS_S = 1e9
PARTITIONS = 3


def stream(seed: int = 11, partitions: int = PARTITIONS) -> tuple[list[dict[str, Any]], int]:
    """The simulator's events for DURATION_S seconds that ended just now, plus one sentinel per
    partition; and how many sentinels.

    A sentinel is an impression one attribution window after the last event, keyed to land on
    its partition (the producer's partitioner: murmur2 of the user id): it moves that
    partition's watermark past every open window, so the updater closes them all as it would in
    a stream that goes on, instead of after the partition has been quiet for the join's idle
    time (2 s of a run of about 15).
    """
    start_ms = int(time.time() * 1000) - DURATION_S * 1000 - 120_000
    events = list(generate(SimulatorConfig(seed=seed, bad_rate=0.0), RATE, DURATION_S, start_ms))
    last = max(int(e["ts"]) for e in events)
    sentinels: dict[int, dict[str, Any]] = {}
    for k in range(10_000):
        user = f"throughput-sentinel-{k}"
        partition = (murmur2(user.encode()) & 0x7FFFFFFF) % partitions
        if partition not in sentinels:
            sentinels[partition] = dict(
                events[0], event_id=user, request_id=user, user_id=user, ts=last + DEFAULT_WINDOW_MS + 1_000
            )
        if len(sentinels) == partitions:
            break
    events.extend(sentinels.values())
    return events, len(sentinels)


async def produce_all(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    started = time.monotonic()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in map(encode_event, events)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


def bare_loop(samples: list[Any], config: RankerConfig, batch_size: int) -> dict[str, Any]:
    """The limit: the same model trained on the same samples, batches already encoded."""
    vocabs = Vocabularies(config)
    batches = [
        encode(samples[i : i + batch_size], vocabs, config.max_tokens)
        for i in range(0, len(samples), batch_size)
    ]
    # torch's first steps pay one-off costs (allocations, kernels): warm up a throwaway learner.
    warm = Learner(config, device="auto")
    for batch in batches[:20]:
        warm.learn(batch)
    learner = Learner(config, device="auto")
    half, mid_auc = len(samples) // 2, float("nan")
    started = time.perf_counter()
    for batch in batches:
        learner.learn(batch)
        if math.isnan(mid_auc) and learner.samples_trained >= half:
            mid_auc = learner.metrics.auc()
    elapsed = time.perf_counter() - started
    return {
        "samples": learner.samples_trained,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(learner.samples_trained / elapsed, 1),
        "prequential_auc": learner.metrics.auc(),
        "prequential_auc_mid_stream": mid_auc,
    }


async def updater_run(
    stack: EmbeddedStack,
    topic: str,
    state_dir: Path,
    target: int,
    exports: bool,
    progress: Progress,
    measure_every: int = DEFAULT_MEASURE_EVERY,
    ingest_workers: int = 0,
) -> dict[str, Any]:
    a = stack.addresses
    settings = UpdaterSettings(
        bootstrap=a.bootstrap,
        pg_dsn=a.pg_dsn,
        repository=Path(a.repository),
        state_dir=state_dir,
        triton_grpc=a.triton_grpc if exports else None,
        topic=topic,
        group=f"bench-{state_dir.name}",
        publish_interval_s=2.0 if exports else NO_EXPORTS_S,
        holdout_every=0,  # every sample trained, so the counts match the bare loop's
        measure_every=measure_every,
        ingest_workers=ingest_workers,
        metrics_port=0,  # a bench measures; nothing scrapes it
    )
    proc = psutil.Process()
    peak_rss = proc.memory_info().rss
    updater = Updater.from_settings(settings)
    async with updater:
        # The clock starts with the first record consumed: joining the consumer group (the
        # broker's rebalance delay) is start-up, not throughput.
        joined = time.monotonic()
        while updater.ingest.counts.events_consumed == 0:
            await asyncio.sleep(0.01)
            _raise_if_failed(updater)
        started = time.monotonic()
        workers = [psutil.Process(pid) for pid in _ingest_pids(updater)]
        broker = psutil.Process(stack.broker.process.proc.pid) if stack.broker.process.proc else None
        cpu0, ingest0 = _cpu(proc), sum(_cpu(w) for w in workers)
        broker0 = _cpu(broker) if broker is not None else 0.0
        last_report = started
        mid_auc = float("nan")
        while updater.learner.samples_trained < target:
            await asyncio.sleep(0.05)
            _raise_if_failed(updater)
            peak_rss = max(peak_rss, proc.memory_info().rss)
            if math.isnan(mid_auc) and updater.learner.samples_trained >= target // 2:
                mid_auc = updater.learner.metrics.auc()
            now = time.monotonic()
            if now - last_report > 5:
                last_report = now
                progress(f"  {updater.learner.samples_trained:,}/{target:,} samples")
            if now - started > 300:
                raise RuntimeError(
                    f"the updater learned {updater.learner.samples_trained} of {target} in 300 s"
                )
        elapsed = time.monotonic() - started
        cpu_s, ingest_cpu_s = _cpu(proc) - cpu0, sum(_cpu(w) for w in workers) - ingest0
        broker_cpu_s = _cpu(broker) - broker0 if broker is not None else None
        status = updater.status()
    samples = updater.learner.samples_trained
    return {
        "samples": updater.learner.samples_trained,
        "group_join_s": round(started - joined, 2),
        "events_consumed": status["events_consumed"],
        "seconds": round(elapsed, 3),
        "samples_per_s": round(updater.learner.samples_trained / elapsed, 1),
        "ingest_workers": ingest_workers,
        # The updater's process (fetch, join unless in workers, encode, train) and its workers.
        "cpu_s": round(cpu_s, 2),
        "ingest_workers_cpu_s": round(ingest_cpu_s, 2),
        # The embedded broker serving the fetches shares the machine's cores.
        "broker_cpu_s": round(broker_cpu_s, 2) if broker_cpu_s is not None else None,
        "samples_per_cpu_s_updater_process": round(samples / cpu_s, 1) if cpu_s else None,
        "samples_per_cpu_s_ingest_workers": round(samples / ingest_cpu_s, 1) if ingest_cpu_s else None,
        "versions_published": status["versions_published"],
        "backpressure_pauses": status.get("backpressure_pauses"),
        "dead_letters": status["dead_letters"],
        "dead_letters_by_reason": status["dead_letters_by_reason"],
        "peak_rss_mib_benchmark_process": round(peak_rss / 2**20, 1),  # the stream in memory too
        "prequential_auc": updater.learner.metrics.auc(),
        "prequential_auc_mid_stream": mid_auc,
    }


def _launch_group(
    stack: EmbeddedStack, topic: str, states: list[Path], logs: Path
) -> list[subprocess.Popen[bytes]]:
    a = stack.addresses
    settings = UpdaterSettings(
        bootstrap=a.bootstrap,
        pg_dsn=a.pg_dsn,
        repository=Path(a.repository),
        state_dir=states[0],
        topic=topic,
        group=f"bench-{topic}",
        publish_interval_s=NO_EXPORTS_S,
        holdout_every=0,  # every sample trained, so the counts match the bare loop's
        world_size=len(states),
        group_init=f"tcp://127.0.0.1:{free_port()}",
        metrics_port=0,
    )
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank, state in enumerate(states):
        with open(logs / f"rank{rank}.log", "wb") as log:
            procs.append(
                subprocess.Popen(rank_command(settings, rank, state), stdout=log, stderr=subprocess.STDOUT)
            )
    return procs


async def group_run(
    stack: EmbeddedStack, topic: str, root: Path, target: int, progress: Progress, world: int = 2
) -> dict[str, Any]:
    """A training group of ``world`` updaters (``--world-size``), each its own process as in
    production, timed from the first record either consumes to the last sample learned (read
    off their status files, written every second: the figure is good to about a second)."""
    states = [root / f"rank{r}" for r in range(world)]
    procs = _launch_group(stack, topic, states, root)
    watched = [psutil.Process(p.pid) for p in procs]

    def statuses() -> list[dict[str, Any]]:
        for p in procs:
            if p.poll() is not None:
                tail = (root / "rank0.log").read_text()[-2000:]
                raise RuntimeError(f"a rank of the group exited with {p.returncode}: {tail}")
        return [read_status(d / "status.json") for d in states]

    try:
        joined = time.monotonic()
        for _ in range(6000):  # the clock starts with the first record consumed, as above
            if any(int(s.get("events_consumed") or 0) for s in statuses()):
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        cpu0 = [_cpu(w) for w in watched]
        learned, last_report = 0, started
        while learned < target:
            await asyncio.sleep(0.05)
            learned = sum(int(s.get("samples_trained") or 0) for s in statuses())
            now = time.monotonic()
            if now - last_report > 5:
                last_report = now
                progress(f"  {learned:,}/{target:,} samples")
            if now - started > 300:
                raise RuntimeError(f"the group learned {learned} of {target} in 300 s")
        elapsed = time.monotonic() - started
        cpu_s = [round(_cpu(w) - c, 2) for w, c in zip(watched, cpu0, strict=True)]
        final = statuses()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    per_rank = [int(s.get("samples_trained") or 0) for s in final]
    return {
        "world_size": world,
        "samples": learned,
        "samples_per_rank": per_rank,
        "group_join_s": round(started - joined, 2),
        "seconds": round(elapsed, 3),
        "samples_per_s": round(learned / elapsed, 1),
        "cpu_s_per_rank": cpu_s,
        "samples_per_cpu_s": round(learned / sum(cpu_s), 1) if sum(cpu_s) else None,
        "rounds_per_rank": [(s.get("group") or {}).get("rounds") for s in final],
        "dead_letters": sum(int(s.get("dead_letters") or 0) for s in final),
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _ingest_pids(updater: Updater) -> list[int]:
    ingest = updater.ingest
    return [p for p in ingest.pids() if p is not None] if isinstance(ingest, IngestWorkers) else []


def _raise_if_failed(updater: Updater) -> None:
    failed = updater.supervisor.failure()
    if failed is not None:
        raise RuntimeError(f"the updater's {failed[0]} task failed") from failed[1]


def consumer_path_profile(events: list[dict[str, Any]], limit: int = 12) -> dict[str, Any]:
    """Where the updater's Python time goes between Kafka and the trainer, on the same events.

    Runs the consumer-side steps (clean, join, encode) without Kafka, under cProfile; returns
    their rate and the top functions by own time.
    """
    raw = [encode_event(e)[1] for e in events]
    now_ms = int(time.time() * 1000)
    config = RankerConfig()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    samples, _ = labelled_records(((value, now_ms) for value in raw), DEFAULT_WINDOW_MS)
    vocabs = Vocabularies(config)
    for i in range(0, len(samples), DEFAULT_BATCH_SIZE):
        encode(samples[i : i + DEFAULT_BATCH_SIZE], vocabs, config.max_tokens)
    profiler.disable()
    elapsed = time.perf_counter() - started
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    top = [
        {"function": f"{Path(fn[0]).name}:{fn[2]}", "own_s": round(st[2], 3), "calls": st[1]}
        for fn, st in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:limit]  # type: ignore[attr-defined]
    ]
    return {
        "events": len(raw),
        "seconds_profiled": round(elapsed, 3),
        "events_per_s_profiled": round(len(raw) / elapsed, 1),
        "top_own_time": top,
    }


def run(out: Path, progress: Progress) -> dict[str, Any]:
    torch.set_num_threads(1)  # as the updater (torch_threads=1)
    progress(f"generating {DURATION_S} s of simulated traffic at {RATE} events/s")
    events, sentinels = stream()
    samples, counts = labelled(events, DEFAULT_WINDOW_MS)
    target = len(samples) - sentinels  # the sentinels' own impressions stay open in the updater
    progress(f"{len(events):,} events -> {target:,} labelled samples")

    config = RankerConfig()
    progress("bare loop: the same samples, already in memory")
    bare = bare_loop(samples[:target], config, DEFAULT_BATCH_SIZE)
    progress(f"bare loop: {bare['samples_per_s']:,.0f} samples/s")

    result: dict[str, Any] = {
        "events": len(events),
        "samples": target,
        "batch_size": DEFAULT_BATCH_SIZE,
        "torch_threads": 1,
        "bare_loop": bare,
    }

    async def services() -> None:
        with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as tmp:
            root = Path(tmp)
            progress("starting the embedded broker, PostgreSQL and Triton")
            async with EmbeddedStack(root / "stack", free_port(), free_port(), free_port()) as stack:
                # The default updater without and with exports, and without the impressions
                # scored on arrival for the prequential metrics (--measure-every 0), for their cost.
                for name, exports, measure_every, workers in (
                    ("without_exports", False, DEFAULT_MEASURE_EVERY, 0),
                    ("with_exports", True, DEFAULT_MEASURE_EVERY, 0),
                    ("without_exports_unmeasured", False, 0, 0),
                    # The consumer path in worker processes (--ingest-workers), by partition.
                    ("without_exports_1_ingest_worker", False, DEFAULT_MEASURE_EVERY, 1),
                    ("without_exports_2_ingest_workers", False, DEFAULT_MEASURE_EVERY, 2),
                ):
                    topic = f"throughput-{name}"
                    await ensure_topic(stack.addresses.bootstrap, topic, partitions=PARTITIONS)
                    progress(f"producing {len(events):,} events to {topic}")
                    produce_s = await produce_all(stack.addresses.bootstrap, topic, events)
                    progress(f"produced in {produce_s:.1f} s; updater {name.replace('_', ' ')}")
                    run_result = await updater_run(
                        stack, topic, root / name, target, exports, progress, measure_every, workers
                    )
                    run_result["measure_every"] = measure_every
                    run_result["ratio_to_bare"] = round(
                        run_result["samples_per_s"] / bare["samples_per_s"], 3
                    )
                    result[name] = run_result
                    progress(
                        f"updater {name.replace('_', ' ')}: {run_result['samples_per_s']:,.0f} samples/s "
                        f"= {run_result['ratio_to_bare']:.2f} of the bare loop"
                    )
                # Two updaters training together (--world-size 2), each its own process.
                name, topic = "without_exports_group_of_2", "throughput-group"
                await ensure_topic(stack.addresses.bootstrap, topic, partitions=PARTITIONS)
                progress(f"producing {len(events):,} events to {topic}")
                await produce_all(stack.addresses.bootstrap, topic, events)
                progress("a training group of 2 updaters")
                group = await group_run(stack, topic, root / name, target, progress)
                group["ratio_to_bare"] = round(group["samples_per_s"] / bare["samples_per_s"], 3)
                result[name] = group
                progress(
                    f"group of 2: {group['samples_per_s']:,.0f} samples/s = {group['ratio_to_bare']:.2f} "
                    f"of the bare loop (per rank {group['samples_per_rank']}, "
                    f"CPU-s {group['cpu_s_per_rank']})"
                )

    asyncio.run(services())
    progress("profiling the consumer path (clean, join, encode) without Kafka")
    result["consumer_path"] = consumer_path_profile(events[:100_000])
    ratio = result["without_exports"]["ratio_to_bare"]
    result["targets"] = {
        "ratio_to_bare_without_exports": {
            "target": TARGET_RATIO,
            "value": ratio,
            "met": ratio >= TARGET_RATIO,
        },
        "ratio_to_bare_with_exports": {
            "target": TARGET_RATIO,
            "value": result["with_exports"]["ratio_to_bare"],
            "met": result["with_exports"]["ratio_to_bare"] >= TARGET_RATIO,
        },
        "ratio_to_bare_2_ingest_workers": {
            "target": TARGET_RATIO,
            "value": result["without_exports_2_ingest_workers"]["ratio_to_bare"],
            "met": result["without_exports_2_ingest_workers"]["ratio_to_bare"] >= TARGET_RATIO,
        },
    }
    result["cores"] = os.cpu_count()
    result["labelled"] = counts
    return result
