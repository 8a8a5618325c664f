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
import math
import os
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import torch
from aiokafka import ConsumerRecord

from exporter.check import check_parity
from exporter.gate import decide, should_roll_back
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import Publisher
from exporter.triton import Candidate, TritonModel
from rankcore.errors import CheckFailed, DependencyError, LeaseLost, TrainingFailed
from rankcore.events import Event, Rejection
from rankcore.features import Vocabularies, encode
from rankcore.health import Health
from rankcore.holdout import HoldoutMetrics, evaluate, is_holdout
from rankcore.model import Ranker
from rankcore.sample import Sample
from updater.batcher import Batcher
from updater.checkpoint import CheckpointStore
from updater.clean import Cleaner
from updater.joiner import Joiner
from updater.learner import Learner
from updater.lease import WriterLease
from updater.ledger import Ledger
from updater.outbox import Outbox
from updater.registry import UNAVAILABLE, DeadLetter, Registry, dead_letters_op
from updater.settings import UpdaterSettings
from updater.source import EventSource

log = logging.getLogger(__name__)


STATUS_FILE = "status.json"
PARITY_SAMPLES = 256
FRESHNESS_MEMORY = 50_000
FETCH_TIMEOUT_MS = 200
EXPORT_STOP_TIMEOUT_S = 60.0
REGISTRY_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 60.0
DEAD_LETTER_BATCH = 1_000
OUTBOX_CHUNK = 200
TRITON_WATCH_S = 2.0
# A full queue first just blocks the consumer (aiokafka prefetches at most one response per
# partition); only a trainer stalled this long pauses the partitions, because a pause makes
# aiokafka drop what it had buffered for them and fetch it again on resume.
PAUSE_AFTER_S = 0.5


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
    held_out: int = 0
    rollbacks: int = 0


@dataclass(frozen=True)
class LiveModel:
    """A version Triton serves (or served), with the weights and vocabularies it was built from."""

    version: int
    model: Ranker
    vocabs: Vocabularies


