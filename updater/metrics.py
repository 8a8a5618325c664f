"""The updater's Prometheus metrics.

Counters and gauges are read off the updater's :class:`~updater.status.Status` at each scrape
(a custom collector, as exporters of existing state do: the status is the one place those
numbers live, so the metrics cannot drift from ``freshrank status``). What has a distribution
is observed as it happens, into histograms: freshness (action to the first answer of a state
that learned it) and the duration of each release stage.

Names follow Prometheus conventions: ``freshrank_`` prefix, base units (seconds, bytes),
``_total`` on counters, and labels only with bounded values (a dead letter's reason, a
dependency's name, a partition, a release stage). Counters start at zero with each process,
except where the status carries them from the registry (versions published).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from updater.source import parse_offset_key
from updater.status import Status

# Freshness spans a delta (under a second) to a version behind a stalled server (minutes).
FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGES = ("export", "gate", "load", "check")


class UpdaterMetrics:
    """One updater's registry: its status as counters and gauges, its histograms, and the
    process's CPU, memory and file descriptors (``process_*``)."""

    def __init__(self, status: Callable[[], Status | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.freshness = Histogram(
            "freshrank_freshness_seconds",
            "Seconds from a shopper's action to the first answer of a served state that learned it",
            buckets=FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "freshrank_release_stage_duration_seconds",
            "Seconds each release stage took: export (ONNX, parity check, version directory), gate "
            "(candidate against live on the held-out window), load (until the server answers with "
            "it), check (the served state between versions)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        for stage in STAGES:
            self.stage.labels(stage)  # every stage appears from the first scrape
        self.registry.register(StatusCollector(status))
        ProcessCollector(registry=self.registry)

    # The release manager's observer (exporter.release.ReleaseObserver).
    def stage_took(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def served_fresh(self, seconds: Sequence[float]) -> None:
        for s in seconds:
            self.freshness.observe(s)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above."""
        return generate_latest(self.registry)


class StatusCollector(Collector):
    """Counters and gauges from the newest :class:`Status` (none while the updater has not
    started: a standby waiting for the lease shows only that)."""

    def __init__(self, status: Callable[[], Status | None]) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the status; nothing to check them against up front

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        writer = GaugeMetricFamily(
            "freshrank_writer", "1 while this updater holds the writer lease (or trains in a group)"
        )
        writer.add_metric([], 0 if s is None else 1)
        yield writer
        if s is None:
            return
        yield from _counters(s)
        yield from _gauges(s)


def _counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value or 0)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _counters(s: Status) -> Iterator[Metric]:
    yield _counter("freshrank_events_consumed", "Records read from the events topic", s.events_consumed)
    yield _counter("freshrank_events_valid", "Events that passed validation", s.events_valid)
    yield _counter("freshrank_events_duplicate", "Events dropped as duplicates (same event_id)", s.duplicates)
    yield _counter(
        "freshrank_item_updates_consumed",
        "Records read from the items topic",
        s.catalogue.get("updates_consumed"),
    )
    dead = CounterMetricFamily(
        "freshrank_dead_letters", "Records kept as dead letters, by reason", labels=["reason"]
    )
    for reason, n in sorted(s.dead_letters_by_reason.items()):
        dead.add_metric([reason], n)
    yield dead
    yield _counter("freshrank_samples_trained", "Labelled samples learned", s.samples_trained)
    yield _counter(
        "freshrank_positive_samples_trained", "Samples learned with a click or more", s.positives_trained
    )
    yield _counter("freshrank_held_out_samples", "Samples held out of training for the gate", s.held_out)
    yield _counter("freshrank_checkpoints", "Checkpoints written", s.checkpoints)
    yield _counter(
        "freshrank_versions_published",
        "Model versions published (the registry's count)",
        s.versions_published,
    )
    yield _counter(
        "freshrank_versions_rejected",
        "Candidate versions the gate or the ONNX parity check rejected",
        s.versions_rejected,
    )
    yield _counter("freshrank_rollbacks", "Rollbacks to an earlier version", s.rollbacks)
    yield _counter(
        "freshrank_release_failures",
        "Releases that failed (retried with the next snapshot)",
        s.export_failures,
    )
    yield _counter(
        "freshrank_backpressure_pauses",
        "Times the consumer paused its partitions for the trainer",
        s.backpressure_pauses,
    )
    d = s.deltas
    yield _counter(
        "freshrank_deltas_written", "Deltas (rows learned between versions) written", d.get("written")
    )
    yield _counter(
        "freshrank_serving_checks", "Judgements of the served state between versions", d.get("checks")
    )
    yield _counter(
        "freshrank_serving_checks_failed",
        "Judgements of the served state that failed",
        d.get("checks_failed"),
    )
    yield _counter("freshrank_serving_holds", "Holds put on serving (deltas stopped)", d.get("holds"))
    outages = CounterMetricFamily(
        "freshrank_dependency_outages", "Times a dependency became unavailable", labels=["dependency"]
    )
    for name, dep in sorted(s.dependencies.items()):
        outages.add_metric([name], dep.get("outages") or 0)
    yield outages
    evictions = CounterMetricFamily(
        "freshrank_vocabulary_evictions",
        "Ids that gave their row to a new id, by feature",
        labels=["feature"],
    )
    for feature, n in sorted(s.vocab_evictions.items()):
        evictions.add_metric([feature], n)
    yield evictions


def _gauges(s: Status) -> Iterator[Metric]:
    info = InfoMetricFamily("freshrank_updater", "This updater")
    group = s.group or {}
    info.add_metric(
        [],
        {
            "device": s.device,
            "rank": str(group.get("rank", 0)),
            "world_size": str(group.get("world_size", 1)),
        },
    )
    yield info
    lag = GaugeMetricFamily(
        "freshrank_consumer_lag_records",
        "Records on the broker not yet consumed, by partition (from the last fetch's high watermark)",
        labels=["topic", "partition"],
    )
    for key, n in sorted(s.consumer_lag_by_partition.items()):
        tp = parse_offset_key(key)
        lag.add_metric([tp.topic, str(tp.partition)], n)
    yield lag
    yield _gauge(
        "freshrank_consumer_paused", "1 while the consumer's partitions are paused", int(s.consumer_paused)
    )
    yield _gauge(
        "freshrank_prequential_auc",
        "AUC of each batch scored before it was learned (recent window)",
        s.prequential_auc,
    )
    yield _gauge(
        "freshrank_prequential_logloss",
        "Logloss of each batch scored before it was learned",
        s.prequential_logloss,
    )
    h = s.served_holdout
    yield _gauge("freshrank_holdout_auc", "AUC of what serves on the latest held-out window", h.get("auc"))
    yield _gauge(
        "freshrank_holdout_logloss", "Logloss of what serves on the latest held-out window", h.get("logloss")
    )
    yield _gauge("freshrank_served_version", "The model version the server answers with", s.served_version)
    yield _gauge("freshrank_live_version", "The version the gate judges candidates against", s.live_version)
    yield _gauge(
        "freshrank_serving_held",
        "1 while serving is held at a version (deltas stopped)",
        int(bool(s.deltas.get("held"))),
    )
    yield _gauge(
        "freshrank_serving_pinned",
        "1 while an operator pins the served version",
        int(s.serving.get("mode") == "pinned"),
    )
    o = s.registry_outbox
    yield _gauge(
        "freshrank_registry_outbox_records", "Registry writes waiting for PostgreSQL", o.get("pending")
    )
    yield _gauge(
        "freshrank_registry_outbox_bytes", "Bytes of registry writes waiting for PostgreSQL", o.get("bytes")
    )
    up = GaugeMetricFamily(
        "freshrank_dependency_up", "1 while a dependency answers, 0 while it does not", labels=["dependency"]
    )
    for name, dep in sorted(s.dependencies.items()):
        if dep.get("ok") is not None:
            up.add_metric([name], int(bool(dep["ok"])))
    yield up
    yield _gauge(
        "freshrank_pending_impressions",
        "Impressions waiting in the join for their window to close",
        s.pending_impressions,
    )
    yield _gauge(
        "freshrank_trainer_queue_batches", "Encoded batches waiting for the trainer", s.queue_batches
    )
    yield _gauge("freshrank_holdout_window_samples", "Held-out samples the gate judges on", s.holdout_samples)
    yield _gauge(
        "freshrank_catalogue_items", "Items whose latest attributes are kept", s.catalogue.get("items")
    )
    vocab = GaugeMetricFamily("freshrank_vocabulary_ids", "Ids with a row, by feature", labels=["feature"])
    for feature, n in sorted(s.vocab_sizes.items()):
        vocab.add_metric([feature], n)
    yield vocab
