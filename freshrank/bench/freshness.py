"""How long an event takes to change what Triton serves.

Per-event freshness: for each click, add-to-cart or purchase, the time from its production
(the event's timestamp, set by the producer as it sends) to the first response from Triton
by a state that learned the sample it completed — a version, or a delta applied in place
(``model_state`` in the response) — measured by the updater itself when that state answers
(see ``Updater.freshness_by_action``); only actions produced after the warm-up count. Runs
the real loop (broker, updater, PostgreSQL registry, Triton) at several event rates, with
with and without deltas, with frequent snapshots, and with embedding tables of 10k to 10M rows.

Black-box: a brand-new item appears and gets every click for its query; the time from its
first event to the first Triton response that ranks it on top, seen from a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from exporter.triton import Candidate, TritonModel
from freshrank.bench.common import Progress, percentiles
from freshrank.simulator import ShopSimulator, SimulatorConfig, produce
from freshrank.stack import EmbeddedStack, free_port
from rankcore.model import FEATURES, RankerConfig
from updater.service import Updater
from updater.settings import DEFAULT_DELTA_INTERVAL_S, DEFAULT_PUBLISH_INTERVAL_S, UpdaterSettings
from updater.source import ensure_topic

RATES = (500, 2_000, 5_000)
# The first attribution window (10 s) brings clicks and no misses yet: a learner that starts
# from nothing over-predicts clicks then, the gate holds serving at the first version, and
# freshness during that start says nothing about a running shop. Measured from 20 s on; each
# run also reports the figures from 10 s on (``freshness_from_10s_s``).
WARMUP_S = 20.0
EARLY_S = 10.0
MEASURE_S = 30.0
LARGE = ("--items", "150000", "--users", "150000")  # vocabularies near the default capacities
TARGET_P50_S = 1.0
TARGET_P99_S = 2.5
FREQUENT_SNAPSHOTS_S = 2.0  # the default before versions became rare
# Embedding rows (user + item tables, half each; the other tables as the default model's), and
# the simulator's ids for them: its default shop below 100k rows, 150k users and items above.
ROWS = (10_000, 1_000_000, 10_000_000)
TARGET = {"p50": TARGET_P50_S, "p99": TARGET_P99_S}
LAUNCH_TIMEOUT_S = 60.0
SETTLE_LIMIT_S = 20.0


def _settings(
    stack: EmbeddedStack,
    root: Path,
    topic: str,
    publish_interval_s: float,
    delta_interval_s: float = DEFAULT_DELTA_INTERVAL_S,
    rows: int | None = None,
) -> UpdaterSettings:
    a = stack.addresses
    model = RankerConfig()
    if rows is not None:
        model = dataclasses.replace(model, user_capacity=rows // 2, item_capacity=rows // 2)
    return UpdaterSettings(
        model=model,
        delta_interval_s=delta_interval_s,
        bootstrap=a.bootstrap,
        pg_dsn=a.pg_dsn,
        repository=Path(a.repository),
        state_dir=root / topic,
        triton_grpc=a.triton_grpc,
        topic=topic,
        group=f"bench-{topic}",
        publish_interval_s=publish_interval_s,
        metrics_port=0,  # a bench measures; nothing scrapes it
    )


async def rate_run(
    stack: EmbeddedStack,
    root: Path,
    label: str,
    rate: float,
    progress: Progress,
    publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S,
    simulate: tuple[str, ...] = (),
    delta_interval_s: float = DEFAULT_DELTA_INTERVAL_S,
    rows: int | None = None,
) -> dict[str, Any]:
    """``freshrank simulate`` at ``rate`` events/s (its own process, as in production) into a
    fresh topic and updater; freshness measured after the warm-up."""
    topic = f"freshness-{label}"
    bootstrap = stack.addresses.bootstrap
    await ensure_topic(bootstrap, topic, partitions=3)
    settings = _settings(stack, root, topic, publish_interval_s, delta_interval_s, rows)
    updater = Updater.from_settings(settings)
    log_path = root / f"{topic}-simulate.log"
    async with updater:
        log = log_path.open("wb")  # a file, not a pipe: a chatty child never blocks on it
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "freshrank.cli", "simulate", "--bootstrap", bootstrap, "--topic", topic,
            "--rate", str(rate), "--duration", str(WARMUP_S + MEASURE_S), "--seed", str(int(rate)), *simulate,
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
        try:
            early_from = time.time() + EARLY_S
            await asyncio.sleep(WARMUP_S)
            measured_from = time.time()  # actions produced from now on; the start-up is not steady state
            versions0 = updater.status()["versions_published"]
            consumed0 = updater.ingest.counts.events_consumed
            started = time.monotonic()
            lags = []
            while producer.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await producer.wait()
                lag = updater.status().get("consumer_lag")
                if lag is not None:
                    lags.append(lag)
            elapsed = time.monotonic() - started
            out, _ = await producer.communicate()
            if producer.returncode != 0:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"freshrank simulate exited {producer.returncode}: {tail}")
            produced = orjson.loads(out)
            # The slowest actions are the ones still in flight now: wait until every one is served.
            settle_started = time.monotonic()
            while not updater.freshness_settled or (updater.status().get("consumer_lag") or 0) > 0:
                if time.monotonic() - settle_started > SETTLE_LIMIT_S:
                    break
                await asyncio.sleep(0.2)
            settled = updater.freshness_settled
        finally:
            if producer.returncode is None:
                producer.kill()
                await producer.wait()
            log.close()
        status = updater.status()
        fresh = [f for at, f in updater.freshness_by_action if at >= measured_from]
        early = [f for at, f in updater.freshness_by_action if at >= early_from]
    result: dict[str, Any] = {
        "rate_target": rate,
        "events_produced": produced.get("events_produced"),
        "events_per_s": round((status["events_consumed"] - consumed0) / elapsed, 1),
        "publish_interval_s": publish_interval_s,
        "delta_interval_s": delta_interval_s,
        "embedding_rows": _rows(settings.model),
        "simulator_options": list(simulate),
        "deltas": status.get("deltas"),
        "versions": status["versions_published"] - versions0,
        "actions_measured": len(fresh),
        "all_served_at_end": settled,
        "freshness_s": percentiles(fresh),
        "freshness_from_10s_s": percentiles(early),
        "max_consumer_lag": max(lags, default=None),
        "vocab_sizes": status.get("vocab_sizes"),
        "last_export": status.get("last_export"),
    }
    f = result["freshness_s"]
    progress(
        f"{label}: {result['events_per_s']:,.0f} events/s, {result['versions']} versions, "
        f"{(status.get('deltas') or {}).get('written', 0)} deltas, "
        f"freshness p50 {f['p50']} s p95 {f['p95']} s p99 {f['p99']} s, max lag {result['max_consumer_lag']}"
    )
    return result


async def launch_run(stack: EmbeddedStack, root: Path, progress: Progress) -> dict[str, Any]:
    """A new item that gets every click for its query: how long until Triton ranks it first?"""
    topic = "freshness-launch"
    bootstrap = stack.addresses.bootstrap
    await ensure_topic(bootstrap, topic, partitions=3)
    config = SimulatorConfig(seed=9)
    sims: list[ShopSimulator] = []
    stop = asyncio.Event()
    updater = Updater.from_settings(_settings(stack, root, topic, DEFAULT_PUBLISH_INTERVAL_S))
    async with updater, TritonModel(stack.addresses.triton_grpc) as triton:
        background = asyncio.create_task(
            produce(bootstrap, topic, 1_000, 0, config, stop, on_start=sims.append)
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        try:
            await asyncio.sleep(WARMUP_S)
            sim = sims[0]
            category = sim.catalogue[0].category
            rivals = [it for it in sim.by_category[category] if it.item_id != "launch-1"][:19]
            brand = rivals[0].brand
            query = f"{brand} {category}"
            new = Candidate("launch-1", category, brand, rivals[0].price)
            candidates = [new, *(Candidate(r.item_id, r.category, r.brand, r.price) for r in rivals)]
            probe_user = sim.users[0].user_id
            rng = random.Random(3)
            before = await triton.rank(probe_user, query, candidates)
            rank_before = [c.item_id for c, _ in before.items].index(new.item_id) + 1
            started = time.time()
            seq = 0
            first_top: dict[str, Any] | None = None
            trajectory: list[dict[str, Any]] = []  # the new item's rank at each probe
            while time.time() - started < LAUNCH_TIMEOUT_S:
                # 20 requests/s for the query: the new item is shown among rivals and always clicked.
                for _ in range(2):
                    seq += 1
                    now = int(time.time() * 1000)
                    user = rng.choice(sim.users).user_id
                    request = f"launch-r{seq}"
                    shown = [new, *rng.sample(candidates[1:], 9)]
                    rng.shuffle(shown)
                    for pos, c in enumerate(shown):
                        await producer.send(
                            topic,
                            _event("impression", now, user, request, query, c, seq, pos),
                            key=user.encode(),  # the contract: keyed by user, as the simulator's
                        )
                    await producer.send(
                        topic,
                        _event("click", now + 300, user, request, query, new, seq, None),
                        key=user.encode(),
                    )
                ranking = await triton.rank(probe_user, query, candidates)
                rank = [c.item_id for c, _ in ranking.items].index(new.item_id) + 1
                trajectory.append(
                    {
                        "s": round(time.time() - started, 2),
                        "rank": rank,
                        "version": ranking.version,
                        "delta_seq": ranking.delta_seq,
                    }
                )
                if rank == 1:
                    first_top = {
                        "seconds": round(time.time() - started, 2),
                        "version": ranking.version,
                        "delta_seq": ranking.delta_seq,
                    }
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await producer.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await background
    if rank_before == 1:
        raise RuntimeError(f"the new item already ranked first for {query!r} before any click: no test")
    result = {
        "query": query,
        "candidates": len(candidates),
        "rank_before": rank_before,
        "launch_requests_sent": seq,
        "time_to_top_s": first_top["seconds"] if first_top else None,
        "served_by_version": first_top["version"] if first_top else None,
        "served_by_delta": first_top["delta_seq"] if first_top else None,
        "versions_published": updater.status()["versions_published"],
        "timeout_s": LAUNCH_TIMEOUT_S,
        "rank_over_time": trajectory,
    }
    progress(f"launch: a new item went from rank {rank_before} to the top in {result['time_to_top_s']} s")
    return result


def _event(
    etype: str, ts: int, user: str, request: str, query: str, c: Candidate, seq: int, position: int | None
) -> bytes:
    body: dict[str, Any] = {
        "event_id": f"launch-{etype}-{seq}-{c.item_id}",
        "type": etype,
        "ts": ts,
        "user_id": user,
        "request_id": request,
        "query": query,
        "item_id": c.item_id,
        "item": {"category": c.category, "brand": c.brand, "price": c.price},
    }
    if position is not None:
        body["position"] = position
    return orjson.dumps(body)


def run(out: Path, progress: Progress) -> dict[str, Any]:
    result: dict[str, Any] = {"warmup_s": WARMUP_S, "measure_s": MEASURE_S, "rates": {}}

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as tmp:
            root = Path(tmp)
            progress("starting the embedded broker, PostgreSQL and Triton")
            async with EmbeddedStack(root / "stack", free_port(), free_port(), free_port()) as stack:
                for rate in RATES:
                    result["rates"][str(rate)] = await rate_run(stack, root, f"rate-{rate}", rate, progress)
                result["no_deltas_2000"] = await rate_run(
                    stack, root, "no-deltas-2000", 2_000, progress,
                    publish_interval_s=FREQUENT_SNAPSHOTS_S, delta_interval_s=0.0,
                )  # fmt: skip
                result["frequent_snapshots_2000"] = await rate_run(
                    stack, root, "frequent-2000", 2_000, progress, publish_interval_s=FREQUENT_SNAPSHOTS_S
                )
                result["large_vocab_2000"] = await rate_run(
                    stack, root, "large-2000", 2_000, progress, simulate=LARGE
                )
                result["rows"] = {}
                for rows in ROWS:
                    result["rows"][str(rows)] = await rate_run(
                        stack, root, f"rows-{rows}", 2_000, progress, rows=rows,
                        simulate=LARGE if rows >= 300_000 else (),
                    )  # fmt: skip
                result["launch"] = await launch_run(stack, root, progress)

    asyncio.run(main())
    at_2000 = result["rates"]["2000"]["freshness_s"]
    by_rows = {rows: r["freshness_s"] for rows, r in result["rows"].items()}
    result["targets"] = {
        "p50_at_2000_s": {
            "target": TARGET_P50_S,
            "value": at_2000["p50"],
            "met": _le(at_2000["p50"], TARGET_P50_S),
        },
        "p99_at_2000_s": {
            "target": TARGET_P99_S,
            "value": at_2000["p99"],
            "met": _le(at_2000["p99"], TARGET_P99_S),
        },
        # The targets within 20 % at every table size.
        "within_20pct_at_every_size": {
            "p50": {rows: f["p50"] for rows, f in by_rows.items()},
            "p99": {rows: f["p99"] for rows, f in by_rows.items()},
            "met": all(_le(f[q], 1.2 * TARGET[q]) for f in by_rows.values() for q in TARGET),
        },
        "launch_on_top_within_2_s": {
            "value": result["launch"]["time_to_top_s"],
            "met": _le(result["launch"]["time_to_top_s"], 2.0),
        },
    }
    _plot(result, out)
    return result


def _rows(model: RankerConfig) -> int:
    return sum(model.capacity(f) for f in FEATURES)


def _le(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from freshrank.bench.common import save_figure

    runs = {f"{k} ev/s": v for k, v in result["rates"].items()}
    runs["2000, no deltas"] = result["no_deltas_2000"]
    runs[f"2000, snapshots every {FREQUENT_SNAPSHOTS_S:g} s"] = result["frequent_snapshots_2000"]
    runs["2000, 150k items/users"] = result["large_vocab_2000"]
    for rows, r in result["rows"].items():
        runs[f"2000, {int(rows):,} rows"] = r
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = list(runs)
    for i, q in enumerate(("p50", "p95", "p99")):
        values = [runs[k]["freshness_s"][q] or 0.0 for k in labels]
        ax.bar([x + i * 0.27 for x in range(len(labels))], values, width=0.27, label=q)
    ax.axhline(TARGET_P50_S, color="grey", linestyle=":", label="p50 target")
    ax.axhline(TARGET_P99_S, color="black", linestyle=":", label="p99 target")
    ax.set_xticks([x + 0.27 for x in range(len(labels))], labels, rotation=20, ha="right")
    ax.set_ylabel("event -> served by Triton (s)")
    ax.set_title("freshness")
    ax.legend()
    result["plot"] = save_figure(fig, out, "freshness")
    plt.close(fig)
