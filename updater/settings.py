"""One settings tree for the updater, validated on construction, each default in one place.

``UpdaterSettings`` holds the gate (:class:`exporter.gate.GateSettings`), the model's capacity
(:class:`rankcore.model.RankerConfig`) and every timeout (:class:`Timeouts`). The command line
is generated from these fields (:func:`add_arguments` / :func:`from_arguments`), so every knob
is a ``freshrank updater`` flag, and so reachable from compose.yaml, with the default written
once, here or in the dataclass it belongs to.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from exporter.gate import GateSettings
from exporter.publish import DEFAULT_KEEP_VERSIONS, MODEL_NAME
from exporter.release import DEFAULT_CLOSE_TIMEOUT_S, DEFAULT_PROBE_SETTLE_S, DEFAULT_WATCH_S
from exporter.triton import DEFAULT_CALL_TIMEOUT_S, DEFAULT_LOAD_TIMEOUT_S
from rankcore.catalogue import DEFAULT_CAPACITY as DEFAULT_CATALOGUE_CAPACITY
from rankcore.errors import ConfigError
from rankcore.features import DEFAULT_VOCAB_EXPIRE_S
from rankcore.holdout import DEFAULT_HOLDOUT_EVERY, DEFAULT_MEASURE_EVERY, DEFAULT_RECENT_S
from rankcore.model import RankerConfig
from updater.batcher import DEFAULT_BATCH_SIZE, DEFAULT_MAX_WAIT_S
from updater.clean import DEFAULT_DEDUP_CAPACITY
from updater.group import DEFAULT_GROUP_TIMEOUT_S
from updater.ingest_workers import DEFAULT_ANSWER_S
from updater.joiner import DEFAULT_MAX_PENDING, DEFAULT_WINDOW_MS
from updater.learner import DEFAULT_DENSE_LR, DEFAULT_SPARSE_LR
from updater.lease import DEFAULT_LEASE_TIMEOUT_S, DEFAULT_POLL_S
from updater.outbox import DEFAULT_MAX_BYTES
from updater.registry import DEFAULT_TIMEOUT_S as DEFAULT_REGISTRY_TIMEOUT_S
from updater.source import DEFAULT_COMMIT_TIMEOUT_S, DEFAULT_SESSION_TIMEOUT_S
from updater.trainer import DEFAULT_PAUSE_AFTER_S
from updater.web import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT

DEFAULT_STATE_DIR = Path(".freshrank")
DEFAULT_UPDATER_STATE_DIR = DEFAULT_STATE_DIR / "updater"
DEFAULT_TOPIC = "events"
DEFAULT_ITEMS_TOPIC = "items"
DEFAULT_GROUP = "freshrank-updater"
DEFAULT_QUEUE_BATCHES = 8
# Versions are the unit of rollback; between them deltas (every 0.5 s) carry what was learned
# and the gate judges the served state every 2 s (GateSettings.check_interval_s). `bench
# freshness`: versions every 2 s cost the freshness tail (each is a Triton load), every 30 s
# keeps p99 near 1 s.
DEFAULT_PUBLISH_INTERVAL_S = 30.0
DEFAULT_DELTA_INTERVAL_S = 0.5
DEFAULT_CHECKPOINT_INTERVAL_S = 10.0
DEFAULT_FETCH_MAX_RECORDS = 2_000
DEFAULT_MIN_SAMPLES_PER_VERSION = 1
DEFAULT_HOLDOUT_WINDOW = 5_000
DEFAULT_FETCH_MS = 200
DEFAULT_STOP_S = 60.0


def _knob(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Timeouts:
    """How long the updater waits for each thing before it gives up on it (seconds unless named)."""

    fetch_ms: int = _knob(DEFAULT_FETCH_MS, "longest wait of one Kafka fetch, in milliseconds")
    # A full queue first just blocks the consumer (aiokafka prefetches at most one response
    # per partition); only a trainer stalled this long pauses the partitions, because a pause
    # makes aiokafka drop what it had buffered for them and fetch it again on resume.
    pause_after_s: float = _knob(
        DEFAULT_PAUSE_AFTER_S, "a trainer behind for this long pauses the partitions"
    )
    stop_s: float = _knob(DEFAULT_STOP_S, "the final drain and checkpoint at stop")
    export_stop_s: float = _knob(DEFAULT_CLOSE_TIMEOUT_S, "an export still running at stop")
    registry_s: float = _knob(DEFAULT_REGISTRY_TIMEOUT_S, "one PostgreSQL registry call")
    lease_s: float = _knob(DEFAULT_LEASE_TIMEOUT_S, "one writer-lease query")
    lease_poll_s: float = _knob(DEFAULT_POLL_S, "how often a standby asks for the writer lease")
    commit_s: float = _knob(DEFAULT_COMMIT_TIMEOUT_S, "one Kafka offset commit")
    kafka_session_s: float = _knob(
        DEFAULT_SESSION_TIMEOUT_S, "consumer-group session: a dead member's partitions move on after it"
    )
    triton_call_s: float = _knob(DEFAULT_CALL_TIMEOUT_S, "one Triton control or inference call")
    triton_load_s: float = _knob(DEFAULT_LOAD_TIMEOUT_S, "one Triton model load")
    triton_watch_s: float = _knob(DEFAULT_WATCH_S, "interval between checks of what Triton serves")
    probe_settle_s: float = _knob(
        DEFAULT_PROBE_SETTLE_S, "after a load, how long to wait for the new version to answer"
    )
    group_s: float = _knob(
        DEFAULT_GROUP_TIMEOUT_S,
        "one round of the training group (--world-size): a rank that does not answer within it "
        "fails the group",
    )
    ingest_s: float = _knob(
        DEFAULT_ANSWER_S,
        "one ingest worker's answer: status names it stalled after a sixth of this, and past it the "
        "updater stops (the restart resumes from the checkpoint)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _positive(f"timeouts.{f.name}", getattr(self, f.name))


def _positive(name: str, value: object, integer: bool = False) -> None:
    kinds: type | tuple[type, ...] = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:  # type: ignore[operator]
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"expected {name} to be {what}, got {value!r}")


@dataclass
class UpdaterSettings:
    bootstrap: str = field(metadata={"help": "Kafka bootstrap server", "metavar": "HOST:PORT"})
    pg_dsn: str = field(metadata={"help": "PostgreSQL registry", "metavar": "DSN"})
    repository: Path = field(
        metadata={"help": "Triton model repository", "flag": "--model-repository", "metavar": "DIR"}
    )
    state_dir: Path = _knob(DEFAULT_UPDATER_STATE_DIR, "checkpoint, outbox and status directory")  # noqa: RUF009
    triton_grpc: str | None = _knob(
        None,
        "Triton to load each version into (explicit model control); repeat the flag for replicas "
        "that share the repository (a version is live once every one serves it); without it "
        "versions are only written to the repository",
        metavar="HOST:PORT",
        append=True,  # several: kept comma-separated
    )
    triton_key_file: Path | None = _knob(  # noqa: RUF009
        None,
        "file with the key for Triton's restricted model control (default: $FRESHRANK_TRITON_KEY, "
        "else <state-dir>/triton.key when there is one)",
        metavar="FILE",
    )
    model_name: str = _knob(MODEL_NAME, "model name in the repository, in Triton and in the registry")
    topic: str = _knob(DEFAULT_TOPIC, "Kafka topic of shop events")
    items_topic: str = _knob(
        DEFAULT_ITEMS_TOPIC, "Kafka topic of product-attribute updates ('' reads none)", metavar="TOPIC"
    )
    catalogue_capacity: int = _knob(
        DEFAULT_CATALOGUE_CAPACITY, "items whose latest attributes are kept, at most"
    )
    group: str = _knob(DEFAULT_GROUP, "Kafka consumer group")
    batch_size: int = _knob(DEFAULT_BATCH_SIZE, "samples per training step")
    max_wait_s: float = _knob(DEFAULT_MAX_WAIT_S, "longest a sample waits for its batch to fill")
    queue_batches: int = _knob(DEFAULT_QUEUE_BATCHES, "encoded batches waiting for the trainer, at most")
    window_ms: int = _knob(
        DEFAULT_WINDOW_MS, "attribution window, in seconds", flag="--window", scale=1000, metavar="S"
    )
    max_pending_impressions: int = _knob(DEFAULT_MAX_PENDING, "impressions waiting in the join, at most")
    dedup_capacity: int = _knob(DEFAULT_DEDUP_CAPACITY, "event ids remembered for dedup")
    publish_interval_s: float = _knob(
        DEFAULT_PUBLISH_INTERVAL_S, "seconds between exported versions", flag="--publish-interval"
    )
    delta_interval_s: float = _knob(
        DEFAULT_DELTA_INTERVAL_S,
        "seconds between deltas (the rows learned since the last one), applied in place by serving "
        "between versions (0: full versions only)",
        flag="--delta-interval",
    )
    checkpoint_interval_s: float = _knob(
        DEFAULT_CHECKPOINT_INTERVAL_S, "seconds between checkpoints", flag="--checkpoint-interval"
    )
    min_samples_per_version: int = _knob(
        DEFAULT_MIN_SAMPLES_PER_VERSION, "new samples trained before the next version"
    )
    keep_versions: int = _knob(DEFAULT_KEEP_VERSIONS, "newest versions kept in the repository")
    fetch_max_records: int = _knob(DEFAULT_FETCH_MAX_RECORDS, "records per Kafka fetch, at most")
    outbox_max_bytes: int = _knob(
        DEFAULT_MAX_BYTES, "registry writes kept while PostgreSQL is away, at most (bytes)"
    )
    device: str = _knob("auto", "auto (CUDA when present), cpu or cuda[:N]")
    torch_threads: int = _knob(1, "torch intra-op threads", flag="--threads")
    ingest_workers: int = _knob(
        0,
        "processes that decode, clean and join records, by partition (0: all in the updater's "
        "process); one a free core, up to the partitions",
        metavar="N",
    )
    world_size: int = _knob(
        1,
        "updaters that train this model together, in lockstep over torch.distributed: each "
        "consumes the partitions p of --topic with p mod N = its --rank",
        metavar="N",
    )
    rank: int = _knob(
        0, "this updater's place in the group (0 holds the writer lease and publishes)", metavar="R"
    )
    group_init: str = _knob(
        "",
        "where the group's updaters meet: a torch.distributed init method, tcp://HOST:PORT of "
        "rank 0 (or file:///PATH on one host); needed with --world-size above 1",
        metavar="URL",
    )
    metrics_host: str = _knob(
        DEFAULT_METRICS_HOST,
        "address of the Prometheus metrics (/metrics) and the live dashboard (/); loopback unless "
        "asked (0.0.0.0: every interface, for a scraper on another host)",
        metavar="HOST",
    )
    metrics_port: int = _knob(DEFAULT_METRICS_PORT, "port of the metrics and the dashboard (0: off)")
    seed: int = _knob(0, "seed of the model's initial weights")
    sparse_lr: float = _knob(DEFAULT_SPARSE_LR, "learning rate of the embedding rows (SparseAdam)")
    dense_lr: float = _knob(DEFAULT_DENSE_LR, "learning rate of the dense layers (Adam)")
    # The gate: every holdout_every-th request is held out from training (0: none), the latest
    # holdout_window of them are kept, and each candidate is compared with the live version on
    # those impressed in the last holdout_recent_s seconds.
    holdout_every: int = _knob(
        DEFAULT_HOLDOUT_EVERY,
        "hold every N-th request out of training for the publishing gate (0 turns the comparison off)",
        metavar="N",
    )
    holdout_window: int = _knob(DEFAULT_HOLDOUT_WINDOW, "latest held-out samples kept, at most")
    holdout_recent_s: float = _knob(
        DEFAULT_RECENT_S,
        "the gate and the rollback judge on held-out impressions of the last S seconds "
        "(at least --gate-min-samples of the newest)",
        flag="--holdout-recent",
    )
    vocab_expire_s: float = _knob(
        DEFAULT_VOCAB_EXPIRE_S,
        "once a vocabulary is full, a new id takes the row of the least recently seen id if that "
        "one has been idle this long in event time (0: never; new ids then share one row)",
        flag="--vocab-expire",
        metavar="S",
    )
    measure_every: int = _knob(
        DEFAULT_MEASURE_EVERY,
        "score the impressions of every N-th trained request as they arrive, for the prequential "
        "metrics (0: score each sample when it is learned, with the start-up skew)",
        metavar="N",
    )
    warm_start: Path | None = _knob(  # noqa: RUF009
        None,
        "with no checkpoint in --state-dir, learn this file of contract events (JSON lines) before "
        "the first fetch; the first version published carries it",
        metavar="FILE",
    )
    model: RankerConfig = field(default_factory=RankerConfig, metadata={"prefix": "model"})
    gate: GateSettings = field(default_factory=GateSettings, metadata={"prefix": "gate"})
    timeouts: Timeouts = field(default_factory=Timeouts, metadata={"prefix": "timeout"})

    @property
    def vocab_expire_ms(self) -> int | None:
        """The vocabularies' expiry in ms, ``None`` for never."""
        return int(self.vocab_expire_s * 1000) or None

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        self.state_dir = Path(self.state_dir)
        if self.warm_start is not None:
            self.warm_start = Path(self.warm_start)
        for name in (
            "batch_size",
            "queue_batches",
            "window_ms",
            "max_pending_impressions",
            "dedup_capacity",
            "catalogue_capacity",
            "keep_versions",
            "fetch_max_records",
            "outbox_max_bytes",
            "torch_threads",
            "min_samples_per_version",
            "holdout_window",
        ):
            _positive(name, getattr(self, name), integer=True)
        for name in (
            "max_wait_s",
            "publish_interval_s",
            "checkpoint_interval_s",
            "sparse_lr",
            "dense_lr",
            "holdout_recent_s",
        ):
            _positive(name, getattr(self, name))
        if not isinstance(self.holdout_every, int) or self.holdout_every < 0 or self.holdout_every == 1:
            raise ConfigError(
                f"expected holdout_every to be 0 (off) or an integer >= 2, got {self.holdout_every!r}"
            )
        for name in ("world_size", "rank"):
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (1 if name == "world_size" else 0)
            ):
                raise ConfigError(
                    f"expected {name} to be an integer >= {int(name == 'world_size')}, got {value!r}"
                )
        if (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not (0 <= self.metrics_port <= 65535)
        ):
            raise ConfigError(
                f"expected metrics_port to be 0 (off) or a port number, got {self.metrics_port!r}"
            )
        if self.rank >= self.world_size:
            raise ConfigError(f"expected rank < world_size, got rank {self.rank} of {self.world_size}")
        if self.world_size > 1 and self.warm_start is not None:
            raise ConfigError(
                "expected no --warm-start with --world-size above 1 (not supported in a group yet)"
            )
        if self.world_size > 1 and not self.group_init:
            raise ConfigError(
                "expected --group-init (where the group's updaters meet) with --world-size above 1"
            )
        workers = self.ingest_workers
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ConfigError(f"expected ingest_workers to be 0 (in process) or more, got {workers!r}")
        if (
            not isinstance(self.measure_every, int)
            or isinstance(self.measure_every, bool)
            or self.measure_every < 0
        ):
            raise ConfigError(
                f"expected measure_every to be 0 (off) or a positive integer, got {self.measure_every!r}"
            )
        delta = self.delta_interval_s
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not delta >= 0:
            raise ConfigError(f"expected delta_interval_s >= 0 (0: no deltas), got {delta!r}")
        expire = self.vocab_expire_s
        if isinstance(expire, bool) or not isinstance(expire, int | float) or not expire >= 0:
            raise ConfigError(f"expected vocab_expire_s >= 0 (0: never), got {expire!r}")
        if self.items_topic == self.topic:
            raise ConfigError(
                f"expected an items topic other than the events topic, got {self.items_topic!r}"
            )
        if ":" not in self.bootstrap:
            raise ConfigError(f"expected bootstrap as HOST:PORT, got {self.bootstrap!r}")
        if not self.pg_dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"expected a postgresql:// DSN, got {self.pg_dsn!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"expected device auto, cpu or cuda[:N], got {self.device!r}")
        if not self.model_name or not self.model_name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"expected model_name of letters, digits, '-' and '_', got {self.model_name!r}")