@dataclass
class Serving:
    """What Triton should serve: the newest version, or one held by a rollback or a pin."""

    mode: str = "latest"  # latest | rolled_back | pinned
    version: int | None = None
    reason: str | None = None


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
    holdout: list[Sample]
    live: LiveModel | None
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
        # (action time, freshness) in seconds: the status takes percentiles of the second,
        # benchmarks pick the actions of a chosen period by the first.
        self.freshness_by_action: deque[tuple[float, float]] = deque(maxlen=FRESHNESS_MEMORY)
        self.live_version: int | None = None
        self.served_version: int | None = None
        self.last_export: dict[str, Any] = {}
        self.last_checkpoint: dict[str, Any] = {}
        self.started_at = time.time()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=s.queue_batches)
        self._dead: list[DeadLetter] = []
        self._recent: deque[Sample] = deque(maxlen=PARITY_SAMPLES)
        self._holdout: deque[Sample] = deque(maxlen=s.holdout_window)
        self._live: LiveModel | None = None
        # Versions served before the live one, newest last: the candidates for a rollback.
        self._history: deque[LiveModel] = deque(maxlen=s.gate.rollback_history)
        self.serving = Serving()
        self.last_rollback: dict[str, Any] = {}
        self._fresh_pending: deque[int] = deque(maxlen=FRESHNESS_MEMORY)
        self._tasks: list[asyncio.Task[None]] = []
        self._export_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        self._triton_lock = asyncio.Lock()
        self._registry_max = 0
        self._published_here = 0
        self._registry_baseline: int | None = None
        self.outbox = Outbox(s.state_dir)
        self.lease = WriterLease(s.pg_dsn, self.registry.model)
        self._fenced = False
        self.health = {name: Health(name) for name in ("kafka", "postgres", "triton")}
        self._last_publish = 0.0
        self._last_checkpoint = time.monotonic()
        self._published_samples = -1
        self._started = False

    @classmethod
    def from_settings(cls, settings: UpdaterSettings) -> Updater:
        """An updater with the real adapters (Kafka, Triton, PostgreSQL) built from ``settings``."""
        return cls(settings)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The long-running tasks (consume, train, report, registry flush, Triton watch)."""
        return list(self._tasks)

    @property
    def freshness_settled(self) -> bool:
        """True once every action consumed so far is learned and served, its freshness measured."""
        exporting = self._export_task is not None and not self._export_task.done()
        return not (self._fresh_pending or len(self.batcher) or self._queue.qsize() or exporting)

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
        log.info("updater starting (pid %d)", os.getpid())
        await self._connect_registry()
        # One writer per model: a second updater waits here as a standby until the first is gone.
        if not await self.lease.wait(self._stopping):
            return
        self.outbox.open()
        self.publisher.remove_orphans()
        self._restore()
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
                # Training is dead: nothing new may be checkpointed.
                consume.cancel()
            # Otherwise the consume task ends with a final drain and checkpoint.
            done, _ = await asyncio.wait([consume], timeout=STOP_TIMEOUT_S)
            if not done:
                log.error("the final checkpoint took over %.0f s; stopping without it", STOP_TIMEOUT_S)
                consume.cancel()
                await asyncio.wait([consume])
        if self._export_task is not None:
            done, _ = await asyncio.wait([self._export_task], timeout=EXPORT_STOP_TIMEOUT_S)
            if not done:
                self._export_task.cancel()
                await asyncio.wait([self._export_task])
            elif not self._export_task.cancelled() and self._export_task.exception() is not None:
                log.error("the last export failed: %s", self._export_task.exception())
        try:
            for task in self._tasks[1:]:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for task, result in zip(self._tasks, results, strict=True):
                if isinstance(result, Exception):
                    log.error("task %s failed: %s", task.get_name(), result, exc_info=result)
            self._write_status()
            try:
                async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                    await self._flush_once()
            except TimeoutError:
                log.warning(
                    "%d registry writes stay in %s for the next start", len(self.outbox), self.outbox.path
                )
        finally:
            if self.source is not None:
                await self.source.stop()
            await self.lease.release()
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
        while not self._stopping.is_set():
            records = await self.source.fetch(FETCH_TIMEOUT_MS, self.settings.fetch_max_records)
            samples = self._process(records, int(time.time() * 1000))
            now = time.monotonic()
            for chunk in self.batcher.add(samples, now):
                await self._enqueue(chunk)
            if self.batcher.due(now):
                await self._enqueue(self.batcher.flush())
            await self._maybe_snapshot(now)
        # Only on a clean exit: what was consumed is learned and checkpointed before offsets move.
        # After an error or a cancellation the last checkpoint stands and a restart replays the rest;
        # after losing the writer lease the state directory belongs to the new writer.
        if not self._fenced:
            await asyncio.shield(self._drain_and_checkpoint())

    def _failed(self) -> bool:
        train = self._tasks[1] if len(self._tasks) > 1 else None
        return train is not None and train.done() and not train.cancelled() and train.exception() is not None

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
                joined = self.joiner.add(result, now_ms)
                if isinstance(joined, Rejection):
                    self.cleaner.deduper.forget(result.event_id)
                    self._dead_letter(rec, joined)
                else:
                    samples.extend(joined)
            elif isinstance(result, Rejection):
                self._dead_letter(rec, result)
        counters.duplicates = self.cleaner.duplicates
        samples.extend(self.joiner.expire())
        every = self.settings.holdout_every
        if every:
            trained: list[Sample] = []
            for x in samples:  # one hash per sample: this is the consumer loop
                (self._holdout if is_holdout(x.request_id, every) else trained).append(x)
            self.counters.held_out += len(samples) - len(trained)
            samples = trained
        self._recent.extend(samples[-PARITY_SAMPLES:])
        return samples

    def _dead_letter(self, rec: ConsumerRecord, why: Rejection) -> None:
        self.counters.dead_letters += 1
        self.dead_by_reason[why.reason] = self.dead_by_reason.get(why.reason, 0) + 1
        if len(self._dead) >= DEAD_LETTER_BATCH:
            # Bounded memory: to the outbox now (a replay after a crash stores them once anyway).
            self._record(dead_letters_op(self._dead))
            self._dead = []
        detail = why.detail.replace("\x00", "\\x00")[:500]  # PostgreSQL text holds no NUL
        self._dead.append(
            DeadLetter(rec.topic, rec.partition, rec.offset, why.reason, detail, rec.key, rec.value)
        )

    async def _enqueue(self, samples: list[Sample]) -> None:
        if not samples:
            return
        batch = encode(samples, self.vocabs, self.settings.model.max_tokens)
        if not self._queue.full():
            self._queue.put_nowait(batch)
            return
        # The trainer is behind: wait for room; if it stays behind, stop fetching until it catches up.
        put = asyncio.ensure_future(self._queue.put(batch))
        paused = False
        try:
            if self.source is not None and not await self._while_training(put, PAUSE_AFTER_S):
                self.counters.backpressure_pauses += 1
                self.source.pause()
                paused = True
            await self._while_training(put)
        finally:
            put.cancel()  # a no-op once it is done
            if paused and self.source is not None:
                self.source.resume()

    async def _while_training(self, waiting: Awaitable[None], timeout_s: float | None = None) -> bool:
        """Await ``waiting`` unless the trainer dies first (then nothing may be checkpointed).

        False when ``timeout_s`` passed first; ``waiting`` then goes on and can be awaited again.
        """
        task = asyncio.ensure_future(waiting)
        train = self._tasks[1]
        done, _ = await asyncio.wait({task, train}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return True
        if train in done:
            task.cancel()
            raise TrainingFailed(
                "the training task failed; the last checkpoint stands"
            ) from train.exception()
        return False

    # ----------------------------------------------------------------- train

    async def _train(self) -> None:
        while True:
            batch = await self._queue.get()
            # A step that raises ends this task without task_done(): the batch is not counted as
            # learned, so no checkpoint can claim it (see _while_training).
            await asyncio.to_thread(self.learner.learn, batch)
            self._fresh_pending.extend(batch.action_ts_ms[batch.label > 0].tolist())
            self._queue.task_done()

    # ----------------------------------------------------------------- snapshots

    async def _drain(self) -> None:
        await self._enqueue(self.batcher.flush())
        await self._while_training(self._queue.join())

    async def _maybe_snapshot(self, now: float) -> None:
        s = self.settings
        checkpoint_due = now - self._last_checkpoint >= s.checkpoint_interval_s
        publish_due = (
            not self._fenced
            and now - self._last_publish >= s.publish_interval_s
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
        fresh = list(self._fresh_pending)
        self._fresh_pending.clear()
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
            holdout=list(self._holdout),
            live=self._live,
            fresh_action_ts_ms=fresh,
        )

    async def _checkpoint(self) -> None:
        """Dead letters, then the checkpoint, then the Kafka commit: offsets never run ahead."""
        self._last_checkpoint = time.monotonic()
        if not await self._confirm_writer():
            log.warning("writer lease unsettled; the checkpoint waits for the next round")
            return
        if self._dead:
            # Durable in the outbox before the offsets that produced them are committed.
            self._record(dead_letters_op(self._dead))
            self._dead = []
        while self.outbox.full and not self._stopping.is_set():
            # PostgreSQL has been away long enough to fill the outbox: stop consuming until it drains.
            log.warning("registry outbox full (%d bytes); waiting for PostgreSQL", self.outbox.size_bytes)
            await asyncio.sleep(1.0)
        # In a worker thread: nothing trains or consumes while it runs (the queue is drained and
        # only this task fills it), and building the state of a large join takes seconds.
        seconds = await asyncio.to_thread(lambda: self.checkpoints.save(self._checkpoint_state()))
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

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state(),
            "vocabs": self.vocabs.state(),
            "joiner": self.joiner.state(),
            "dedup": self.cleaner.deduper.state(),
            "ledger": self.ledger.state(),
            "counters": asdict(self.counters),
            "dead_by_reason": dict(self.dead_by_reason),
            "holdout": list(self._holdout),
            "serving": asdict(self.serving),
        }

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
        self._holdout.extend(state["holdout"])
        self.serving = Serving(**state["serving"])
        self._published_samples = self.learner.samples_trained
        log.info(
            "resumed from checkpoint: %d samples trained, offsets %s",
            self.learner.samples_trained,
            self.positions,
        )

    # ----------------------------------------------------------------- export

    def _build_and_publish(
        self, snap: Snapshot, version: int, gated: dict[str, Any]
    ) -> tuple[Any, float, float]:
        started = time.perf_counter()
        parity: list[float] = []
        # The gate first: a rejected candidate never becomes a version directory.
        candidate = evaluate(snap.model, snap.vocabs, snap.holdout)
        live = evaluate(snap.live.model, snap.live.vocabs, snap.holdout) if snap.live is not None else None
        gated.update(candidate.to_dict())
        if live is not None:
            gated["live_holdout_auc"] = live.to_dict()["holdout_auc"]
            gated["live_holdout_logloss"] = live.to_dict()["holdout_logloss"]
        reason = decide(candidate, live, self.settings.gate)
        if reason is not None:
            raise CheckFailed(f"gate: {reason}")

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
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception:
            self.counters.export_failures += 1
            log.exception("export failed; will retry with the next snapshot")
            self._requeue_fresh(snap)

    async def _confirm_writer(self) -> bool:
        try:
            return await self.lease.confirm()
        except LeaseLost:
            self._fenced = True
            self._stopping.set()
            raise

    async def _export(self, snap: Snapshot) -> None:
        if not await self._confirm_writer():
            log.warning("writer lease unsettled (held under our token by another session); publish skipped")
            self._requeue_fresh(snap)
            return
        version = self.publisher.next_version(floor=self._registry_max)
        metrics: dict[str, Any] = {
            k: _finite(v) if isinstance(v, float) else v for k, v in snap.metrics.items()
        }
        metrics["writer_token"] = self.lease.token
        if await self._maybe_roll_back(snap):
            return
        gated: dict[str, Any] = {}
        try:
            published, export_s, parity = await asyncio.to_thread(
                self._build_and_publish, snap, version, gated
            )
        except CheckFailed as exc:
            metrics.update(gated)
            self._registry_max = max(self._registry_max, version)
            self.counters.versions_rejected += 1
            log.warning("version %d rejected: %s", version, exc)
            self._requeue_fresh(snap)
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
        metrics.update(gated, export_s=round(export_s, 3), parity_max_abs_diff=parity)
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
            self._go_live(LiveModel(version, snap.model, snap.vocabs))
            self._record({"op": "mark_live", "version": version})
            self.publisher.prune(protect=self._protected(version))
            return
        if self.serving.mode == "pinned":
            # Training and publishing go on; serving stays where the operator put it.
            self.publisher.prune(protect=self._protected(version))
            self._requeue_fresh(snap)
            return
        try:
            async with self._triton_lock:
                load_s = await self.triton.load()
                served, served_at = await self._probe()
        except DependencyError as exc:
            # Stays "published": the Triton watcher loads the newest version when Triton is back.
            self.health["triton"].mark(False, str(exc))
            log.warning("version %d published but not loaded: %s", version, exc)
            self.publisher.prune(protect=self._protected(version))
            self._requeue_fresh(snap)
            return
        if served != version:
            log.warning("Triton serves version %s after loading %d", served, version)
        fresh: list[float] = []
        if served == version:
            fresh = [served_at - ts / 1000.0 for ts in snap.fresh_action_ts_ms]
            self.freshness_by_action.extend(
                (ts / 1000.0, f) for ts, f in zip(snap.fresh_action_ts_ms, fresh, strict=True)
            )
        else:
            self._requeue_fresh(snap)  # not served yet: measured when a version that has them is
        self.live_version = self.served_version = served
        if served == version:
            self._go_live(LiveModel(version, snap.model, snap.vocabs))
            if self.serving.mode == "rolled_back":
                # A candidate passed the gate against the version rolled back to: back to the newest.
                self._record({"op": "set_serving", "mode": "latest", "version": None, "reason": None})
            self.serving = Serving()
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
        self.publisher.prune(protect=self._protected(version))
        log.info(
            "version %d live: export %.2f s, load %.2f s, %d samples",
            version,
            export_s,
            load_s,
            snap.samples_trained,
        )

    def _requeue_fresh(self, snap: Snapshot) -> None:
        """Its samples are served by a later version: measure their freshness then."""
        self._fresh_pending.extendleft(reversed(snap.fresh_action_ts_ms))

    async def _probe(self) -> tuple[int, float]:
        """First response after a load: which version answered, and when."""
        assert self.triton is not None
        ranking = await self.triton.rank("", "", [Candidate("")])
        return ranking.version, time.time()

    def _protected(self, *versions: int | None) -> set[int]:
        """Versions retention must keep: served, pinned or rolled back to, and the one to go back to."""
        keep = {self.served_version, self.serving.version, *versions}
        keep |= {m.version for m in (self._live, *self._history) if m is not None}
        return {v for v in keep if v is not None}

    def _go_live(self, model: LiveModel) -> None:
        if self._live is not None:
            self._history.append(self._live)
        self._live = model

    async def _maybe_roll_back(self, snap: Snapshot) -> bool:
        """Go back to the best recent version when the live one fell too far below it.

        The live version and the versions served before it are scored on the latest held-out
        window; the best of those is the rollback target.
        """
        live, history = snap.live, list(self._history)
        if self.triton is None or live is None or not history or self.serving.mode != "latest":
            return False
        if not snap.holdout:
            return False

        def score_all() -> list[tuple[LiveModel, HoldoutMetrics]]:
            return [(m, evaluate(m.model, m.vocabs, snap.holdout)) for m in (live, *history)]

        scored = await asyncio.to_thread(score_all)
        now_m = scored[0][1]
        previous, prev_m = max(scored[1:], key=lambda pair: -1.0 if math.isnan(pair[1].auc) else pair[1].auc)
        reason = should_roll_back(now_m, prev_m, self.settings.gate)
        if reason is None:
            return False
        detected = time.perf_counter()
        log.warning("rolling back from version %d to %d: %s", live.version, previous.version, reason)
        try:
            async with self._triton_lock:
                await self.triton.load(version=previous.version, config_text=self.publisher.config_text())
                served, _ = await self._probe()
        except DependencyError as exc:
            self.health["triton"].mark(False, str(exc))
            return True
        self.counters.rollbacks += 1
        # Triton has moved off them: the newest directory is the target again, so no later
        # "load the newest" (an unpin, a Triton restart) can bring a rolled-back version back.
        self.publisher.quarantine([v for v in self.publisher.versions() if v > previous.version])
        self.serving = Serving("rolled_back", previous.version, reason)
        # The bad version and everything served after the target leave the history.
        self._live = previous
        while self._history and self._history[-1].version >= previous.version:
            self._history.pop()
        self.live_version = self.served_version = served
        self.last_rollback = {
            "from": live.version,
            "to": previous.version,
            "reason": reason,
            "at": time.time(),
            "seconds_to_serve": round(time.perf_counter() - detected, 3),
            "served": served,
        }
        self._record({"op": "set_status", "version": live.version, "status": "rolled_back", "reason": reason})
        self._record(
            {"op": "set_serving", "mode": "rolled_back", "version": previous.version, "reason": reason}
        )
        self._record({"op": "mark_live", "version": previous.version})
        return True

    # ----------------------------------------------------------------- registry and Triton

    def _record(self, op: dict[str, Any]) -> None:
        """Queue a registry write durably; the flusher applies it when PostgreSQL is reachable."""
        self.outbox.append(op)
        self._flush_wanted.set()

    async def _connect_registry(self) -> bool:
        if self.registry._pool is not None:
            return True
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                await self.registry.start()
            if self._registry_baseline is None:
                # Read once, before anything this process queued has been applied.
                self._registry_max = max(self._registry_max, await self.registry.max_version())
                self._registry_baseline = await self.registry.count_published()
                self.counters.versions_published = self._registry_baseline + self._published_here
        except UNAVAILABLE as exc:
            self.registry.terminate()
            self.health["postgres"].mark(False, f"{type(exc).__name__}: {exc}")
            return False
        self.health["postgres"].mark(True)
        return True

    async def _flush_once(self) -> None:
        """Apply the outbox to PostgreSQL in bounded transactions, oldest first."""
        while len(self.outbox):
            if not await self._connect_registry():
                return
            chunk = self.outbox.pending()[:OUTBOX_CHUNK]
            try:
                async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                    await self.registry.apply(chunk)
            except asyncpg.DataError as exc:
                # This data can never be stored (not a passing fault): set the bad operation aside.
                try:
                    await self._apply_one_by_one(chunk, exc)
                except UNAVAILABLE as lost:
                    self.health["postgres"].mark(False, f"{type(lost).__name__}: {lost}")
                    self.registry.terminate()
                    return
            except UNAVAILABLE as exc:
                self.health["postgres"].mark(False, f"{type(exc).__name__}: {exc}")
                self.registry.terminate()  # a fresh pool once it is back
                return
            else:
                self.outbox.drop(len(chunk))
            self.health["postgres"].mark(True)

    async def _apply_one_by_one(self, chunk: list[dict[str, Any]], error: Exception) -> None:
        for op in chunk:
            try:
                async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                    await self.registry.apply([op])
            except asyncpg.DataError as exc:
                log.warning(
                    "registry refused a %s operation (%s); kept in %s",
                    op["op"],
                    exc,
                    self.outbox.rejected_path,
                )
                self.outbox.set_aside(op, str(exc))
            self.outbox.drop(1)
        log.warning("registry operations applied one by one after: %s", error)

    async def _flush_registry(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a cancellation that meets wait_for's
            # timeout is swallowed, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._flush_wanted.wait()
            self._flush_wanted.clear()
            await self._flush_once()

    async def _watch_triton(self) -> None:
        """Track Triton's readiness; when it serves something older than the newest published
        version (it restarted, or a load failed), load the newest."""
        assert self.triton is not None
        while True:
            await self._read_serving()
            ready = await self.triton.ready()
            self.health["triton"].mark(ready, None if ready else f"not ready at {self.triton.url}")
            if ready:
                served = await self.triton.served_version()
                self.served_version = served
                versions = self.publisher.versions()
                exporting = self._export_task is not None and not self._export_task.done()
                held = self.serving.version if self.serving.mode != "latest" else None
                wanted = held if held is not None else (versions[-1] if versions else None)
                if wanted is not None and served != wanted and not exporting:
                    await self._reload(held)
            await asyncio.sleep(TRITON_WATCH_S)

    async def _read_serving(self) -> None:
        """Pick up a pin, unpin or manual rollback made with the CLI (kept in the registry)."""
        if self.registry._pool is None or len(self.outbox):
            return  # our own serving changes are not applied yet; keep what we know
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                row = await self.registry.serving()
        except UNAVAILABLE as exc:
            self.health["postgres"].mark(False, f"{type(exc).__name__}: {exc}")
            return
        wanted = Serving(row["mode"], row["version"], row["reason"])
        if wanted != self.serving:
            log.info("serving changed from %s to %s", self.serving, wanted)
            self.serving = wanted

    async def _reload(self, version: int | None) -> None:
        """Load ``version`` (None: the newest) into Triton."""
        assert self.triton is not None
        try:
            async with self._triton_lock:
                if version is None:
                    await self.triton.load()
                else:
                    await self.triton.load(version=version, config_text=self.publisher.config_text())
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
        freshness = [f for _, f in self.freshness_by_action]
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
            "freshness_p50_s": percentile(freshness, 50),
            "freshness_p95_s": percentile(freshness, 95),
            "consumer_lag": lag,
            "pending_impressions": self.joiner.pending,
            "queue_batches": self._queue.qsize(),
            "dead_letters_by_reason": dict(self.dead_by_reason),
            "dependencies": {name: h.to_dict() for name, h in self.health.items()},
            "serving": asdict(self.serving),
            "last_rollback": self.last_rollback,
            "holdout_samples": len(self._holdout),
            "registry_outbox": {"pending": len(self.outbox), "bytes": self.outbox.size_bytes},
            "consumer_paused": bool(self.source and self.source.paused),
            "vocab_sizes": self.vocabs.sizes(),
            "offsets": self.positions,
            "ledger": self.ledger.state(),
            "last_checkpoint": self.last_checkpoint,
            "last_export": self.last_export,
            "device": str(self.learner.device),
            "writer_token": self.lease.token,
        }

    def _write_status(self) -> None:
        if self.lease.token is None or self._fenced:
            return  # a standby (or a fenced writer) must not overwrite the writer's status file
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
        try:
            await self.start()
            await self.wait()
        finally:
            await self.stop()
        if self._fenced:
            raise LeaseLost("another updater took over as the writer; this one stopped without a checkpoint")
