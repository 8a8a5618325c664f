"""The updater's status: one typed record, written as ``status.json`` once a second.

The CLI (``freshrank status``), ``freshrank up``, the benchmarks and the tests read the same
fields; :func:`read_status` returns them as a dict ({} while there is no file yet).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from exporter.fleet import ReplicaSet
from rankcore.text import TextEncoder
from updater.group import GroupTrainer
from updater.ingest_workers import IngestWorkers

if TYPE_CHECKING:
    from updater.service import Updater

STATUS_FILE = "status.json"


@dataclass
class Status:
    updated_at: float
    pid: int
    uptime_s: float
    events_consumed: int
    events_valid: int
    duplicates: int
    dead_letters: int
    held_out: int
    versions_published: int
    versions_rejected: int
    checkpoints: int
    export_failures: int
    backpressure_pauses: int
    rollbacks: int
    samples_trained: int
    positives_trained: int
    live_version: int | None
    served_version: int | None
    prequential_auc: float | None
    prequential_logloss: float | None
    served_holdout_auc: float | None
    freshness_p50_s: float | None
    freshness_p95_s: float | None
    freshness_p99_s: float | None
    consumer_lag: int | None
    consumer_paused: bool
    pending_impressions: int
    queue_batches: int
    holdout_samples: int
    device: str
    writer_token: int | None
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    # topic:partition -> records on the broker not yet consumed (the ones with a known watermark).
    consumer_lag_by_partition: dict[str, int] = field(default_factory=dict)
    # The release cycle's latest events, oldest first (exporter.release.TimelineEntry).
    timeline: list[dict[str, Any]] = field(default_factory=list)
    dependencies: dict[str, dict[str, Any]] = field(default_factory=dict)
    serving: dict[str, Any] = field(default_factory=dict)
    last_rollback: dict[str, Any] = field(default_factory=dict)
    registry_outbox: dict[str, Any] = field(default_factory=dict)
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    vocab_evictions: dict[str, int] = field(default_factory=dict)
    vocab_overflow: dict[str, int] = field(default_factory=dict)
    catalogue: dict[str, int] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: dict[str, Any] = field(default_factory=dict)
    last_export: dict[str, Any] = field(default_factory=dict)
    last_release: dict[str, Any] = field(default_factory=dict)
    served_holdout: dict[str, Any] = field(default_factory=dict)
    # The delta stream (exporter/stream.py): written, refused, rows, last sequence numbers, and
    # whether deltas flow now ("on": over a version this process cut, served as the newest).
    deltas: dict[str, Any] = field(default_factory=dict)
    # Each Triton replica's last answer (several --triton-grpc): url, ok, state, error, at.
    replicas: list[dict[str, Any]] = field(default_factory=list)
    # With --ingest-workers: each worker process (pid, alive, how long its answer has been
    # awaited, stalled), and the stalled ones by name (empty: ingest runs in this process).
    ingest_workers: list[dict[str, Any]] = field(default_factory=list)
    ingest_stalled: list[str] = field(default_factory=list)
    # With --world-size above 1: this rank, its rounds, and (past a sixth of --timeout-group-s
    # in one round) "stalled", naming the ranks whose last round is behind this one's.
    group: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(u: Updater) -> Status:
    """The status of a running updater, read off its parts."""
    m, c, i, r = u.learner.metrics, u.counters, u.ingest.counts, u.release
    published = (u.registry.baseline_published or 0) + r.counters.published_here
    # What answers requests (probed after each load); the gate's live model can be older when
    # the server serves a version this process did not build (one from before a restart).
    live = r.served_version if r.served_version is not None else (r.live.version if r.live else None)
    outcome = r.last_outcome
    lags = u.source.lags() if u._holds_lease else {}
    fresh = r.freshness.percentiles(50, 95, 99)
    return Status(
        updated_at=u.clock.time(),
        pid=os.getpid(),
        uptime_s=round(u.clock.time() - u.started_at, 1),
        events_consumed=i.events_consumed,
        events_valid=i.events_valid,
        duplicates=i.duplicates,
        dead_letters=i.dead_letters,
        held_out=i.held_out,
        versions_published=published,
        versions_rejected=r.counters.versions_rejected,
        checkpoints=c.checkpoints,
        export_failures=r.counters.export_failures,
        backpressure_pauses=u.trainer.pauses,
        rollbacks=r.counters.rollbacks,
        samples_trained=u.learner.samples_trained,
        positives_trained=m.positives,
        live_version=live,
        served_version=r.served_version,
        prequential_auc=_finite(m.auc()),
        prequential_logloss=_finite(m.logloss()),
        served_holdout_auc=r.served_holdout.get("auc"),
        freshness_p50_s=fresh[0],
        freshness_p95_s=fresh[1],
        freshness_p99_s=fresh[2],
        consumer_lag=sum(lags.values()) if lags else None,
        consumer_paused=u.source.paused,
        pending_impressions=u.ingest.pending,
        queue_batches=u.trainer.qsize(),
        holdout_samples=len(u.holdout),
        device=str(u.learner.device),
        writer_token=u.lease.token,
        dead_letters_by_reason=dict(i.dead_letters_by_reason),
        consumer_lag_by_partition=lags,
        timeline=[e.to_dict() for e in r.timeline],
        dependencies={h.name: h.to_dict() for h in (u.kafka, u.registry.health, r.health)},
        serving={
            "mode": r.serving.mode,
            "version": r.serving.version,
            "reason": r.serving.reason,
            "delta": r.serving.delta,
        },
        last_rollback=r.last_rollback,
        replicas=r.server.replicas() if isinstance(r.server, ReplicaSet) else [],
        ingest_workers=u.ingest.describe() if isinstance(u.ingest, IngestWorkers) else [],
        ingest_stalled=u.ingest.stalled() if isinstance(u.ingest, IngestWorkers) else [],
        group=(
            u.trainer.describe(u.settings.timeouts.group_s / 6)
            if isinstance(u.trainer, GroupTrainer)
            else None
        ),
        registry_outbox=u.registry.to_dict(),
        vocab_sizes=u.vocabs.sizes(),
        vocab_evictions=u.vocabs.evictions(),
        vocab_overflow={f: v.overflow for f, v in u.vocabs.by_feature.items()},
        catalogue={
            "items": len(u.ingest.catalogue),
            "updates_consumed": i.item_updates_consumed,
            "updates_valid": i.item_updates_valid,
            "stale": u.ingest.catalogue.stale,
            "forgotten": u.ingest.catalogue.forgotten,
        },
        text=_text(u.vocabs.text),
        offsets=u.positions,
        ledger=u.ingest.ledger_state(),
        last_checkpoint=u.last_checkpoint,
        last_export=r.last_export,
        last_release=asdict(outcome) if outcome is not None else {},
        served_holdout=r.served_holdout,
        deltas=(
            {
                **asdict(u.deltas.counters),
                "on": r.deltas_wanted,
                "held": asdict(r.held) if r.held is not None else None,
                "last_hold": asdict(r.last_hold) if r.last_hold is not None else None,
                "checks": r.counters.checks,
                "checks_failed": r.counters.checks_failed,
                "holds": r.counters.holds,
                "checked_seq": r.checked_seq,
                "last_check": r.last_check,
            }
            if u.deltas is not None
            else {}
        ),
    )


def _finite(x: float) -> float | None:
    return None if x != x else x  # NaN -> None for JSON


def write_status(path: Path, status: Status) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(status.to_dict(), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any]:
    """The fields of a status file, or {} while there is none (or it is being replaced)."""
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _text(encoder: TextEncoder | None) -> dict[str, Any]:
    """The text tower's encoder: off, or its table and how many distinct texts it encoded."""
    if encoder is None:
        return {"enabled": False}
    meta = encoder.table.meta
    return {
        "enabled": True,
        "model": meta.get("source_model", ""),
        "words": len(encoder.table.words),
        "dim": encoder.dim,
        "texts_encoded": encoder.encoded,
    }