# --------------------------------------------------------------------------- command line

# Help for the fields of settings that live with their own package (the model, the gate).
_HELP = {
    "model__user_capacity": "embedding rows for users (2 reserved)",
    "model__token_capacity": "embedding rows for query tokens",
    "model__item_capacity": "embedding rows for items",
    "model__category_capacity": "embedding rows for categories",
    "model__brand_capacity": "embedding rows for brands",
    "model__dim": "embedding width",
    "model__hidden": "hidden units of the MLP",
    "model__max_tokens": "query tokens read per request",
    "model__text_dim": "width of the frozen text vectors (the shipped word table's); 0: no text tower",
    "model__item_dropout": "share of training rows that learn as if their item were new (cold start)",
    "model__prior_ctr": "click rate the output bias starts from",
    "gate__auc_margin": "reject a candidate whose held-out AUC is below the live one's by more (paired)",
    "gate__logloss_margin": "reject a candidate whose held-out logloss is above the live one's by more",
    "gate__confidence": "one-sided confidence the paired difference must pass the margin at",
    "gate__min_samples": "held-out samples needed before the gate compares",
    "gate__rollback_auc_drop": "roll back when the live AUC falls this far below an earlier version's",
    "gate__rollback_history": "earlier served versions kept as rollback targets",
    "gate__check_interval_s": "seconds between judgements of the served state (live version + deltas)",
    "gate__check_auc_margin": "hold serving when the served state's AUC is below the live version's by more",
    "gate__check_logloss_margin": "hold serving when its logloss is above the live version's by more",
}


