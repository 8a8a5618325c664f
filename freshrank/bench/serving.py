"""Triton serving: gRPC and HTTP throughput and latency for 100-candidate requests.

One realistic version (the default :class:`RankerConfig`, vocabularies filled with synthetic
ids, a title of real words for every item and queries of real words, so the text tower's path
runs in full) is published and loaded into the embedded Triton. Closed-loop clients at concurrency
1..16 measure requests/s and p50/p99 per protocol; onnxruntime called in-process on the same
``model.onnx`` with the same inputs is the limit. Then an open-loop generator at half the
measured gRPC peak gives the latency a client sees when the server is not saturated.

Deltas: the same open loop again while deltas of ~1,500 rows arrive every 0.5 s (the
updater's cadence at 2,000 events/s) and are applied in place, against the run without them;
then 10,000 deltas applied as fast as the backend takes them, with the resident memory of
Triton's process tree (server and Python stub) sampled every 1,000.

Clients are tritonclient's blocking clients, one per thread: the network wait releases the
GIL, and it is the client the project itself uses against Triton (``exporter/triton.py``
moved off ``grpc.aio`` after a crash under cancellation on Python 3.11). The same loops run
again from 2 spawned processes (``*_2_processes``), so the generator is not held to one core by
the GIL. The load generator runs on the same cores as Triton; its own CPU share (every one of its
processes) is measured and reported.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from exporter.check import open_session
from exporter.delta import DELTA_DIR, Delta, DeltaLog, build_delta
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import MODEL_NAME, Publisher
from exporter.triton import TritonModel, contract_tensors
from freshrank.bench.common import Progress, percentiles, save_figure
from freshrank.stack import EmbeddedStack, free_port
from rankcore.features import Vocabularies
from rankcore.model import Ranker, RankerConfig
from rankcore.text import load_table

CANDIDATES = 100
CONCURRENCY = (1, 2, 4, 8, 16)
GENERATOR_PROCESS_CONCURRENCY = (4, 8, 16)  # clients in all, split over 2 processes
LEVEL_S = 3.0
WARMUP_S = 0.5
OPEN_LOOP_S = 10.0
OPEN_LOOP_WORKERS = 16
REQUEST_POOL = 64
TARGET_GRPC_RATIO = 0.6
TARGET_P99_MS = 10.0
OTHER_CANDIDATES = (10, 1000)  # reported beside the 100 of the targets
# Vocabulary fill: a shop with 150k items and 100k users in the default 200k-row tables.
ITEMS, USERS, CATEGORIES, BRANDS, TOKENS = 150_000, 100_000, 1_000, 5_000, 20_000
# Query tokens and title words: real words of the text tower's table (so both paths do work).
QUERY_WORDS = load_table().words[:TOKENS]
TITLE_WORDS = 6


# ----------------------------------------------------------------------------- pure helpers


def cpu_per_request(row: dict[str, Any]) -> dict[str, Any]:
    """CPU milliseconds a request cost the load generator and Triton (server + Python stub)."""
    rps = row.get("rps") or 0.0
    return {
        "client_cpu_ms": round(1000 * row["client_cores"] / rps, 3) if rps else None,
        "triton_cpu_ms": round(1000 * row["triton_cores"] / rps, 3) if rps else None,
    }


def summarise(latencies_s: list[float], errors: int, wall_s: float) -> dict[str, Any]:
    """Requests/s and latency percentiles (ms) of one measured window."""
    ms = percentiles([x * 1000 for x in latencies_s], (50, 99))
    return {
        "requests": len(latencies_s),
        "errors": errors,
        "rps": round(len(latencies_s) / wall_s, 1) if wall_s > 0 else 0.0,
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
    }


def config_variant(config_text: str, instances: int = 1, queue_delay_us: int | None = None) -> str:
    """``config.pbtxt`` with another instance count and, optionally, the dynamic batcher waiting
    up to ``queue_delay_us`` for more requests (freshrank's config waits for none)."""
    text, n = re.subn(
        r"instance_group\s*\[[^\]]*\]", f"instance_group [ {{ count: {instances} }} ]", config_text
    )
    if n != 1:
        raise ValueError(f"expected one instance_group in the model config, got {n}")
    if queue_delay_us is not None:
        batcher = f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}"
        text, n = re.subn(r"dynamic_batching\s*\{[^}]*\}", batcher, text)
        if n != 1:
            raise ValueError(f"expected one dynamic_batching in the model config, got {n}")
    return text


