"""One settings object for the updater, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from exporter.gate import GateSettings
from rankcore.errors import ConfigError
from rankcore.holdout import DEFAULT_HOLDOUT_EVERY
from rankcore.model import RankerConfig
from updater.batcher import DEFAULT_BATCH_SIZE, DEFAULT_MAX_WAIT_S
from updater.joiner import DEFAULT_WINDOW_MS
from updater.source import DEFAULT_GROUP, DEFAULT_TOPIC

DEFAULT_STATE_DIR = Path(".freshrank")
DEFAULT_QUEUE_BATCHES = 8
DEFAULT_PUBLISH_INTERVAL_S = 2.0
DEFAULT_CHECKPOINT_INTERVAL_S = 10.0
DEFAULT_KEEP_VERSIONS = 5
DEFAULT_FETCH_MAX_RECORDS = 2_000
DEFAULT_MIN_SAMPLES_PER_VERSION = 1
DEFAULT_HOLDOUT_WINDOW = 5_000


@dataclass
class UpdaterSettings:
    bootstrap: str
    pg_dsn: str
    repository: Path
    state_dir: Path = DEFAULT_STATE_DIR
    triton_grpc: str | None = None
    topic: str = DEFAULT_TOPIC
    group: str = DEFAULT_GROUP
    batch_size: int = DEFAULT_BATCH_SIZE
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    queue_batches: int = DEFAULT_QUEUE_BATCHES
    window_ms: int = DEFAULT_WINDOW_MS
    publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    min_samples_per_version: int = DEFAULT_MIN_SAMPLES_PER_VERSION
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    fetch_max_records: int = DEFAULT_FETCH_MAX_RECORDS
    device: str = "auto"
    torch_threads: int = 1
    seed: int = 0
    model: RankerConfig = field(default_factory=RankerConfig)
    # The gate: every holdout_every-th request is held out from training (0: none) and each
    # candidate is compared with the live version on the latest holdout_window of them.
    holdout_every: int = DEFAULT_HOLDOUT_EVERY
    holdout_window: int = DEFAULT_HOLDOUT_WINDOW
    gate: GateSettings = field(default_factory=GateSettings)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        self.state_dir = Path(self.state_dir)
        for name in (
            "batch_size",
            "queue_batches",
            "window_ms",
            "keep_versions",
            "fetch_max_records",
            "torch_threads",
            "min_samples_per_version",
            "holdout_window",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"expected {name} to be a positive integer, got {value!r}")
        for name in ("max_wait_s", "publish_interval_s", "checkpoint_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"expected {name} to be a positive number of seconds, got {value!r}")
        if not isinstance(self.holdout_every, int) or self.holdout_every < 0 or self.holdout_every == 1:
            raise ConfigError(
                f"expected holdout_every to be 0 (off) or an integer >= 2, got {self.holdout_every!r}"
            )
        if ":" not in self.bootstrap:
            raise ConfigError(f"expected bootstrap as HOST:PORT, got {self.bootstrap!r}")
        if not self.pg_dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"expected a postgresql:// DSN, got {self.pg_dsn!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"expected device auto, cpu or cuda[:N], got {self.device!r}")