def _flag(f: Any, prefix: str) -> str:
    if "flag" in f.metadata:
        return str(f.metadata["flag"])
    name = f.name.replace("_", "-")
    return f"--{prefix}-{name}" if prefix else f"--{name}"


def _dest(f: Any, prefix: str) -> str:
    return f"{prefix}__{f.name}" if prefix else f.name


def _parse_type(f: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if "Path" in kind:
        return Path
    if "float" in kind:
        return float
    if "int" in kind:
        return float if "scale" in f.metadata else int
    return str


def add_arguments(parser: argparse.ArgumentParser, cls: type = UpdaterSettings, prefix: str = "") -> None:
    """One flag per settings field (nested settings get their prefix), defaults from the fields."""
    group = parser.add_argument_group(f"{prefix} settings") if prefix else parser
    for f in fields(cls):
        if f.metadata.get("prefix"):
            nested = f.default_factory if f.default_factory is not MISSING else None
            assert nested is not None and is_dataclass(nested)
            add_arguments(parser, nested, str(f.metadata["prefix"]))
            continue
        required = f.default is MISSING and f.default_factory is MISSING
        kwargs: dict[str, Any] = {"dest": _dest(f, prefix), "type": _parse_type(f)}
        kind = kwargs["type"]
        default_metavar = {int: "N", float: "S" if f.name.endswith("_s") else "X", Path: "DIR"}.get(
            kind, "TEXT"
        )
        kwargs["metavar"] = f.metadata.get("metavar", default_metavar)
        help_text = f.metadata.get("help", _HELP.get(kwargs["dest"], ""))
        if f.metadata.get("append"):
            kwargs["action"] = "append"
        if required:
            kwargs["required"] = True
        else:
            default = f.default
            shown = (
                default / f.metadata["scale"] if "scale" in f.metadata and default is not None else default
            )
            kwargs["default"] = shown
            help_text = f"{help_text} (default {shown})" if help_text else f"default {shown}"
        group.add_argument(_flag(f, prefix), help=help_text, **kwargs)


def _values(args: argparse.Namespace, cls: type, prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("prefix"):
            nested = f.default_factory
            assert is_dataclass(nested)
            values[f.name] = nested(**_values(args, nested, str(f.metadata["prefix"])))
            continue
        value = getattr(args, _dest(f, prefix))
        if f.metadata.get("append") and isinstance(value, list):
            value = ",".join(value)
        if "scale" in f.metadata and value is not None:
            value = round(value * f.metadata["scale"])
        values[f.name] = value
    return values


def from_arguments(args: argparse.Namespace) -> UpdaterSettings:
    """The settings a parser built by :func:`add_arguments` parsed (validated)."""
    return UpdaterSettings(**_values(args, UpdaterSettings, ""))
