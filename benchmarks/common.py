"""What the benchmarks share: progress lines, percentiles, results on disk, offline streams."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from freshrank.simulator import encode_event
from rankcore.events import Event, Rejection
from rankcore.sample import Sample
from updater.clean import Cleaner
from updater.joiner import Joiner


class Progress:
    """Timestamped progress lines on stderr, so long benchmarks show what they are doing."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{self.name} {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


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


def labelled(events: Iterable[dict[str, Any]], window_ms: int) -> tuple[list[Sample], dict[str, int]]:
    """Samples of an event stream in stream order, through the updater's own cleaner and joiner.

    The clock is the stream's: each event is judged at its own timestamp, so an offline stream
    joins exactly as it would have live.
    """
    wall_ms = int(time.time() * 1000)
    return labelled_records(
        ((encode_event(e)[1], int(e["ts"]) if isinstance(e.get("ts"), int) else wall_ms) for e in events),
        window_ms,
    )


def labelled_records(
    records: Iterable[tuple[bytes, int]], window_ms: int
) -> tuple[list[Sample], dict[str, int]]:
    """Samples of raw record values, each judged at its ``now_ms``: the updater's per-record steps."""
    cleaner = Cleaner()
    joiner = Joiner(window_ms=window_ms)
    samples: list[Sample] = []
    counts = {"events": 0, "rejected": 0}
    for raw, now_ms in records:
        counts["events"] += 1
        result = cleaner.clean(raw, now_ms)
        if isinstance(result, Event):
            joined = joiner.add(result, now_ms)
            if isinstance(joined, Rejection):
                counts["rejected"] += 1
            else:
                samples.extend(joined)
        elif isinstance(result, Rejection):
            counts["rejected"] += 1
        if counts["events"] % 256 == 0:
            samples.extend(joiner.expire())
    samples.extend(joiner.expire())
    samples.extend(joiner.drain())
    counts["duplicates"] = cleaner.duplicates
    counts["samples"] = len(samples)
    return samples, counts


def save_figure(fig: Any, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path)
