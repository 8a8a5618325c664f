"""The updater service: composition and lifecycle of the stream side.

source -> ingest (clean, join, holdout) -> batch -> trainer (test-then-train) -> checkpoint,
and every few seconds a snapshot for the release side (:class:`exporter.release.ReleaseManager`).

Tasks, each owned by the :class:`~updater.supervisor.Supervisor`:

- ``consume``: fetches records, runs them through :class:`~updater.ingest.Ingest` (or, with
  ``--ingest-workers``, :class:`~updater.ingest_workers.IngestWorkers`' processes), cuts
  micro-batches into the trainer's bounded queue (a full queue stops fetching: backpressure),
  and takes checkpoints and snapshots with the queue drained;
- ``train``: the :class:`~updater.trainer.Trainer`'s task;
- ``release``: the release manager's task (gate, export, publish, load, reconcile);
- ``registry-flush``: :class:`~updater.registry_sync.RegistrySync` applies the outbox;
- ``report``: writes ``status.json`` once a second and adds a point to the dashboard's history.

With ``--metrics-port`` (default 9468, on ``--metrics-host``, loopback by default) the same loop
serves Prometheus metrics at ``/metrics`` and the live dashboard at ``/``
(:class:`~updater.web.WebEndpoint`), from before the writer lease is held.

A checkpoint writes the state to disk, and then, and only then, offsets are committed to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exporter.delta import DELTA_DIR, DeltaLog, build_delta
from exporter.fleet import ReplicaSet
from exporter.publish import Publisher
from exporter.release import ReleaseManager, Snapshot
from exporter.server import ModelServer
from exporter.stream import DeltaStream
from exporter.triton import CONTROL_KEY_FILE, TritonModel, control_key
from rankcore.errors import ConfigError, DependencyError, FreshrankError, LeaseLost, TrainingFailed
from rankcore.features import Vocabularies, encode
from rankcore.health import Health
from rankcore.holdout import recent
from rankcore.sample import Sample
from updater.batcher import Batcher
from updater.checkpoint import CheckpointStore
from updater.group import START, Barrier, GroupTrainer, TrainingGroup, step_batch
from updater.history import FRESHNESS_WINDOW_S, History, dashboard
from updater.ingest import DeadLetter, Ingest, Ingested, RawRecord
from updater.ingest_workers import IngestWorkers
from updater.learner import Learner
from updater.lease import NoLease, WriterLease
from updater.metrics import UpdaterMetrics
from updater.outbox import Outbox
from updater.ports import Clock, EventSource, IngestStage, Lease, RegistryStore, SystemClock
from updater.registry import Registry
from updater.registry_sync import RegistrySync
from updater.settings import UpdaterSettings
from updater.source import KafkaSource
from updater.state import Checkpointer, ModelState
from updater.status import STATUS_FILE, Status, collect, write_status
from updater.supervisor import Supervisor
from updater.trainer import Impressions, Trainer
from updater.warm import WarmProgress, learn_history, read_lines
from updater.web import WebEndpoint

log = logging.getLogger(__name__)

PARITY_SAMPLES = 256
DEAD_LETTER_BATCH = 1_000


GROUP_LEASE_TRIES = 30  # seconds rank 0 waits for an unsettled lease at a group checkpoint


@dataclass
class Counters:
    checkpoints: int = 0


class Updater:
    """``async with Updater.from_settings(settings)``; :meth:`run` serves until stopped."""

    def __init__(
        self,
        settings: UpdaterSettings,
        *,
        source: EventSource,
        server: ModelServer | None,
        registry: RegistryStore,
        lease: Lease,
        clock: Clock | None = None,
    ) -> None:
        self.settings = s = settings
        self.clock = clock or SystemClock()
        self.source = source
        self.lease = lease
        ingest_settings: dict[str, Any] = {
            "window_ms": s.window_ms,
            "holdout_every": s.holdout_every,
            "dedup_capacity": s.dedup_capacity,
            "max_pending": s.max_pending_impressions,
            "measure_every": s.measure_every,
            "items_topic": s.items_topic,
            "catalogue_capacity": s.catalogue_capacity,
        }
        self.ingest: IngestStage = (
            IngestWorkers(
                s.ingest_workers,
                answer_s=s.timeouts.ingest_s,
                stalled_after_s=s.timeouts.ingest_s / 6,
                **ingest_settings,
            )
            if s.ingest_workers
            else Ingest(**ingest_settings)
        )
        self.vocabs = Vocabularies(s.model, s.vocab_expire_ms)
        self.learner = Learner(
            s.model, device=s.device, sparse_lr=s.sparse_lr, dense_lr=s.dense_lr, seed=s.seed
        )
        self.batcher = Batcher(s.batch_size, s.max_wait_s)
        self.holdout: deque[Sample] = deque(maxlen=s.holdout_window)
        self.state = ModelState(self.learner, self.vocabs, self.ingest, self.holdout)
        # With --world-size above 1: this rank of a group learning one model (updater/group.py).
        self.group = (
            TrainingGroup(s.rank, s.world_size, s.group_init, s.timeouts.group_s)
            if s.world_size > 1
            else None
        )
        self.checkpointer = Checkpointer(CheckpointStore(s.state_dir, keep_previous=self.group is not None))
        self.registry = RegistrySync(
            Outbox(s.state_dir, s.outbox_max_bytes),
            registry,
            s.timeouts.registry_s,
            on_serving=lambda serving: self.release.follow(serving),
            on_max_version=lambda version: self.release.raise_version_floor(version),
        )
        # Counters and gauges read the status at each scrape; histograms are observed as they happen.
        self.metrics = UpdaterMetrics(lambda: self._status() if self._holds_lease else None)
        self.history = History()
        self.web = (
            WebEndpoint(s.metrics_host, s.metrics_port, self.metrics.exposition, self._dashboard)
            if s.metrics_port
            else None
        )
        publisher = Publisher(s.repository, model=s.model_name, keep=s.keep_versions)
        delta_log = (
            DeltaLog(publisher.model_dir / DELTA_DIR) if s.delta_interval_s > 0 and self.leads else None
        )
        self.release = ReleaseManager(
            publisher,
            self.registry,
            s.gate,
            server=server,
            confirm_writer=self._confirm_writer,
            writer_token=lambda: self.lease.token,
            watch_s=s.timeouts.triton_watch_s,
            probe_settle_s=s.timeouts.probe_settle_s,
            clock=self.clock.time,
            deltas=delta_log,
            observer=self.metrics,
        )
        # Between versions, the rows learned since the last delta (see exporter/delta.py).
        self.deltas: DeltaStream | None = None
        if delta_log is not None:
            self.learner.tracking = True
            self.vocabs.track_changes()
            self.ingest.catalogue.tracking = True
            self.deltas = DeltaStream(
                delta_log,
                server,
                self.release.freshness,
                served_timeout_s=s.timeouts.probe_settle_s,
                clock=self.clock.time,
                prune_upto=self._deltas_every_version_has,
                sink=self.registry,
            )
        learned = lambda b: self.release.freshness.learned(b.action_ts_ms[b.label > 0].tolist())  # noqa: E731
        self.trainer: Trainer = (
            Trainer(self.learner, s.queue_batches, on_learned=learned, pause_after_s=s.timeouts.pause_after_s)
            if self.group is None
            else GroupTrainer(
                self.learner,
                self.group,
                lambda parts, rank: step_batch(parts, rank, self.vocabs, s.model.max_tokens),
                s.queue_batches,
                on_learned=learned,
                pause_after_s=s.timeouts.pause_after_s,
            )
        )
        self._group_token = ""  # the group checkpoint being written (its barrier's token)
        self._group_committable: dict[str, int] = {}  # offsets of a checkpoint every rank holds
        self._resumed = False  # started from a checkpoint
        self._group_stopped = False  # the group passed its stop barrier: this rank's work is done
        self.kafka = Health("kafka")
        self.counters = Counters()
        self.supervisor = Supervisor()
        self.last_checkpoint: dict[str, Any] = {}
        self.started_at = self.clock.time()
        self._dead: list[DeadLetter] = []
        self._recent: deque[Sample] = deque(maxlen=PARITY_SAMPLES)
        self._stopping = asyncio.Event()
        self._fenced = False
        self._started = False
        self._holds_lease = False
        self._fetch_failed = False
        # The first version and delta are due at once (the monotonic clock can start anywhere).
        self._last_publish = float("-inf")
        self._last_delta = float("-inf")
        self._delta_samples = 0
        self._last_checkpoint = self.clock.monotonic()
        # What a warm start learned (``--warm-start``), recorded with every version cut since.
        self._warm: dict[str, Any] | None = None
        # How the warm start shows its progress (set by the CLI: a bar on a terminal).
        self.warm_progress: WarmProgress | None = None
        source.positions = lambda: self.ingest.positions

    @classmethod
    def from_settings(cls, settings: UpdaterSettings, clock: Clock | None = None) -> Updater:
        """An updater with the real adapters (Kafka, Triton, PostgreSQL) built from ``settings``."""
        s, t = settings, settings.timeouts
        leads = s.rank == 0  # a group's other ranks learn and checkpoint, never publish
        key = control_key(s.triton_key_file or s.state_dir / CONTROL_KEY_FILE) if leads else None
        replicas = [
            TritonModel(url, s.model_name, t.triton_call_s, t.triton_load_s, key=key)
            for url in (s.triton_grpc or "").split(",")
            if url and leads
        ]
        server: ModelServer | None = (
            None if not replicas else replicas[0] if len(replicas) == 1 else ReplicaSet(replicas)
        )
        return cls(
            settings,
            source=KafkaSource(
                s.bootstrap,
                (s.topic, s.items_topic) if s.items_topic else (s.topic,),
                s.group,
                commit_timeout_s=t.commit_s,
                session_timeout_s=t.kafka_session_s,
                share=(s.rank, s.world_size) if s.world_size > 1 else None,
            ),
            server=server,
            registry=Registry(s.pg_dsn, s.model_name, timeout_s=t.registry_s),
            lease=(
                WriterLease(s.pg_dsn, s.model_name, timeout_s=t.lease_s, poll_s=t.lease_poll_s)
                if leads
                else NoLease()
            ),
            clock=clock,
        )

    @property
    def leads(self) -> bool:
        """Alone, or rank 0 of a group: the one that publishes."""
        return self.settings.rank == 0

    @property
    def freshness_settled(self) -> bool:
        """True once every action consumed so far is learned and served, its freshness measured."""
        pending = len(self.release.freshness) or len(self.batcher) or self.trainer.qsize()
        return not (pending or self.release.busy)

    @property
    def freshness_by_action(self) -> deque[tuple[float, float]]:
        return self.release.freshness.by_action

    @property
    def served_version(self) -> int | None:
        return self.release.served_version

    @property
    def positions(self) -> dict[str, int]:
        """Next offset to read per ``topic:partition``, from the ledger."""
        return self.ingest.positions

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("updater starting (pid %d)", os.getpid())
        if self.web is not None:
            await self.web.start()
        await self.registry.connect()
        # One writer per model: a second updater waits here as a standby until the first is gone.
        if not await self.lease.wait(self._stopping):
            return
        self._holds_lease = True
        # Read what the registry holds now (a standby may have waited for hours; PostgreSQL may
        # have been away at the first try): version numbers must go on from the newest.
        self.registry.reset_baseline()
        await self.registry.connect()
        self.registry.outbox.open()
        if self.leads:
            self.release.publisher.remove_orphans()
        if self.deltas is not None:
            # A writer before this one (a standby took over) may have written more since start-up.
            self.deltas.resume_from_log()
            # A hold a writer before this one put stays in force until this one's first version.
            self.release.adopt_hold()
        await self.ingest.start()
        if self.group is not None:
            log.info("joining the training group as rank %d of %d at %s", s.rank, s.world_size, s.group_init)
            await asyncio.to_thread(self.group.start)
        if not await self._restore() and s.warm_start is not None:
            await asyncio.to_thread(self._warm_start, s.warm_start)
        await self.source.start()
        self.kafka.mark(True)
        self.trainer.start()
        self.release.start()
        sup = self.supervisor
        sup.spawn("consume", self._consume())
        for task in (self.trainer.task, self.release.task):
            assert task is not None
            sup.adopt(task)
        if self.deltas is not None:
            self.deltas.start()
            assert self.deltas.task is not None
            sup.adopt(self.deltas.task)
        sup.spawn("report", self._report())
        sup.spawn("registry-flush", self.registry.run())
        log.info(
            "updater started: topic %s, %d samples trained so far", s.topic, self.learner.samples_trained
        )

    async def wait(self) -> None:
        """Return when :meth:`stop` is requested; raise if a task failed.

        A failed training step is :class:`TrainingFailed` (from the step's own error), whichever
        task noticed first.
        """
        try:
            await self.supervisor.wait(self._stopping)
        except TrainingFailed:
            raise
        except Exception:
            train = self.trainer.task
            if self.trainer.failed and train is not None:
                raise TrainingFailed(
                    "a training step failed; the last checkpoint stands"
                ) from train.exception()
            raise

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Drain, checkpoint, commit, then close, each with a deadline. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        t, sup = self.settings.timeouts, self.supervisor
        try:
            if self.trainer.failed:
                await sup.cancel("consume")  # training is dead: nothing new may be checkpointed
            # Otherwise consume ends with the final drain and checkpoint (a tracked shield).
            elif not await sup.finish("consume", t.stop_s):
                log.error("the final checkpoint took over %.0f s; stopping without it", t.stop_s)
                await sup.cancel("final-checkpoint")
            await self.release.close(t.export_stop_s)
            if self.deltas is not None:
                await self.deltas.close()
            await sup.close()
            self._write_status()
            await self.registry.flush_remaining(t.registry_s)
        finally:
            # Scrapes stop before the parts they read are closed.
            if self.web is not None:
                await self.web.stop()
            # Nothing may write the shared state directory once the lease is released.
            await self.checkpointer.wait_idle()
            await self.ingest.close()
            await self.source.stop()
            await self.release.close(0)
            await self.lease.release()
            await self.registry.registry.stop()
            if self.group is not None:
                self.group.close()
        log.info("updater stopped: %d samples trained", self.learner.samples_trained)

    async def __aenter__(self) -> Updater:
        try:
            await self.start()
        except BaseException:
            # A failed start must not leak the lease connection, the pool or the consumer.
            self._started = True
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Serve until :meth:`request_stop` (or a task fails), then stop cleanly."""
        try:
            await self.start()
            await self.wait()
        finally:
            await self.stop()
        if self._fenced:
            raise LeaseLost("another updater took over as the writer; this one stopped without a checkpoint")

    # ----------------------------------------------------------------- consume

    async def _fetch(self) -> Sequence[RawRecord] | None:
        """The next records (retried while Kafka is away); None once stopping."""
        s = self.settings
        while not self._stopping.is_set():
            try:
                records = await self.source.fetch(s.timeouts.fetch_ms, s.fetch_max_records)
            except DependencyError as exc:
                self.kafka.mark(False, str(exc))
                self._fetch_failed = True
                await asyncio.sleep(s.timeouts.fetch_ms / 1000)
                continue
            if self._fetch_failed:  # a commit failure is cleared by the next commit, not a fetch
                self._fetch_failed = False
                self.kafka.mark(True)
            return records
        return None

    async def _consume(self) -> None:
        records = await self._fetch()
        while records is not None:
            ingesting = asyncio.ensure_future(
                self.ingest.aprocess(records, int(self.clock.time() * 1000), self.source.behind())
            )
            # The next records come while these are ingested (in workers, with --ingest-workers):
            # fetched, not yet ingested, they are in no state a checkpoint takes.
            fetching = asyncio.ensure_future(self._fetch())
            try:
                await self._take(await ingesting)
            except BaseException:
                for task in (ingesting, fetching):
                    task.cancel()
                await asyncio.gather(ingesting, fetching, return_exceptions=True)
                raise
            records = await fetching
        # Only on a clean exit: what was consumed is learned and checkpointed before offsets move.
        # After an error or a cancellation the last checkpoint stands and a restart replays the rest;
        # after losing the writer lease the state directory belongs to the new writer.
        if not self._fenced:
            await self.supervisor.shield("final-checkpoint", self._drain_and_checkpoint())

    async def _take(self, ingested: Ingested) -> None:
        """One fetch's samples into the trainer's queue; then a checkpoint or a snapshot if due."""
        if self._group_stopped:
            return  # the group stopped at its last checkpoint: a restart reads these again
        s = self.settings
        self.holdout.extend(ingested.held_out)
        self._recent.extend(ingested.trained[-PARITY_SAMPLES:])
        self._keep_dead_letters(ingested.dead)
        if ingested.opened:
            # Scored before any of their samples can be learned (one queue, in order).
            impressions = encode(ingested.opened, self.vocabs, s.model.max_tokens, grow=False)
            await self.trainer.put(Impressions(impressions), self.source)
        now = self.clock.monotonic()
        for chunk in self.batcher.add(ingested.trained, now):
            await self._enqueue(chunk)
        if self.batcher.due(now):
            await self._enqueue(self.batcher.flush())
        await self._maybe_snapshot(now)

    def _keep_dead_letters(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            if len(self._dead) >= DEAD_LETTER_BATCH:
                # Bounded memory: to the outbox now (a replay after a crash stores them once anyway).
                self.registry.record_dead_letters(self._dead)
                self._dead = []
            self._dead.append(letter)

    async def _enqueue(self, samples: list[Sample]) -> None:
        if samples and self.group is not None:
            await self.trainer.put(list(samples), self.source)  # encoded in the round that learns it
        elif samples:
            batch = encode(samples, self.vocabs, self.settings.model.max_tokens)
            await self.trainer.put(batch, self.source)

    async def _drain(self, checkpoint: bool = False) -> Barrier | None:
        """Everything consumed is learned. In a group, every rank comes to a barrier (one with a
        checkpoint on every rank when ``checkpoint``) and the weights stand still until
        :meth:`_release`; returns that barrier (one asked for meanwhile, to stop, if there was)."""
        await self._enqueue(self.batcher.flush())
        if not isinstance(self.trainer, GroupTrainer):
            await self.trainer.drain()
            return None
        # A rank's wish to stop can bring a barrier while the queue took the last samples.
        barrier = self.trainer.pending or self.trainer.request(checkpoint=checkpoint)
        self._group_token = barrier.token
        await self.trainer.arrive(self.positions)
        return barrier

    def _release(self) -> None:
        if isinstance(self.trainer, GroupTrainer):
            self.trainer.release()

    async def _at_group_barrier(self) -> bool:
        """(In a group) come to the barrier the leader asked for, if one waits: checkpoint there
        when it says so, and stop after a stop barrier. True when one was passed."""
        trainer = self.trainer
        if not isinstance(trainer, GroupTrainer) or (barrier := trainer.pending) is None:
            return False
        await self._enqueue(self.batcher.flush())
        await trainer.arrive(self.positions)
        try:
            if barrier.checkpoint:
                self._group_token = barrier.token
                await self._checkpoint()
        finally:
            trainer.release()
        if barrier.stop:
            self._group_stopped = True
            self._stopping.set()
        return True

    async def _maybe_snapshot(self, now: float) -> None:
        if await self._at_group_barrier() or not self.leads:
            return
        s = self.settings
        checkpoint_due = now - self._last_checkpoint >= s.checkpoint_interval_s
        trained_soon = self.learner.samples_trained + len(self.batcher) + self.trainer.queued_samples
        held = self.release.held
        # A candidate the gate rejected holds the deltas back: the next one is tried sooner.
        interval = s.gate.check_interval_s if held is not None and held.by == "gate" else s.publish_interval_s
        publish_due = (
            not self._fenced
            and now - self._last_publish >= min(interval, s.publish_interval_s)
            and not self.release.busy
            # While the server is down, versions would pile up unserved; the reconcile loads on return.
            and not self.release.server_down
            # Version numbers go on from the registry's newest (rejected ones leave no directory):
            # it must have been read once, after the lease was taken.
            and self.registry.baseline_published is not None
            and trained_soon >= max(self.release.samples_released, 0) + s.min_samples_per_version
        )
        delta_due = (
            self.deltas is not None
            and not self._fenced
            and now - self._last_delta >= s.delta_interval_s
            and not self.deltas.busy
            and self.release.deltas_wanted
            and trained_soon > self._delta_samples
        )
        # Between versions the gate judges what serving has: the state right after a delta.
        check_due = (
            self.deltas is not None
            and not self._fenced
            and not publish_due
            and now - self.release.judged_at >= s.gate.check_interval_s
            and (delta_due or self.release.held is not None)
        )
        if not (checkpoint_due or publish_due or delta_due or check_due):
            return
        barrier = await self._drain(checkpoint=checkpoint_due)
        checkpoint_due = checkpoint_due or (barrier is not None and barrier.checkpoint)
        try:
            if delta_due:
                self._last_delta = now
                self._cut_delta()
            if check_due:
                assert self.deltas is not None
                holdout = await self._holdout()
                await self.release.check(self.learner.model, self.vocabs, holdout, self.deltas.handed_seq)
            if checkpoint_due:
                await self._checkpoint()
            trained_more = self.learner.samples_trained > self.release.samples_released
            if publish_due and trained_more and self.release.submit(await self._snapshot()):
                self._last_publish = now
        finally:
            self._release()
        if barrier is not None and barrier.stop:
            self._group_stopped = True
            self._stopping.set()

    async def _drain_and_checkpoint(self) -> None:
        if not isinstance(self.trainer, GroupTrainer):
            await self._drain()
            await self._checkpoint()
            return
        # A group stops together, at a last barrier with a checkpoint on every rank: this rank
        # asks for it (rank 0 at once) and comes to each barrier until that one has passed.
        trainer = self.trainer
        while not self._group_stopped:
            if trainer.pending is None:
                if self.leads:
                    self._group_token = trainer.request(checkpoint=True, stop=True).token
                else:
                    trainer.ask_stop()
                    await trainer.while_training(asyncio.sleep(trainer.tick_s))
                    continue
            await self._at_group_barrier()

    def _deltas_every_version_has(self) -> int | None:
        """The newest delta each version in the repository includes; None while one of them
        was cut before this process (its cut is not known here, so nothing is pruned)."""
        versions, cuts = self.release.publisher.versions(), self.release.cuts
        if not versions or any(v not in cuts for v in versions):
            return None
        return min(cuts[v] for v in versions)

    def _cut_delta(self) -> None:
        """Hand the rows learned since the last delta to the delta stream (the trainer is drained)."""
        assert self.deltas is not None
        text = self.vocabs.text
        retitled = self.ingest.catalogue.take_retitled()
        titles = {i: text.title(t) for i, t in retitled.items()} if text is not None else {}
        delta = build_delta(
            self.deltas.next_seq,
            self.learner.model,
            self.learner.take_touched(),
            self.vocabs.take_changes(),
            titles,
            samples_trained=self.learner.samples_trained,
            offsets=self.positions,
        )
        self._delta_samples = self.learner.samples_trained
        self.deltas.submit(delta, self.release.freshness.take())

    async def _holdout(self) -> list[Sample]:
        """Every held-out impression of the gate's window by what is known of it now: those whose
        window is still open count as misses (until a click makes them a sample)."""
        s = self.settings
        open_now = await self.ingest.aopen_holdout()
        return recent([*self.holdout, *open_now], s.holdout_recent_s, s.gate.min_samples)

    async def _snapshot(self) -> Snapshot:
        holdout = await self._holdout()
        return Snapshot(
            model=self.learner.frozen_copy(),
            vocabs=self.vocabs.copy(),
            offsets=self.positions,
            samples_trained=self.learner.samples_trained,
            metrics={
                "prequential_auc": self.learner.metrics.auc(),
                "prequential_logloss": self.learner.metrics.logloss(),
                "ledger": self.ingest.ledger_state(),
                **({"warm_start": self._warm} if self._warm is not None else {}),
            },
            parity_samples=list(self._recent),
            holdout=holdout,
            titles=self.ingest.catalogue.titles(),
            # A delta still being written is learned here too: the version applies it again.
            delta_seq=self.deltas.counters.last_seq if self.deltas is not None else 0,
        )

    # ----------------------------------------------------------------- checkpoints

    async def _confirm_writer(self) -> bool:
        try:
            return await self.lease.confirm()
        except LeaseLost:
            self._fenced = True
            self._stopping.set()
            raise

    async def _checkpoint(self) -> None:
        """Dead letters, then the checkpoint, then the Kafka commit: offsets never run ahead."""
        self._last_checkpoint = self.clock.monotonic()
        settled = await self._confirm_writer()
        # A group's ranks all write at this barrier: rank 0 may not skip one, so it waits for
        # the lease to settle (the others wait at the barrier meanwhile) or stops.
        for _ in range(GROUP_LEASE_TRIES if self.group is not None and not settled else 0):
            await asyncio.sleep(1.0)
            if settled := await self._confirm_writer():
                break
        if not settled and self.group is not None:
            raise FreshrankError(
                "the writer lease stayed unsettled at a group checkpoint: stopping for a restart"
            )
        if not settled:
            log.warning("writer lease unsettled; the checkpoint waits for the next round")
            return
        # Durable in the outbox before the offsets that produced them are committed.
        self.registry.record_dead_letters(self._dead)
        self._dead = []
        while self.registry.outbox.full and not self._stopping.is_set():
            # PostgreSQL has been away long enough to fill the outbox: stop consuming until it drains.
            log.warning(
                "registry outbox full (%d bytes); waiting for PostgreSQL", self.registry.outbox.size_bytes
            )
            await asyncio.sleep(1.0)
        counters = self._counters()
        store = self.checkpointer.store
        ingest_state = await self.ingest.state_capture()
        group = self._group_part()
        seconds = await self.checkpointer.save(
            lambda: {
                **self.state.capture(self.release.serving, counters, ingest_state, has_base=store.has_base),
                **group,
            },
            after=self.state.saved,
        )
        positions = commit = self.positions
        if self.group is not None:
            # Committed offsets never run ahead of the checkpoint every rank holds: at a barrier
            # every rank has written the one of the barrier before, whose offsets go now.
            commit, self._group_committable = self._group_committable, positions
        if commit:
            try:
                await self.source.commit(commit)
            except DependencyError as exc:
                log.warning("%s; the checkpoint holds the offsets, the next one commits again", exc)
                self.kafka.mark(False, str(exc))
            else:
                self.kafka.mark(True)
        self.counters.checkpoints += 1
        self.last_checkpoint = {
            "at": self.clock.time(),
            "seconds": round(seconds, 3),
            "kind": store.last_kind,
            "bytes": store.last_bytes,
            "base_bytes": store.last_base_bytes,
            "offsets": positions,
            "samples_trained": self.learner.samples_trained,
        }
        log.debug("checkpoint written in %.3f s at %s", seconds, positions)

    def _group_part(self) -> dict[str, Any]:
        """What a group checkpoint says of itself: whose it is and which barrier took it."""
        s = self.settings
        if self.group is None:
            return {}
        first = self.counters.checkpoints == 0 and not self._resumed
        return {
            "group": {"rank": s.rank, "world_size": s.world_size, "token": self._group_token, "first": first}
        }

    def _counters(self) -> dict[str, int]:
        r = self.release.counters
        return {
            "checkpoints": self.counters.checkpoints,
            "backpressure_pauses": self.trainer.pauses,
            "versions_rejected": r.versions_rejected,
            "export_failures": r.export_failures,
            "rollbacks": r.rollbacks,
        }

    def _warm_start(self, path: Path) -> None:
        s = self.settings
        lines = read_lines(path)
        meter = self.warm_progress(path.stat().st_size) if self.warm_progress is not None else None
        try:
            warm = learn_history(
                lines,
                self.learner,
                self.vocabs,
                source=str(path),
                batch_size=s.batch_size,
                window_ms=s.window_ms,
                holdout_every=s.holdout_every,
                on_read=meter.advance if meter is not None else None,
            )
        finally:
            if meter is not None:
                meter.close()
        self.holdout.extend(warm.held_out)
        self._warm = warm.to_dict()

    async def _restore(self) -> bool:
        """Resume from the checkpoint; False when there is none."""
        saved = self.checkpointer.load() if self.group is None else await self._group_checkpoint()
        if saved is None:
            return False
        serving, counters = self.state.restore(saved)
        self._resumed = True
        if self.group is not None:
            self._group_committable = self.positions  # every rank holds this one
        self.release.serving = serving
        self.counters = Counters(counters.get("checkpoints", 0))
        self.trainer.pauses = counters.get("backpressure_pauses", 0)
        r = self.release.counters
        r.versions_rejected = counters.get("versions_rejected", 0)
        r.export_failures = counters.get("export_failures", 0)
        r.rollbacks = counters.get("rollbacks", 0)
        self.release.samples_released = self.learner.samples_trained  # no version of what is served
        if not self.settings.measure_every:
            # Restarted with --measure-every 0: count every sample again, with its learn-time score.
            self.learner.metrics.expecting = False
        log.info(
            "resumed from checkpoint: %d samples trained, offsets %s",
            self.learner.samples_trained,
            self.positions,
        )
        return True

    async def _group_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint every rank of the group holds (each keeps its last two: a crash
        between two ranks' writes leaves some one ahead), or None when none has one."""
        assert self.group is not None
        s, store = self.settings, self.checkpointer.store
        mine: list[str] = []  # tokens, newest first; START: this rank's history reaches the start
        first = True  # no checkpoint, or the oldest kept is this rank's first
        for previous in (False, True):
            peeked = store.peek(previous)
            if peeked is None:
                continue
            part = peeked.get("group") or {}
            if (part.get("rank"), part.get("world_size")) != (s.rank, s.world_size):
                raise ConfigError(
                    f"expected a checkpoint of rank {s.rank} of {s.world_size} in {store.directory}, found "
                    + (
                        f"rank {part.get('rank')} of {part.get('world_size')}"
                        if part
                        else "one of an updater alone"
                    )
                    + " (start with the --world-size and --rank it was made with, or an empty --state-dir)"
                )
            mine.append(part["token"])
            first = bool(part.get("first"))
        if first:
            mine.append(START)
        every = await asyncio.to_thread(self.group.gather, mine)
        common = [t for t in every[0] if all(t in tokens for tokens in every)]
        if not common:
            raise FreshrankError(
                f"the group's checkpoints have no state in common (tokens per rank: {every}); "
                "start every rank from an empty --state-dir"
            )
        if common[0] == START:
            if mine != [START]:
                # This rank wrote the group's first checkpoint and another did not (its offsets
                # were never committed: see _checkpoint): the group begins again.
                log.warning("the group starts from the beginning: not every rank wrote its first checkpoint")
                store.clear()
            return None
        previous = mine.index(common[0]) == 1
        saved = store.load(previous=previous)
        if previous:
            log.warning(
                "resuming from the checkpoint before the last: the group's other ranks did not write the last"
            )
            store.adopt_previous()
        return saved

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        return self._status().to_dict()

    def _status(self) -> Status:
        return collect(self)

    def _write_status(self) -> Status | None:
        if self._fenced or (self.leads and self.lease.token is None):
            return None  # a standby (or a fenced writer) must not overwrite the writer's status file
        status = self._status()
        write_status(self.settings.state_dir / STATUS_FILE, status)
        return status

    def _dashboard(self) -> dict[str, Any]:
        if not self._holds_lease:
            return {"waiting": "standby: waiting for the writer lease"}
        return dashboard(self._status(), self.history)

    async def _report(self) -> None:
        while True:
            status = self._write_status()
            if status is not None:
                since = status.updated_at - FRESHNESS_WINDOW_S
                self.history.record(status, self.release.freshness.served_since(since))
            await asyncio.sleep(1.0)
