"""Vocabularies smaller than the ids a stream brings: what the expiry of idle ids is worth.

freshrank's learner (the quality benchmark's protocol: each sample scored at its impression,
learned when its label is known) on the simulator's stream (seed 7) and on the Diginetica
replay, with user and item vocabularies a half and a third of the ids they bring, under
several expiries: none (new ids share row 1 once the vocabulary is full), 0 (plain LRU), and
idle times up to a day of event time; and with full capacity, for the ceiling.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from freshrank.bench.common import Progress, labelled
from freshrank.bench.quality import METRIC_WINDOW_MS, RETRAIN_EVERY_MS, STATIC_FRACTION, _simulated, compare
from freshrank.bench.replay import diginetica_stream, periods
from rankcore.features import DEFAULT_VOCAB_EXPIRE_S
from rankcore.model import RankerConfig
from updater.joiner import DEFAULT_WINDOW_MS

SEED = 7
# (stream, capacities): about half of the simulator's ids, a third of Diginetica's.
CAPACITIES = {
    "simulator": {"user_capacity": 1_500, "item_capacity": 850},
    "diginetica": {"user_capacity": 1_500, "item_capacity": 20_000},
}
EXPIRIES_S: tuple[float | None, ...] = (None, 0.0, 30.0, 120.0, DEFAULT_VOCAB_EXPIRE_S, 86_400.0)


def _label(expire_s: float | None) -> str:
    return "never" if expire_s is None else f"{expire_s:g}s"


def _run(
    samples: list[Any],
    config: RankerConfig,
    expire_s: float | None,
    retrain_ms: int,
    window_ms: int,
    progress: Progress,
) -> dict[str, Any]:
    expire_ms = None if expire_s is None else int(expire_s * 1000)
    result = compare(
        samples,
        Progress(progress.name, quiet=True),
        static_fraction=STATIC_FRACTION,
        retrain_every_ms=retrain_ms,
        metric_window_ms=window_ms,
        models=("freshrank",),
        config=config,
        vocab_expire_ms=expire_ms,
    )
    model = result["models"]["freshrank"]
    return {
        "auc_after_drift": model["after_drift"]["auc"],
        "auc_overall": model["overall"]["auc"],
        "vocab_sizes": model["vocab_sizes"],
        "evictions": model["vocab_evictions"],
    }


def stream_result(
    name: str, samples: list[Any], retrain_ms: int, window_ms: int, progress: Progress
) -> dict[str, Any]:
    capped = dataclasses.replace(RankerConfig(), **CAPACITIES[name])
    out: dict[str, Any] = {"samples": len(samples), "capacities": CAPACITIES[name], "expiry": {}}
    full = _run(samples, RankerConfig(), None, retrain_ms, window_ms, progress)
    out["full_capacity"] = full
    progress(f"{name}: full capacity, AUC after the drift {full['auc_after_drift']}")
    for expire_s in EXPIRIES_S:
        r = _run(samples, capped, expire_s, retrain_ms, window_ms, progress)
        out["expiry"][_label(expire_s)] = r
        progress(
            f"{name}: expiry {_label(expire_s)}, AUC after the drift {r['auc_after_drift']}, "
            f"evictions {r['evictions']}"
        )
    return out


def run(out: Path, progress: Progress) -> dict[str, Any]:
    result: dict[str, Any] = {"default_expire_s": DEFAULT_VOCAB_EXPIRE_S, "streams": {}}
    samples, _, _ = _simulated(SEED, progress)
    result["streams"]["simulator"] = stream_result(
        "simulator", samples, RETRAIN_EVERY_MS, METRIC_WINDOW_MS, progress
    )
    stream = diginetica_stream()
    if isinstance(stream, str):
        result["streams"]["diginetica"] = {"skipped": stream}
        return result
    samples, _ = labelled(stream[1], window_ms=DEFAULT_WINDOW_MS)
    impressions = [s.impression_ts_ms for s in samples]
    retrain_ms, window_ms = periods(max(impressions) - min(impressions))
    result["streams"]["diginetica"] = stream_result("diginetica", samples, retrain_ms, window_ms, progress)
    return result
