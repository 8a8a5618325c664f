"""What the benchmarks share: progress lines, percentiles, results on disk, offline streams."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from freshrank.progress import Bar, Bars
from freshrank.simulator import encode_event
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from updater.ingest import Ingest, Record


class Progress:
    """Timestamped progress lines on stderr, so long benchmarks show what they are doing, and
    bars (rate, time left) for their long loops when ``bars`` draws (a terminal, no --json)."""

    def __init__(self, name: str, quiet: bool = False, bars: Bars | None = None) -> None:
        self.name = name
        self.quiet = quiet
        self.bars = bars or Bars(quiet=True)
        self.started = time.monotonic()

    def bar(self, description: str, total: float | None, unit: str = "samples") -> Bar:
        return self.bars.add(f"{self.name}: {description}", total=total, unit=unit)

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{self.name} {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def bar(progress: Callable[[str], None], description: str, total: float | None, unit: str = "samples") -> Bar:
    """A bar of ``progress`` when it is a :class:`Progress`; one that draws nothing for any other
    callable (the functions the benchmarks share also take a plain one)."""
    if isinstance(progress, Progress):
        return progress.bar(description, total, unit)
    return Bars(quiet=True).add(description, total, unit)


def percentiles(values: Iterable[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(np.percentile(arr, q)), 4) for q in qs}


def machine() -> dict[str, Any]:
    """Where a result was measured."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def write_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


# Small enough that what a benchmark (or an end-to-end test) measures is not the model's size.
SMALL_MODEL = RankerConfig(
    user_capacity=2_000,
    token_capacity=500,
    item_capacity=2_000,
    category_capacity=50,
    brand_capacity=50,
    dim=8,
    hidden=16,
)


def request_columns(n: int) -> dict[str, np.ndarray]:
    """One request of the serving contract: a user and a query over ``n`` candidates."""
    return {
        "user_id": np.array([b"u1"] * n, dtype=object),
        "query": np.array([b"red shoes"] * n, dtype=object),
        "item_id": np.array([f"i{i}".encode() for i in range(n)], dtype=object),
        "category": np.array([b"shoes"] * n, dtype=object),
        "brand": np.array([b"acme"] * n, dtype=object),
        "price": np.full(n, 20.0, dtype=np.float32),
    }


EVENTS_TOPIC = "bench"
ITEMS_TOPIC = "bench-items"


def labelled(events: Iterable[dict[str, Any]], window_ms: int) -> tuple[list[Sample], dict[str, int]]:
    """Samples of an event stream in stream order, through the updater's own consumer path.

    The clock is the stream's: each event is judged at its own timestamp, so an offline stream
    joins exactly as it would have live. Item updates (``{"__item__": value}``, as
    :func:`freshrank.simulator.generate` yields them with ``items=True``) go to the catalogue,
    as records of the items topic would.
    """
    wall_ms = int(time.time() * 1000)

    def record(e: dict[str, Any]) -> tuple[bytes, int, str]:
        now_ms = int(e["ts"]) if isinstance(e.get("ts"), int) else wall_ms
        if "__item__" in e:
            return e["__item__"], now_ms, ITEMS_TOPIC
        return encode_event(e)[1], now_ms, EVENTS_TOPIC

    return labelled_records((record(e) for e in events), window_ms)


def labelled_records(
    records: Iterable[tuple[bytes, int] | tuple[bytes, int, str]], window_ms: int
) -> tuple[list[Sample], dict[str, int]]:
    """Samples of raw record values, each judged at its ``now_ms``, through :class:`Ingest`.

    The updater's own consumer path (ledger, cleaner, joiner, catalogue), one record per call so
    each is judged at its own time; the open windows are drained at the end of the stream. A
    record may name its topic (:data:`ITEMS_TOPIC` for item updates; events by default).
    """
    ingest = Ingest(window_ms=window_ms, items_topic=ITEMS_TOPIC)
    samples: list[Sample] = []
    offsets: dict[str, int] = {}
    for raw, now_ms, *topic in records:
        name = topic[0] if topic else EVENTS_TOPIC
        offset = offsets[name] = offsets.get(name, -1) + 1
        record = Record(topic=name, partition=0, offset=offset, key=None, value=raw)
        samples.extend(ingest.process([record], now_ms).trained)
    samples.extend(ingest.drain().trained)
    counts = ingest.counts
    return samples, {
        "events": counts.events_consumed,
        "rejected": counts.dead_letters,
        "duplicates": counts.duplicates,
        "samples": len(samples),
        "item_updates": counts.item_updates_valid,
    }


def save_figure(fig: Any, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path)