def open_loop_schedule(rate: float, duration_s: float) -> np.ndarray:
    """Send times (s from start) of a constant-rate open-loop generator."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"expected a positive rate and duration, got {rate!r} and {duration_s!r}")
    return np.arange(int(rate * duration_s), dtype=np.float64) / rate


# ----------------------------------------------------------------------------- the model


DELTA_ROWS = 1_500  # per delta: what one carries at 2,000 events/s
DELTA_INTERVAL_S = 0.5
MEMORY_DELTAS = 10_000
MEMORY_SAMPLE_EVERY = 1_000
TARGET_DELTA_P99_RATIO = 1.2


def delta_arrays(model: Ranker) -> dict[str, np.ndarray]:
    """The arrays of a delta of ``DELTA_ROWS`` rows (users and items, half each) and the dense weights."""
    rng = np.random.default_rng(3)
    touched = {
        "item": np.sort(rng.choice(ITEMS, DELTA_ROWS // 2, replace=False)) + 2,
        "user": np.sort(rng.choice(USERS, DELTA_ROWS // 2, replace=False)) + 2,
    }
    return build_delta(1, model, touched, {}, {}).arrays


def triton_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


class DeltaWriter:
    """Writes deltas (renumbered copies of one) into the model's log from a thread."""

    def __init__(self, log: DeltaLog, arrays: dict[str, np.ndarray], start: int) -> None:
        self.log, self.arrays, self.seq = log, arrays, start
        self.stop = threading.Event()
        self.written = 0

    def write(self) -> int:
        self.seq += 1
        self.log.write(Delta(self.seq, int(time.time() * 1000), self.arrays))
        self.written += 1
        return self.seq

    def every(self, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            self.write()


def deltas_under_load(
    make: Callable[[], tuple[Infer, Callable[[], None]]],
    pool: list[dict[str, np.ndarray]],
    rate: float,
    meter: CpuMeter,
    writer: DeltaWriter,
) -> dict[str, Any]:
    """The open loop at ``rate`` while a delta arrives every ``DELTA_INTERVAL_S``."""
    writer.stop.clear()
    thread = threading.Thread(target=writer.every, args=(DELTA_INTERVAL_S,), daemon=True)
    before = writer.written
    thread.start()
    try:
        row = open_loop(make, pool, rate, OPEN_LOOP_S, meter)
    finally:
        writer.stop.set()
        thread.join(10)
    row["deltas_written"] = writer.written - before
    return row


async def memory_over_deltas(
    triton: TritonModel, writer: DeltaWriter, pid: int, progress: Progress
) -> dict[str, Any]:
    """``MEMORY_DELTAS`` deltas through the backend, applied before the next batch is written;
    the log is pruned as it goes (as the updater's retention does)."""
    samples = [{"applied": 0, "rss_mb": round(triton_rss(pid) / 2**20, 1)}]
    started = time.perf_counter()
    applied = 0
    while applied < MEMORY_DELTAS:
        for _ in range(50):
            last = writer.write()
        await _applied(triton, last)
        applied += 50
        writer.log.prune(last - 1)
        if applied % MEMORY_SAMPLE_EVERY == 0:
            samples.append({"applied": applied, "rss_mb": round(triton_rss(pid) / 2**20, 1)})
            progress(f"deltas: {applied:,} applied inside Triton, RSS {samples[-1]['rss_mb']} MB")
    elapsed = time.perf_counter() - started
    first, tenth = samples[1]["rss_mb"], samples[-1]["rss_mb"]
    return {
        "deltas": applied,
        "rows_per_delta": DELTA_ROWS,
        "seconds": round(elapsed, 1),
        "ms_per_delta": round(1000 * elapsed / applied, 2),
        "rss": samples,
        "growth_after_first_1000_mb": round(tenth - first, 1),
    }


def publish_model(repository: Path) -> tuple[Publisher, int, Path, Ranker]:
    config = RankerConfig()
    torch.manual_seed(0)
    model = Ranker(config).eval()
    vocabs = Vocabularies(config)
    for feature, n, prefix in (
        ("item", ITEMS, "sku-"),
        ("user", USERS, "user-"),
        ("category", CATEGORIES, "cat-"),
        ("brand", BRANDS, "brand-"),
    ):
        add = vocabs[feature].add
        for i in range(n):
            add(f"{prefix}{i}")
    for word in QUERY_WORDS:
        vocabs["token"].add(word)
    # The text tower's path is served in full: every item has a title of real words.
    rng = random.Random(1)
    titles = {f"sku-{i}": " ".join(rng.sample(QUERY_WORDS, TITLE_WORDS)) for i in range(ITEMS)}
    publisher = Publisher(repository, keep=2)
    published = publisher.publish(
        publisher.next_version(), lambda d: write_onnx(build_onnx(model, vocabs, titles), d)
    )
    return publisher, published.version, published.path / "model.onnx", model


def request_columns(rng: random.Random, candidates: int = CANDIDATES) -> dict[str, np.ndarray]:
    """One request: a user, a query and its candidates (some ids unknown, as in real traffic)."""
    items = [f"sku-{rng.randrange(int(ITEMS * 1.1))}" for _ in range(candidates)]
    return {
        "user_id": np.array([f"user-{rng.randrange(USERS)}".encode()] * candidates, dtype=object),
        "query": np.array([" ".join(rng.sample(QUERY_WORDS, 2)).encode()] * candidates, dtype=object),
        "item_id": np.array([i.encode() for i in items], dtype=object),
        "category": np.array([f"cat-{rng.randrange(CATEGORIES)}".encode() for _ in items], dtype=object),
        "brand": np.array([f"brand-{rng.randrange(BRANDS)}".encode() for _ in items], dtype=object),
        "price": np.array([rng.random() * 200 for _ in items], dtype=np.float32),
    }


# ----------------------------------------------------------------------------- measuring


class CpuMeter:
    """CPU seconds of this process and of Triton's process tree across a window (this process
    alone without ``triton_pid``: what a load-generator process measures of itself)."""

    def __init__(self, triton_pid: int | None) -> None:
        self.me = psutil.Process()
        self.triton = psutil.Process(triton_pid) if triton_pid is not None else None

    def _triton_cpu(self) -> dict[int, float]:
        """CPU seconds per process of Triton's tree; pid 0 holds what its exited children used."""
        seen: dict[int, float] = {}
        if self.triton is None:
            return seen
        for p in [self.triton, *self.triton.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seen[p.pid] = t.user + t.system
            if p.pid == self.triton.pid:
                seen[0] = t.children_user + t.children_system
        return seen

    def start(self) -> None:
        t = self.me.cpu_times()
        self._me0, self._tr0, self._wall0 = t.user + t.system, self._triton_cpu(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        t = self.me.cpu_times()
        wall = time.perf_counter() - self._wall0
        # Per process, so a stub that exits (or starts) inside the window never makes it negative;
        # a stub reaped inside it counts whole (through Triton's children times): a rough split.
        now = self._triton_cpu()
        triton = sum(max(0.0, cpu - self._tr0.get(pid, 0.0)) for pid, cpu in now.items())
        return {
            "client_cores": round((t.user + t.system - self._me0) / wall, 2),
            "triton_cores": round(triton / wall, 2),
        }


Infer = Callable[[dict[str, np.ndarray]], None]


def grpc_infer_factory(url: str) -> Callable[[], tuple[Infer, Callable[[], None]]]:
    def make() -> tuple[Infer, Callable[[], None]]:
        client = grpcclient.InferenceServerClient(url)

        def infer(columns: dict[str, np.ndarray]) -> None:
            client.infer(MODEL_NAME, contract_tensors(grpcclient, columns), client_timeout=10)

        return infer, client.close

    return make


def http_infer_factory(url: str) -> Callable[[], tuple[Infer, Callable[[], None]]]:
    def make() -> tuple[Infer, Callable[[], None]]:
        client = httpclient.InferenceServerClient(url, network_timeout=10.0)

        def infer(columns: dict[str, np.ndarray]) -> None:
            client.infer(MODEL_NAME, contract_tensors(httpclient, columns))

        return infer, client.close

    return make


def _closed_loop_window(
    make: Callable[[], tuple[Infer, Callable[[], None]]],
    pool: list[dict[str, np.ndarray]],
    concurrency: int,
    duration_s: float,
    meter: CpuMeter,
    ready: Callable[[], None] | None = None,
) -> tuple[list[float], int, float, dict[str, float]]:
    """``concurrency`` threads, each sending its next request as soon as the last one returns.

    ``ready`` is called once every client runs (a barrier, for generators in several processes);
    the warm-up and the measured window follow it. Returns (latencies, errors, wall, CPU).
    """
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    measuring = threading.Event()
    stop = threading.Event()
    clients = [make() for _ in range(concurrency)]

    def worker(k: int) -> None:
        infer = clients[k][0]
        for i in itertools.count(k):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                infer(pool[i % len(pool)])
            except Exception:  # noqa: BLE001 - every failed request is counted, none kills the worker
                if measuring.is_set():
                    errors[k] += 1
                continue
            if measuring.is_set():
                latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    if ready is not None:
        ready()
    time.sleep(WARMUP_S)
    meter.start()
    measuring.set()
    started = time.perf_counter()
    time.sleep(duration_s)
    measuring.clear()
    wall = time.perf_counter() - started
    cpu = meter.stop()
    stop.set()
    for t in threads:
        t.join(15)
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a load-generator thread did not finish within 15 s of the end")
    for _, close in clients:
        close()
    return [x for xs in latencies for x in xs], sum(errors), wall, cpu


def closed_loop(
    make: Callable[[], tuple[Infer, Callable[[], None]]],
    pool: list[dict[str, np.ndarray]],
    concurrency: int,
    duration_s: float,
    meter: CpuMeter,
) -> dict[str, Any]:
    """A closed loop of ``concurrency`` client threads in this process."""
    latencies, errors, wall, cpu = _closed_loop_window(make, pool, concurrency, duration_s, meter)
    row = {"concurrency": concurrency, **summarise(latencies, errors, wall), **cpu}
    return {**row, **cpu_per_request(row)}


FACTORIES = {"grpc": grpc_infer_factory, "http": http_infer_factory}


def _generator_process(
    protocol: str,
    url: str,
    pool: list[dict[str, np.ndarray]],
    concurrency: int,
    duration_s: float,
    barrier: Any,
    answer: Any,
) -> None:
    """One load-generator process (spawned): a closed loop of its own, measured on its own CPU."""
    try:
        latencies, errors, wall, cpu = _closed_loop_window(
            FACTORIES[protocol](url), pool, concurrency, duration_s, CpuMeter(None), barrier.wait
        )
        answer.send((latencies, errors, wall, cpu["client_cores"]))
    except BaseException as exc:
        barrier.abort()
        answer.send(exc)
        raise
    finally:
        answer.close()


def _generator_answer(pid: int | None, answer: Any) -> Any:
    """A load-generator process's measurements, or its failure raised here."""
    failure = answer if isinstance(answer, BaseException) else None
    if failure is not None:
        raise RuntimeError(f"load-generator process {pid} failed: {failure!r}") from failure
    return answer


def closed_loop_processes(
    protocol: str,
    url: str,
    pool: list[dict[str, np.ndarray]],
    processes: int,
    concurrency: int,
    duration_s: float,
    meter: CpuMeter,
) -> dict[str, Any]:
    """The closed loop from ``processes`` spawned processes (``concurrency`` clients in all).

    Each process is its own interpreter, so the generator is not held to one core by the GIL;
    every process measures its own CPU over the window, and Triton's is measured here.
    """
    if concurrency % processes:
        raise ValueError(f"{concurrency} clients do not split evenly over {processes} processes")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    pipes, procs = [], []
    for _ in range(processes):
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_generator_process,
            args=(protocol, url, pool, concurrency // processes, duration_s, barrier, theirs),
            daemon=True,
        )
        proc.start()
        theirs.close()
        pipes.append(mine)
        procs.append(proc)
    try:
        try:
            barrier.wait(timeout=120)  # every process started, its clients running
        except threading.BrokenBarrierError as broken:
            for proc, pipe in zip(procs, pipes, strict=True):
                if pipe.poll(5):
                    _generator_answer(proc.pid, pipe.recv())
            raise RuntimeError(
                f"the {processes} load-generator processes did not all start within 120 s"
            ) from broken
        time.sleep(WARMUP_S)
        meter.start()
        time.sleep(duration_s)
        triton = meter.stop()["triton_cores"]
        answers = []
        for proc, pipe in zip(procs, pipes, strict=True):
            if not pipe.poll(60):
                raise RuntimeError(f"load-generator process {proc.pid} did not answer within 60 s")
            answers.append(_generator_answer(proc.pid, pipe.recv()))
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    latencies = [x for a in answers for x in a[0]]
    wall = max(a[2] for a in answers)
    row = {
        "concurrency": concurrency,
        "processes": processes,
        **summarise(latencies, sum(a[1] for a in answers), wall),
        "client_cores": round(sum(a[3] for a in answers), 2),
        "triton_cores": triton,
    }
    return {**row, **cpu_per_request(row)}


def open_loop(
    make: Callable[[], tuple[Infer, Callable[[], None]]],
    pool: list[dict[str, np.ndarray]],
    rate: float,
    duration_s: float,
    meter: CpuMeter,
) -> dict[str, Any]:
    """Requests at fixed send times; latency counts from the scheduled time (no coordinated omission)."""
    schedule = open_loop_schedule(rate, duration_s)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = itertools.count()
    clients = [make() for _ in range(OPEN_LOOP_WORKERS)]
    started = time.perf_counter() + 0.2

    def worker(k: int) -> None:
        infer = clients[k][0]
        while True:
            with lock:
                i = next(counter)
            if i >= len(schedule):
                return
            due = started + schedule[i]
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                infer(pool[i % len(pool)])
            except Exception:  # noqa: BLE001 - every failed request is counted, none kills the worker
                with lock:
                    errors[0] += 1
                continue
            done = time.perf_counter()
            with lock:
                latencies.append(done - due)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(OPEN_LOOP_WORKERS)]
    meter.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    for _, close in clients:
        close()
    row = {"target_rps": round(rate, 1), **summarise(latencies, errors[0], wall), **cpu}
    return {**row, **cpu_per_request(row)}


def in_process(
    model_path: Path, pool: list[dict[str, np.ndarray]], threads: int, duration_s: float
) -> dict[str, Any]:
    """onnxruntime on the same file and inputs, one session shared by ``threads`` callers.

    The inputs are ``str`` arrays, as the Triton backend hands them to onnxruntime after decoding.
    """
    session = open_session(model_path, threads=1)  # the backend's FRESHRANK_ORT_THREADS default
    feeds = [
        {
            k: (np.array([x.decode() for x in v], dtype=object) if v.dtype == object else v).reshape(-1, 1)
            for k, v in c.items()
        }
        for c in pool
    ]
    for f in feeds[:4]:
        session.run(["score"], f)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + duration_s

    def worker(k: int) -> None:
        for i in itertools.count(k):
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            session.run(["score"], feeds[i % len(feeds)])
            latencies[k].append(time.perf_counter() - t0)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    wall = time.perf_counter() - started
    return {"threads": threads, **summarise([x for xs in latencies for x in xs], 0, wall)}


def execution_counts(url: str) -> tuple[int, int]:
    """Triton's own counters for the model: (requests answered, ``execute`` calls made).

    More requests than executions means the scheduler handed the backend several requests at once.
    """
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(MODEL_NAME, as_json=True, client_timeout=10)
    finally:
        client.close()
    rows = stats.get("model_stats", [])
    # inference_count counts batch rows (candidates); the requests are the successes.
    return (
        sum(int(r.get("inference_stats", {}).get("success", {}).get("count", 0)) for r in rows),
        sum(int(r.get("execution_count", 0)) for r in rows),
    )


def requests_per_execute(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    requests, executions = after[0] - before[0], after[1] - before[1]
    return round(requests / executions, 3) if executions > 0 else None


async def _load(triton: TritonModel, version: int | None, config_text: str) -> float:
    """``version`` by number (as cut: no deltas), or None: the newest, following the deltas."""
    return await triton.load(version, config_text)


async def _applied(triton: TritonModel, seq: int, timeout_s: float = 30.0) -> float:
    """Seconds until Triton answers with delta ``seq`` applied; RuntimeError after ``timeout_s``."""
    started = time.perf_counter()
    for _ in range(int(timeout_s / 0.005)):
        if (await triton.probe_state())[1] >= seq:
            return time.perf_counter() - started
        await asyncio.sleep(0.005)
    raise RuntimeError(f"Triton did not apply delta {seq} within {timeout_s:.0f} s")


def run(out: Path, progress: Progress) -> dict[str, Any]:
    rng = random.Random(5)
    pool = [request_columns(rng) for _ in range(REQUEST_POOL)]
    result: dict[str, Any] = {"candidates_per_request": CANDIDATES, "level_s": LEVEL_S}
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-serving-") as tmp:
        stack = EmbeddedStack(
            Path(tmp), kafka_port=free_port(), triton_http_port=free_port(), triton_grpc_port=free_port()
        )
        progress("starting the embedded stack (broker, PostgreSQL, Triton)")
        stack.start()
        try:
            progress(
                f"publishing a default-size model ({ITEMS:,} items, {USERS:,} users in the vocabularies)"
            )
            publisher, version, model_path, model = publish_model(stack.repository)
            result["model_bytes"] = sum(f.stat().st_size for f in model_path.parent.iterdir())
            base_config = publisher.config_text()
            triton = TritonModel(stack.triton.grpc_url, load_timeout_s=120)
            asyncio.run(_load(triton, version, base_config))
            triton_pid = stack.triton.process.proc.pid  # type: ignore[union-attr]
            meter = CpuMeter(triton_pid)
            grpc_make = grpc_infer_factory(stack.triton.grpc_url)
            http_make = http_infer_factory(stack.triton.http_url)
            urls = {"grpc": stack.triton.grpc_url, "http": stack.triton.http_url}

            inproc = []
            for threads in (1, 2):
                row = in_process(model_path, pool, threads, LEVEL_S)
                inproc.append(row)
                progress(
                    f"in-process onnxruntime, {threads} thread(s): {row['rps']:.0f} req/s, "
                    f"p50 {row['p50_ms']} ms"
                )
            result["in_process"] = inproc
            inproc_peak = max(r["rps"] for r in inproc)

            curves: dict[str, list[dict[str, Any]]] = {}
            per_execute: dict[str, float | None] = {}
            for name, make in (("grpc", grpc_make), ("http", http_make)):
                curves[name] = []
                counts = execution_counts(stack.triton.grpc_url)
                for c in CONCURRENCY:
                    row = closed_loop(make, pool, c, LEVEL_S, meter)
                    curves[name].append(row)
                    progress(
                        f"{name} c={c:>2}: {row['rps']:7.1f} req/s, p50 {row['p50_ms']} ms, "
                        f"p99 {row['p99_ms']} ms, errors {row['errors']}, "
                        f"client {row['client_cores']} / Triton {row['triton_cores']} cores"
                    )
                per_execute[name] = requests_per_execute(counts, execution_counts(stack.triton.grpc_url))

            # The same loops from 2 processes: a generator the GIL does not hold to one core.
            for name in ("grpc", "http"):
                label = f"{name}_2_processes"
                curves[label] = []
                for c in GENERATOR_PROCESS_CONCURRENCY:
                    row = closed_loop_processes(name, urls[name], pool, 2, c, LEVEL_S, meter)
                    curves[label].append(row)
                    progress(
                        f"{label} c={c:>2}: {row['rps']:7.1f} req/s, p50 {row['p50_ms']} ms, "
                        f"p99 {row['p99_ms']} ms, errors {row['errors']}, "
                        f"client {row['client_cores']} / Triton {row['triton_cores']} cores"
                    )

            variants: dict[str, Any] = {}
            for label, text in (
                ("grpc_2_instances", config_variant(base_config, instances=2)),
                ("grpc_queue_delay_500us", config_variant(base_config, queue_delay_us=500)),
            ):
                try:
                    load_s = asyncio.run(_load(triton, version, text))
                except Exception as exc:  # noqa: BLE001 - a rejected config is a finding, not a failure
                    variants[label] = {"loaded": False, "error": str(exc)[:500]}
                    progress(f"{label}: Triton refused the config: {str(exc)[:200]}")
                    continue
                counts = execution_counts(stack.triton.grpc_url)
                rows = [closed_loop(grpc_make, pool, c, LEVEL_S, meter) for c in (1, 4, 16)]
                per_execute[label] = requests_per_execute(counts, execution_counts(stack.triton.grpc_url))
                variants[label] = {"loaded": True, "load_s": round(load_s, 2), "curve": rows}
                curves[label] = rows
                progress(
                    f"{label} ({per_execute[label]} requests per execute call): "
                    + ", ".join(
                        f"c={r['concurrency']} {r['rps']:.0f} req/s p99 {r['p99_ms']} ms" for r in rows
                    )
                )
            asyncio.run(_load(triton, version, base_config))
            result["variants"] = variants

            # Other request sizes: in process and over both protocols at concurrency 4.
            sizes: dict[str, Any] = {}
            for n in OTHER_CANDIDATES:
                sized = [request_columns(rng, n) for _ in range(REQUEST_POOL)]
                row = {"in_process": in_process(model_path, sized, 2, LEVEL_S)}
                for name, make in (("grpc", grpc_make), ("http", http_make)):
                    row[name] = closed_loop(make, sized, 4, LEVEL_S, meter)
                row["grpc_over_in_process"] = round(row["grpc"]["rps"] / row["in_process"]["rps"], 3)
                sizes[str(n)] = row
                progress(
                    f"{n} candidates: in process {row['in_process']['rps']:.0f} req/s, "
                    f"gRPC {row['grpc']['rps']:.0f} (p99 {row['grpc']['p99_ms']} ms), "
                    f"HTTP {row['http']['rps']:.0f}"
                )
            result["candidates"] = sizes
            result["requests_per_execute"] = per_execute

            # The peak is the best either generator reached: the server's, as far as this machine shows it.
            grpc_peak = max(r["rps"] for r in curves["grpc"] + curves["grpc_2_processes"])
            http_peak = max(r["rps"] for r in curves["http"] + curves["http_2_processes"])
            half = 0.5 * grpc_peak
            progress(f"open loop at half the gRPC peak: {half:.0f} req/s for {OPEN_LOOP_S:.0f} s")
            half_row = open_loop(grpc_make, pool, half, OPEN_LOOP_S, meter)
            progress(
                f"open loop: {half_row['rps']:.0f} req/s achieved, p50 {half_row['p50_ms']} ms, "
                f"p99 {half_row['p99_ms']} ms, errors {half_row['errors']}"
            )
            writer = DeltaWriter(DeltaLog(publisher.model_dir / DELTA_DIR), delta_arrays(model), start=0)
            # Loaded as the newest (not by number, which serves the version as cut): it follows the log.
            asyncio.run(_load(triton, None, base_config))
            with_deltas = deltas_under_load(grpc_make, pool, half, meter, writer)
            # Every delta written during the load was applied (none piled up behind it).
            with_deltas["last_applied_after_s"] = round(asyncio.run(_applied(triton, writer.seq)), 3)
            # The same load without deltas right after, so both see the machine in the same state.
            without = open_loop(grpc_make, pool, half, OPEN_LOOP_S, meter)
            progress(
                f"open loop with a delta every {DELTA_INTERVAL_S} s ({with_deltas['deltas_written']} "
                f"applied): p50 {with_deltas['p50_ms']} ms, p99 {with_deltas['p99_ms']} ms, "
                f"errors {with_deltas['errors']}; without: p99 {without['p99_ms']} ms"
            )
            memory = asyncio.run(memory_over_deltas(triton, writer, triton_pid, progress))
            asyncio.run(triton.close())
        finally:
            stack.stop()

    result["curves"] = curves
    result["open_loop_half_peak"] = half_row
    ratio = (
        round(with_deltas["p99_ms"] / without["p99_ms"], 3)
        if with_deltas["p99_ms"] and without["p99_ms"]
        else None
    )
    result["deltas"] = {
        "rows_per_delta": DELTA_ROWS,
        "interval_s": DELTA_INTERVAL_S,
        "open_loop_with_deltas": with_deltas,
        "open_loop_without_deltas": without,
        "p99_ratio": ratio,
        "memory": memory,
    }
    result["peaks"] = {
        "in_process_rps": inproc_peak,
        "grpc_rps": grpc_peak,
        "http_rps": http_peak,
        **{
            f"{name}_{how}_rps": max(r["rps"] for r in curves[name + suffix])
            for name in ("grpc", "http")
            for how, suffix in (("threads", ""), ("2_processes", "_2_processes"))
        },
    }
    result["ratios"] = {
        "grpc_peak_over_in_process": round(grpc_peak / inproc_peak, 3),
        "http_peak_over_in_process": round(http_peak / inproc_peak, 3),
    }
    p99 = half_row["p99_ms"]
    result["targets"] = {
        "grpc_ratio": {
            "target": TARGET_GRPC_RATIO,
            "measured": result["ratios"]["grpc_peak_over_in_process"],
            "met": result["ratios"]["grpc_peak_over_in_process"] >= TARGET_GRPC_RATIO,
        },
        "deltas_p99_within_20pct_no_failures": {
            "target": TARGET_DELTA_P99_RATIO,
            "measured": ratio,
            "met": ratio is not None and ratio <= TARGET_DELTA_P99_RATIO and with_deltas["errors"] == 0,
        },
        "p99_at_half_peak_ms": {
            "target": TARGET_P99_MS,
            "measured": p99,
            "met": p99 is not None and p99 <= TARGET_P99_MS and half_row["errors"] == 0,
        },
    }
    result["limits"] = (
        "the load generator and Triton share the machine's cores; client_cores/triton_cores per row "
        "say how the CPU was split (the *_2_processes rows: the generator's processes together)"
    )
    result["plot"] = plot(curves, inproc_peak, out)
    return result


def plot(curves: dict[str, list[dict[str, Any]]], inproc_peak: float, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in curves.items():
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["rps"] for r in rows], "o-", label=name)
        right.plot(xs, [r["p99_ms"] for r in rows], "o-", label=name)
    left.axhline(inproc_peak, color="k", linestyle="--", label="in-process onnxruntime (peak)")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel(f"requests/s ({CANDIDATES} candidates each)")
    left.set_title("throughput")
    left.legend(fontsize=8)
    right.axhline(TARGET_P99_MS, color="r", linestyle=":", label=f"target {TARGET_P99_MS:.0f} ms")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("p99 latency (ms)")
    right.set_title("p99 latency")
    right.legend(fontsize=8)
    path = save_figure(fig, out, "serving")
    plt.close(fig)
    return path
