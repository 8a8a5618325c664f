"""The updater service: wires source -> clean -> join -> batch -> learn -> checkpoint -> export.

Three owned tasks run while the updater is started:

- ``consume``: fetches records, cleans and joins them, cuts micro-batches into a bounded
  queue (a full queue stops fetching: backpressure), and takes snapshots;
- ``train``: takes batches off the queue and runs test-then-train in a worker thread;
- ``report``: writes ``status.json`` once a second.

A *snapshot* is taken by the consume task with the queue drained, so the weights, the
vocabularies, the join state and the consumer positions all describe the same point in the
stream. A checkpoint writes it to disk (then, and only then, offsets are committed to
Kafka); an export turns it into the next ONNX version in a fourth task, at most one at a
time, while consumption and training go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import torch
from aiokafka import ConsumerRecord

from exporter.check import CheckFailed, check_parity
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import Publisher
from exporter.triton import Candidate, TritonModel
from updater import DependencyError
from updater.batcher import Batcher, Vocabularies, encode
from updater.checkpoint import CheckpointStore
from updater.clean import Cleaner
from updater.events import Event, Rejection
from updater.health import Health
from updater.joiner import Joiner, Sample
from updater.learner import Learner
from updater.ledger import Ledger
from updater.model import Ranker
from updater.outbox import Outbox
from updater.registry import DeadLetter, Registry, dead_letters_op
from updater.settings import UpdaterSettings
from updater.source import EventSource

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
PARITY_SAMPLES = 256
FRESHNESS_MEMORY = 50_000
FETCH_TIMEOUT_MS = 200
EXPORT_STOP_TIMEOUT_S = 60.0
REGISTRY_TIMEOUT_S = 5.0
TRITON_WATCH_S = 2.0


@dataclass
class Counters:
    events_consumed: int = 0
    events_valid: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    versions_published: int = 0
    versions_rejected: int = 0
    checkpoints: int = 0
    export_failures: int = 0
    backpressure_pauses: int = 0


@dataclass
class Snapshot:
    """Everything an export needs, detached from the live objects."""

    model: Ranker
    vocabs: Vocabularies
    offsets: dict[str, int]
    samples_trained: int
    metrics: dict[str, Any]
    parity_samples: list[Sample]
    fresh_action_ts_ms: list[int]
    taken_at: float = field(default_factory=time.time)


def percentile(values: list[float] | deque[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def _finite(x: float) -> float | None:
    return None if x != x else x  # NaN -> None for JSON


class Updater:
    """``async with Updater(settings)``; :meth:`run` serves until stopped."""

    def __init__(self, settings: UpdaterSettings) -> None:
        self.settings = s = settings
        self.cleaner = Cleaner()
        self.joiner = Joiner(window_ms=s.window_ms)
        self.vocabs = Vocabularies(s.model)
        self.learner = Learner(s.model, device=s.device, seed=s.seed)
        self.batcher = Batcher(s.batch_size, s.max_wait_s)
        self.checkpoints = CheckpointStore(s.state_dir)
        self.registry = Registry(s.pg_dsn)
        self.publisher = Publisher(s.repository, keep=s.keep_versions)
        self.triton = TritonModel(s.triton_grpc) if s.triton_grpc else None
        self.source: EventSource | None = None
        self.counters = Counters()
        self.ledger = Ledger()
        self.dead_by_reason: dict[str, int] = {}
        self.freshness_s: deque[float] = deque(maxlen=FRESHNESS_MEMORY)
        self.live_version: int | None = None
        self.served_version: int | None = None
        self.last_export: dict[str, Any] = {}
        self.last_checkpoint: dict[str, Any] = {}
        self.started_at = time.time()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=s.queue_batches)
        self._dead: list[DeadLetter] = []
        self._recent: deque[Sample] = deque(maxlen=PARITY_SAMPLES)
        self._fresh_pending: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._export_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        self._triton_lock = asyncio.Lock()
        self._registry_max = 0
        self._published_here = 0
        self._registry_baseline: int | None = None
        self.outbox = Outbox(s.state_dir)
        self.health = {name: Health(name) for name in ("kafka", "postgres", "triton")}
        self._consume_done = asyncio.Event()
        self._last_publish = 0.0
        self._last_checkpoint = time.monotonic()
        self._published_samples = -1
        self._started = False

    @property
    def positions(self) -> dict[str, int]:
        """Next offset to read per ``topic:partition``, from the ledger."""
        return self.ledger.positions()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        torch.set_num_threads(self.settings.torch_threads)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self._restore()
        await self._connect_registry()
        self.source = EventSource(
            self.settings.bootstrap, self.settings.topic, self.settings.group, positions=self.ledger.positions
        )
        await self.source.start()
        self.health["kafka"].mark(True)
        self._tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._train(), name="train"),
            asyncio.create_task(self._report(), name="report"),
            asyncio.create_task(self._flush_registry(), name="registry-flush"),
        ]
        if self.triton is not None:
            self._tasks.append(asyncio.create_task(self._watch_triton(), name="triton-watch"))
        log.info(
            "updater started: topic %s, %d samples trained so far",
            self.settings.topic,
            self.learner.samples_trained,
        )

    async def wait(self) -> None:
        """Return when :meth:`stop` is called; raise if a task failed."""
        stop = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Finish the batch in hand, checkpoint, commit, close. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        if self._tasks:
            consume = self._tasks[0]
            if self._failed():
                # Training is dead: a drain would wait forever, and nothing new may be checkpointed.
                consume.cancel()
            # Otherwise the consume task ends with a final drain and checkpoint.
            await asyncio.wait([consume])
        if self._export_task is not None and not self._export_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._export_task), EXPORT_STOP_TIMEOUT_S)
            except TimeoutError:
                self._export_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._export_task
        try:
            for task in self._tasks[1:]:
                task.cancel()
            for task in self._tasks[1:]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_once(), REGISTRY_TIMEOUT_S)
        finally:
            if self.source is not None:
                await self.source.stop()
            await self.registry.stop()
            if self.triton is not None:
                await self.triton.close()
        log.info("updater stopped: %d samples trained", self.learner.samples_trained)

    async def __aenter__(self) -> Updater:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- consume

    async def _consume(self) -> None:
        assert self.source is not None
        try:
            while not self._stopping.is_set():
                records = await self.source.fetch(FETCH_TIMEOUT_MS, self.settings.fetch_max_records)
                samples = self._process(records, int(time.time() * 1000))
                now = time.monotonic()
                for chunk in self.batcher.add(samples, now):
                    await self._enqueue(chunk)
                if self.batcher.due(now):
                    await self._enqueue(self.batcher.flush())
                await self._maybe_snapshot(now)
        finally:
            if not self._failed():
                # Final, shielded: what was consumed is learned and checkpointed before offsets move.
                await asyncio.shield(self._drain_and_checkpoint())
            self._consume_done.set()

    def _failed(self) -> bool:
        return any(t.done() and not t.cancelled() and t.exception() for t in self._tasks[1:2])

    def _process(self, records: list[ConsumerRecord], now_ms: int) -> list[Sample]:
        samples: list[Sample] = []
        counters = self.counters
        for rec in records:
            if not self.ledger.accept(f"{rec.topic}:{rec.partition}", rec.offset):
                continue  # this state already consumed it: never learn a record twice
            counters.events_consumed += 1
            result = self.cleaner.clean(rec.value, now_ms)
            if isinstance(result, Event):
                counters.events_valid += 1
                joined = self.joiner.add(result)
                if isinstance(joined, Rejection):
                    self.cleaner.deduper.forget(result.event_id)
                    self._dead_letter(rec, joined)
                else:
                    samples.extend(joined)
            elif isinstance(result, Rejection):
                self._dead_letter(rec, result)
        counters.duplicates = self.cleaner.duplicates
        samples.extend(self.joiner.expire())
        self._recent.extend(samples[-PARITY_SAMPLES:])
        return samples

    def _dead_letter(self, rec: ConsumerRecord, why: Rejection) -> None:
        self.counters.dead_letters += 1
        self.dead_by_reason[why.reason] = self.dead_by_reason.get(why.reason, 0) + 1
        self._dead.append(
            DeadLetter(rec.topic, rec.partition, rec.offset, why.reason, why.detail, rec.key, rec.value)
        )

    async def _enqueue(self, samples: list[Sample]) -> None:
        if samples:
            batch = encode(samples, self.vocabs, self.settings.model.max_tokens)
            if self._queue.full() and self.source is not None:
                # The trainer is behind: stop fetching until it catches up.
                self.counters.backpressure_pauses += 1
                self.source.pause()
            await self._queue.put(batch)
            if self.source is not None:
                self.source.resume()

    # ----------------------------------------------------------------- train

    async def _train(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await asyncio.to_thread(self.learner.learn, batch)
                self._fresh_pending.extend(batch.action_ts_ms[batch.label > 0].tolist())
            finally:
                self._queue.task_done()

    # ----------------------------------------------------------------- snapshots

    async def _drain(self) -> None:
        await self._enqueue(self.batcher.flush())
        await self._queue.join()

    async def _maybe_snapshot(self, now: float) -> None:
        s = self.settings
        checkpoint_due = now - self._last_checkpoint >= s.checkpoint_interval_s
        publish_due = (
            now - self._last_publish >= s.publish_interval_s
            and (self._export_task is None or self._export_task.done())
            # While Triton is down, versions would pile up unserved; the watcher reloads on return.
            and not (self.triton is not None and self.health["triton"].ok is False)
            and self.learner.samples_trained + len(self.batcher) + self._queue.qsize() * s.batch_size
            >= max(self._published_samples, 0) + s.min_samples_per_version
        )
        if not (checkpoint_due or publish_due):
            return
        await self._drain()
        if checkpoint_due:
            await self._checkpoint()
        if publish_due and self.learner.samples_trained > self._published_samples:
            self._last_publish = now
            self._published_samples = self.learner.samples_trained
            snapshot = self._snapshot()
            self._export_task = asyncio.create_task(self._export_guarded(snapshot), name="export")

    async def _drain_and_checkpoint(self) -> None:
        await self._drain()
        await self._checkpoint()

    def _snapshot(self) -> Snapshot:
        fresh, self._fresh_pending = self._fresh_pending, []
        return Snapshot(
            model=self.learner.frozen_copy(),
            vocabs=self.vocabs.copy(),
            offsets=self.positions,
            samples_trained=self.learner.samples_trained,
            metrics={
                "prequential_auc": self.learner.metrics.auc(),
                "prequential_logloss": self.learner.metrics.logloss(),
                "ledger": self.ledger.state(),
            },
            parity_samples=list(self._recent),
            fresh_action_ts_ms=fresh,
        )

    async def _checkpoint(self) -> None:
        """Dead letters, then the checkpoint, then the Kafka commit: offsets never run ahead."""
        self._last_checkpoint = time.monotonic()
        if self._dead:
            # Durable in the outbox before the offsets that produced them are committed.
            self._record(dead_letters_op(self._dead))
            self._dead = []
        while self.outbox.full and not self._stopping.is_set():
            # PostgreSQL has been away long enough to fill the outbox: stop consuming until it drains.
            log.warning("registry outbox full (%d bytes); waiting for PostgreSQL", self.outbox.size_bytes)
            await asyncio.sleep(1.0)
        state = {
            "learner": self.learner.state(),
            "vocabs": self.vocabs.state(),
            "joiner": self.joiner.state(),
            "dedup": self.cleaner.deduper.state(),
            "ledger": self.ledger.state(),
            "counters": asdict(self.counters),
            "dead_by_reason": dict(self.dead_by_reason),
        }
        # Nothing trains while this runs: the queue is drained and only this task fills it.
        seconds = await asyncio.to_thread(self.checkpoints.save, state)
        positions = self.positions
        if self.source is not None and positions:
            committed = await self.source.commit(positions)
            self.health["kafka"].mark(committed, self.source.last_commit_error)
        self.counters.checkpoints += 1
        self.last_checkpoint = {
            "at": time.time(),
            "seconds": round(seconds, 3),
            "offsets": positions,
            "samples_trained": self.learner.samples_trained,
        }
        log.debug("checkpoint written in %.3f s at %s", seconds, positions)

    def _restore(self) -> None:
        state = self.checkpoints.load()
        if state is None:
            return
        self.learner.restore(state["learner"])
        self.vocabs.restore(state["vocabs"])
        self.joiner.restore(state["joiner"])
        self.cleaner.deduper.restore(state["dedup"])
        self.ledger.restore(state["ledger"])
        self.counters = Counters(**state["counters"])
        self.cleaner.duplicates = self.counters.duplicates
        self.dead_by_reason = dict(state["dead_by_reason"])
        self._published_samples = self.learner.samples_trained
        log.info(
            "resumed from checkpoint: %d samples trained, offsets %s",
            self.learner.samples_trained,
            self.positions,
        )

    # ----------------------------------------------------------------- export

    def _build_and_publish(self, snap: Snapshot, version: int) -> tuple[Any, float, float]:
        started = time.perf_counter()
        parity: list[float] = []

        def write(directory: Path) -> list[Path]:
            files = write_onnx(build_onnx(snap.model, snap.vocabs), directory)
            if snap.parity_samples:
                parity.append(
                    check_parity(directory / "model.onnx", snap.model, snap.vocabs, snap.parity_samples)
                )
            return files

        published = self.publisher.publish(version, write)
        return published, time.perf_counter() - started, parity[0] if parity else 0.0

    async def _export_guarded(self, snap: Snapshot) -> None:
        """An export that fails is logged and counted; training goes on and the next one retries."""
        try:
            await self._export(snap)
        except (DependencyError, OSError) as exc:
            self.counters.export_failures += 1
            log.warning("export failed (%s); will retry with the next snapshot", exc)
            self._fresh_pending = snap.fresh_action_ts_ms + self._fresh_pending

    async def _export(self, snap: Snapshot) -> None:
        version = self.publisher.next_version(floor=self._registry_max)
        metrics: dict[str, Any] = {
            k: _finite(v) if isinstance(v, float) else v for k, v in snap.metrics.items()
        }
        try:
            published, export_s, parity = await asyncio.to_thread(self._build_and_publish, snap, version)
        except CheckFailed as exc:
            self.counters.versions_rejected += 1
            log.warning("version %d rejected: %s", version, exc)
            self._record(
                {
                    "op": "add_version",
                    "version": version,
                    "status": "rejected",
                    "offsets": snap.offsets,
                    "samples_seen": snap.samples_trained,
                    "metrics": metrics,
                    "reason": str(exc),
                }
            )
            return
        metrics.update(export_s=round(export_s, 3), parity_max_abs_diff=parity)
        self._record(
            {
                "op": "add_version",
                "version": version,
                "status": "published",
                "offsets": snap.offsets,
                "samples_seen": snap.samples_trained,
                "metrics": metrics,
                "path": str(published.path),
                "size_bytes": published.size_bytes,
                "sha256": published.sha256,
            }
        )
        self.counters.versions_published += 1
        self._published_here += 1
        self._registry_max = max(self._registry_max, version)
        if self.triton is None:
            self.live_version = version
            self._record({"op": "mark_live", "version": version})
            return
        try:
            async with self._triton_lock:
                load_s = await self.triton.load()
                served, served_at = await self._probe()
        except DependencyError as exc:
            # Stays "published": the Triton watcher loads the newest version when Triton is back.
            self.health["triton"].mark(False, str(exc))
            log.warning("version %d published but not loaded: %s", version, exc)
            self.publisher.prune(protect={v for v in (self.served_version, version) if v is not None})
            return
        if served != version:
            log.warning("Triton serves version %s after loading %d", served, version)
        fresh = [served_at - ts / 1000.0 for ts in snap.fresh_action_ts_ms]
        self.freshness_s.extend(fresh)
        self.live_version = self.served_version = served
        self.last_export = {
            "version": version,
            "export_s": round(export_s, 3),
            "load_s": round(load_s, 3),
            "size_bytes": published.size_bytes,
            "parity_max_abs_diff": parity,
        }
        self._record(
            {
                "op": "mark_live",
                "version": served,
                "metrics": {"load_s": round(load_s, 3), "freshness_p50_s": percentile(fresh, 50)},
            }
        )
        self.publisher.prune(protect={version})
        log.info(
            "version %d live: export %.2f s, load %.2f s, %d samples",
            version,
            export_s,
            load_s,
            snap.samples_trained,
        )

    async def _probe(self) -> tuple[int, float]:
        """First response after a load: which version answered, and when."""
        assert self.triton is not None
        ranking = await self.triton.rank("", "", [Candidate("")])
        return ranking.version, time.time()

    # ----------------------------------------------------------------- registry and Triton

    def _record(self, op: dict[str, Any]) -> None:
        """Queue a registry write durably; the flusher applies it when PostgreSQL is reachable."""
        self.outbox.append(op)
        self._flush_wanted.set()

    async def _connect_registry(self) -> bool:
        if self.registry._pool is not None:
            return True
        try:
            await asyncio.wait_for(self.registry.start(), REGISTRY_TIMEOUT_S)
            if self._registry_baseline is None:
                # Read once, before anything this process queued has been applied.
                self._registry_max = max(self._registry_max, await self.registry.max_version())
                self._registry_baseline = await self.registry.count_published()
                self.counters.versions_published = self._registry_baseline + self._published_here
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.registry.terminate()
            self.health["postgres"].mark(False, f"{type(exc).__name__}: {exc}")
            return False
        self.health["postgres"].mark(True)
        return True

    async def _flush_once(self) -> None:
        pending = self.outbox.pending()
        if not pending or not await self._connect_registry():
            return
        try:
            await asyncio.wait_for(self.registry.apply(pending), REGISTRY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.health["postgres"].mark(False, f"{type(exc).__name__}: {exc}")
            self.registry.terminate()  # a fresh pool once it is back
            return
        self.outbox.drop(len(pending))
        self.health["postgres"].mark(True)

    async def _flush_registry(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), 1.0)
            self._flush_wanted.clear()
            await self._flush_once()

    async def _watch_triton(self) -> None:
        """Track Triton's readiness; when it serves something older than the newest published
        version (it restarted, or a load failed), load the newest."""
        assert self.triton is not None
        while True:
            ready = await self.triton.ready()
            self.health["triton"].mark(ready, None if ready else f"not ready at {self.triton.url}")
            if ready:
                served = await self.triton.served_version()
                self.served_version = served
                versions = self.publisher.versions()
                exporting = self._export_task is not None and not self._export_task.done()
                if versions and served != versions[-1] and not exporting:
                    await self._reload(versions[-1])
            await asyncio.sleep(TRITON_WATCH_S)

    async def _reload(self, version: int) -> None:
        assert self.triton is not None
        try:
            async with self._triton_lock:
                await self.triton.load()
                served, _ = await self._probe()
        except DependencyError as exc:
            self.health["triton"].mark(False, str(exc))
            return
        log.info("Triton serves version %s again", served)
        self.live_version = self.served_version = served
        self._record({"op": "mark_live", "version": served})

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        m = self.learner.metrics
        lag = self.source.lag() if self.source is not None else None
        return {
            "updated_at": time.time(),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            **asdict(self.counters),
            "samples_trained": self.learner.samples_trained,
            "positives_trained": m.positives,
            "live_version": self.live_version,
            "served_version": self.served_version,
            "prequential_auc": _finite(m.auc()),
            "prequential_logloss": _finite(m.logloss()),
            "freshness_p50_s": percentile(self.freshness_s, 50),
            "freshness_p95_s": percentile(self.freshness_s, 95),
            "consumer_lag": lag,
            "pending_impressions": self.joiner.pending,
            "queue_batches": self._queue.qsize(),
            "dead_letters_by_reason": dict(self.dead_by_reason),
            "dependencies": {name: h.to_dict() for name, h in self.health.items()},
            "registry_outbox": {"pending": len(self.outbox), "bytes": self.outbox.size_bytes},
            "consumer_paused": bool(self.source and self.source.paused),
            "vocab_sizes": self.vocabs.sizes(),
            "offsets": self.positions,
            "ledger": self.ledger.state(),
            "ledger_consistent": self.ledger.consistent(),
            "last_checkpoint": self.last_checkpoint,
            "last_export": self.last_export,
            "device": str(self.learner.device),
        }

    def _write_status(self) -> None:
        path = self.settings.state_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    async def _report(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Serve until :meth:`request_stop` (or a task fails), then stop cleanly."""
        await self.start()
        try:
            await self.wait()
        finally:
            await self.stop()
