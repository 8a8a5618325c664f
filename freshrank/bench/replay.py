"""The quality comparison on public logs: Diginetica and The Complete Journey.

Both logs are turned into events of the contract by :mod:`freshrank.replay` (positives from
the log, sampled negatives), labelled through the updater's consumer path
(:class:`updater.ingest.Ingest`), and handed to :func:`freshrank.bench.quality.compare`. Their
streams span days of shop time, so the retrain period and the metric windows are fractions of
each stream's span rather than fixed minutes.
A dataset that is not available is reported as skipped, with the reason; it never fails the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from freshrank.bench.common import Progress, labelled, save_figure
from freshrank.bench.quality import STATIC_FRACTION, close_figure, compare, new_figure, plot_auc
from rankcore.errors import ConfigError
from updater.joiner import DEFAULT_WINDOW_MS

START_MS = 1_700_000_000_000
DIGINETICA_ENV = "FRESHRANK_DIGINETICA"
DIGINETICA_DEFAULT = Path("../shared/data/diginetica")
# Baskets of The Complete Journey replayed: about 100 labelled samples each, so ~100k samples,
# which keeps the whole replay benchmark within about 6 minutes on two cores.
COMPLETE_JOURNEY_BASKETS = 1_000
# A handful of retrains and two dozen metric windows per stream, whatever its span.
RETRAINS = 6
WINDOWS = 24


def periods(span_ms: int) -> tuple[int, int]:
    """(retrain period, metric window) in ms for a stream of ``span_ms``: about ``RETRAINS``
    retrains and ``WINDOWS`` windows, at least 1 s each."""
    return max(span_ms // (RETRAINS + 1), 1_000), max(span_ms // WINDOWS, 1_000)


def evaluate(
    name: str, make_events: Callable[[], Iterator[dict[str, Any]]], progress: Progress
) -> dict[str, Any]:
    """Label one dataset's events and compare the models on them."""
    started = time.perf_counter()
    samples, counts = labelled(make_events(), window_ms=DEFAULT_WINDOW_MS)
    took = time.perf_counter() - started
    progress(f"{name}: {counts['events']:,} events -> {len(samples):,} samples in {took:.1f} s")
    if not samples:
        return {"skipped": "the replay produced no labelled samples", "stream": counts}
    impressions = [s.impression_ts_ms for s in samples]
    retrain_every_ms, window_ms = periods(max(impressions) - min(impressions))
    result = compare(
        samples,
        progress,
        static_fraction=STATIC_FRACTION,
        retrain_every_ms=retrain_every_ms,
        metric_window_ms=window_ms,
    )
    return {"stream": {"attribution_window_ms": DEFAULT_WINDOW_MS, **counts}, **result}


def diginetica_stream() -> tuple[Path, Any] | str:
    """Diginetica's events from ``$FRESHRANK_DIGINETICA`` (default ``../shared/data/diginetica``)
    with their directory, or why there are none."""
    directory = Path(os.environ.get(DIGINETICA_ENV, str(DIGINETICA_DEFAULT)))
    if not directory.is_dir():
        return f"no Diginetica directory at {directory} (set {DIGINETICA_ENV})"
    from freshrank.replay import diginetica_events

    try:
        # Reads and checks the files before the first event, so a bad directory fails here.
        return directory, diginetica_events(directory, start_ms=START_MS)
    except ConfigError as exc:
        return str(exc)


def diginetica(progress: Progress) -> dict[str, Any]:
    """Diginetica (see :func:`diginetica_stream`)."""
    stream = diginetica_stream()
    if isinstance(stream, str):
        return {"skipped": stream}
    directory, events = stream
    return {"directory": str(directory), **evaluate("diginetica", lambda: events, progress)}


def complete_journey(progress: Progress) -> dict[str, Any]:
    """The first ``COMPLETE_JOURNEY_BASKETS`` baskets of The Complete Journey."""
    from freshrank.replay import complete_journey_events, load_complete_journey

    try:
        transactions, products = load_complete_journey(COMPLETE_JOURNEY_BASKETS)
    except ConfigError as exc:
        return {"skipped": str(exc)}
    progress(f"complete journey: {len(transactions):,} transactions of {COMPLETE_JOURNEY_BASKETS:,} baskets")
    result = evaluate(
        "complete journey",
        lambda: complete_journey_events(transactions, products, start_ms=START_MS),
        progress,
    )
    return {"baskets": COMPLETE_JOURNEY_BASKETS, **result}


def run(out: Path, progress: Progress) -> dict[str, Any]:
    """Both datasets; writes ``replay.png`` with one panel per dataset that ran."""
    datasets = {"diginetica": diginetica(progress), "complete_journey": complete_journey(progress)}
    for name, result in datasets.items():
        if "skipped" in result:
            progress(f"{name}: skipped ({result['skipped']})")
    ran = {name: r for name, r in datasets.items() if "skipped" not in r}
    figure = None
    if ran:
        fig, axes = new_figure(len(ran))
        for ax, (name, result) in zip(axes, ran.items(), strict=True):
            plot_auc(ax, result, f"Prequential AUC, {name.replace('_', ' ')} replay")
        fig.tight_layout()
        figure = save_figure(fig, out, "replay")
        close_figure(fig)
    return {"datasets": datasets, "figure": figure}
