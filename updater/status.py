"""The updater's status: one typed record, written as ``status.json`` once a second.

The CLI (``freshrank status``), ``freshrank up``, the benchmarks and the tests read the same
fields; :func:`read_status` returns them as a dict ({} while there is no file yet).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

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
    freshness_p50_s: float | None
    freshness_p95_s: float | None
    consumer_lag: int | None
    consumer_paused: bool
    pending_impressions: int
    queue_batches: int
    holdout_samples: int
    device: str
    writer_token: int | None
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    dependencies: dict[str, dict[str, Any]] = field(default_factory=dict)
    serving: dict[str, Any] = field(default_factory=dict)
    last_rollback: dict[str, Any] = field(default_factory=dict)
    registry_outbox: dict[str, Any] = field(default_factory=dict)
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: dict[str, Any] = field(default_factory=dict)
    last_export: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
