"""Prequential AUC and logloss over stream time: freshrank against a static model, periodic
retraining, Vowpal Wabbit and River, on the same drifting stream.

Every model sees the same labelled samples in the same order — the order in which their
labels become known, which is the order :func:`benchmarks.common.labelled` returns — and is
scored on each sample before it may learn from it (test-then-train):

- ``static``: the updater's model and learner, learning during the first ``static_fraction``
  of stream time, then scoring only, its vocabularies frozen (new ids share the OOV row).
- ``retrain``: a fresh model trained from scratch every ``retrain_every_ms`` of stream time
  on every sample known so far (``epochs`` shuffled passes; optionally only the most recent
  ``retrain_recent_ms``), which then scores the next period, vocabularies frozen. Before the
  first retrain there is nothing to train on: an untrained model scores.
- ``freshrank``: the updater's learner with its defaults (``RankerConfig()``, batches of
  ``DEFAULT_BATCH_SIZE``, vocabularies growing); ``Learner.learn`` returns the scores it gave
  before the update, so this is exactly what the updater does.
- ``vw``: Vowpal Wabbit online logistic regression, hashed features, ``-q ui -q qi``;
  predict then learn, one sample at a time.
- ``river``: River's factorisation machine (``facto.FMClassifier``), one-hot features;
  ``predict_proba_one`` then ``learn_one``. River 0.23's ``LogisticRegression.learn_one``
  costs O(every weight ever seen) per sample (fixed upstream in online-ml/river#1913): with
  interaction features it fell to about 100 samples/s here, so the FM, which learns its
  pairwise interactions itself from the plain one-hot features, stands in for it.

Metrics are computed per window of stream time by the sample's impression time. "After the
drift" is every sample whose impression comes after the static model stopped learning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, labelled, save_figure
from freshrank.simulator import SimulatorConfig, generate
from updater.batcher import DEFAULT_BATCH_SIZE, Batch, Vocabularies, encode
from updater.joiner import DEFAULT_WINDOW_MS, Sample
from updater.learner import Learner
from updater.metrics import auc, logloss
from updater.model import RankerConfig

# The simulated stream: 12 minutes of stream time, about 200k labelled samples. The rate is
# low enough that the trends (90 s period) and launches (every 4 s) move within few samples.
SEED = 7
RATE = 330.0
DURATION_S = 720.0
START_MS = 1_700_000_000_000
STATIC_FRACTION = 0.25
RETRAIN_EVERY_MS = 120_000
RETRAIN_EPOCHS = 2
METRIC_WINDOW_MS = 30_000

MODELS = ("static", "retrain", "freshrank", "vw", "river")
# The targets: freshrank beats the static model by this much AUC after the drift...
TARGET_AUC_GAIN_OVER_STATIC = 0.05
# ...and is at least as good as each of these.
AT_LEAST_AS_GOOD_AS = ("retrain", "vw", "river")

VW_ARGS = "--loss_function logistic --link logistic -b 22 -q ui -q qi --quiet"
# River FM: plain SGD at 0.05 for weights and latents (River's default optimisers learned
# far slower on this sparse one-hot data; chosen on a different simulator seed).
RIVER_FACTORS = 8
RIVER_LR = 0.05


# --------------------------------------------------------------------------- pure logic


def boundary_index(impression_ms: np.ndarray, at_ms: float) -> int:
    """Index of the first sample whose impression is at ``at_ms`` or later (``len`` if none).

    Samples come in the order their labels became known, so every sample before this index
    has an earlier impression, and every sample with an impression from ``at_ms`` on comes
    at or after it: a model switched here never scores those with anything learned from them.
    """
    late = np.flatnonzero(impression_ms >= at_ms)
    return int(late[0]) if late.size else len(impression_ms)


def retrain_times(start_ms: int, end_ms: int, every_ms: int) -> list[int]:
    """Stream times at which the ``retrain`` baseline trains a fresh model: every
    ``every_ms`` after ``start_ms``, strictly before ``end_ms``."""
    if every_ms <= 0:
        raise ValueError(f"expected a positive retrain period, got {every_ms!r} ms")
    return list(range(start_ms + every_ms, end_ms, every_ms))


def segments(impression_ms: np.ndarray, times: Sequence[int]) -> list[tuple[int, int]]:
    """``[begin, end)`` index ranges scored by one model each: before the first time, then
    from each time to the next (empty ranges are kept, so there is one per model)."""
    cuts = [0, *(boundary_index(impression_ms, t) for t in times), len(impression_ms)]
    return [(cuts[k], max(cuts[k], cuts[k + 1])) for k in range(len(cuts) - 1)]


def region_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """AUC and logloss over the scored samples (finite scores) where ``mask`` holds."""
    keep = mask & np.isfinite(scores)
    n = int(keep.sum())
    if n == 0:
        return {"n": 0, "positives": 0, "auc": None, "logloss": None}
    s, y = scores[keep], labels[keep]
    return {
        "n": n,
        "positives": int(y.sum()),
        "auc": _rounded(auc(s, y)),
        "logloss": _rounded(logloss(s, y)),
    }


def windowed_metrics(
    impression_ms: np.ndarray, scores: np.ndarray, labels: np.ndarray, origin_ms: int, window_ms: int
) -> list[dict[str, Any]]:
    """AUC and logloss per window of ``window_ms`` of stream time, by impression time.

    Windows are numbered from ``origin_ms``; every window up to the last impression is listed,
    with ``auc``/``logloss`` None where it holds no scored sample (or one class only, for AUC).
    """
    if window_ms <= 0:
        raise ValueError(f"expected a positive metric window, got {window_ms!r} ms")
    if len(impression_ms) == 0:
        return []
    index = (impression_ms - origin_ms) // window_ms
    out = []
    for w in range(int(index.max()) + 1):
        row = region_metrics(scores, labels, index == w)
        out.append({"start_s": w * window_ms / 1000, **row})
    return out


def target_report(after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's targets, met or not, with the AUCs after the drift they compare."""
    fresh = after["freshrank"]["auc"]
    out: dict[str, dict[str, Any]] = {}
    static = after["static"]["auc"]
    gain = None if fresh is None or static is None else round(fresh - static, 4)
    out["freshrank_beats_static_by_0.05_auc"] = {
        "met": gain is not None and gain >= TARGET_AUC_GAIN_OVER_STATIC,
        "freshrank_auc": fresh,
        "static_auc": static,
        "delta": gain,
        "needed": TARGET_AUC_GAIN_OVER_STATIC,
    }
    for other in AT_LEAST_AS_GOOD_AS:
        theirs = after.get(other, {}).get("auc")
        delta = None if fresh is None or theirs is None else round(fresh - theirs, 4)
        out[f"freshrank_at_least_{other}"] = {
            "met": delta is not None and delta >= 0,
            "freshrank_auc": fresh,
            f"{other}_auc": theirs,
            "delta": delta,
        }
    return out


def _rounded(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 4)


# --------------------------------------------------------------------------- the models


@dataclass
class Run:
    """One model's scores over the stream (NaN where it did not score) and its wall time."""

    scores: np.ndarray
    wall_s: float
    notes: dict[str, Any]


def _take(batch: Batch, rows: np.ndarray) -> Batch:
    return Batch(
        user=batch.user[rows],
        tokens=batch.tokens[rows],
        item=batch.item[rows],
        category=batch.category[rows],
        brand=batch.brand[rows],
        price=batch.price[rows],
        label=batch.label[rows],
        action_ts_ms=batch.action_ts_ms[rows],
    )


def _score_frozen(learner: Learner, samples: list[Sample], vocabs: Vocabularies, out: np.ndarray) -> None:
    """Score ``samples`` into ``out`` without learning or growing the vocabularies."""
    step = 4096
    for i in range(0, len(samples), step):
        batch = encode(samples[i : i + step], vocabs, learner.config.max_tokens, grow=False)
        out[i : i + len(batch)] = learner.score(batch)


def run_online(
    samples: list[Sample],
    progress: Progress,
    *,
    learn_until: int | None = None,
    config: RankerConfig | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    seed: int = 0,
) -> Run:
    """freshrank (``learn_until=None``) or the static model (learns ``samples[:learn_until]``).

    The static model scores the rest with ``Learner.score`` and frozen vocabularies.
    """
    config = config or RankerConfig()
    scores = np.full(len(samples), np.nan)
    started = time.perf_counter()
    learner = Learner(config, device=device, seed=seed)
    vocabs = Vocabularies(config)
    until = len(samples) if learn_until is None else learn_until
    report = next_report = max(len(samples) // 4, 1)
    for i in range(0, until, batch_size):
        chunk = samples[i : min(i + batch_size, until)]
        scores[i : i + len(chunk)] = learner.learn(encode(chunk, vocabs, config.max_tokens))
        if i + len(chunk) >= next_report:
            progress(f"  {i + len(chunk):,}/{len(samples):,} samples learned")
            next_report += report
    _score_frozen(learner, samples[until:], vocabs, scores[until:])
    wall = time.perf_counter() - started
    return Run(scores, wall, {"learned": until, "steps": learner.steps, "vocab_sizes": vocabs.sizes()})


def run_retrain(
    samples: list[Sample],
    progress: Progress,
    spans: list[tuple[int, int]],
    *,
    impression_ms: np.ndarray,
    times: Sequence[int],
    epochs: int = RETRAIN_EPOCHS,
    recent_ms: int | None = None,
    config: RankerConfig | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    seed: int = 0,
) -> Run:
    """A fresh model per span: trained from scratch on ``samples[:begin]`` (the most recent
    ``recent_ms`` of them when given), ``epochs`` shuffled passes, then scoring the span."""
    config = config or RankerConfig()
    scores = np.full(len(samples), np.nan)
    started = time.perf_counter()
    trainings = []
    for k, (begin, end) in enumerate(spans):
        learner = Learner(config, device=device, seed=seed)
        vocabs = Vocabularies(config)
        t0 = time.perf_counter()
        rows = np.arange(begin)
        if k and recent_ms is not None:
            rows = rows[impression_ms[:begin] >= times[k - 1] - recent_ms]
        if rows.size:
            train = encode([samples[r] for r in rows], vocabs, config.max_tokens)
            rng = np.random.default_rng(seed + k)
            for _ in range(epochs):
                order = rng.permutation(len(train))
                for i in range(0, len(order), batch_size):
                    learner.learn(_take(train, order[i : i + batch_size]))
        train_s = time.perf_counter() - t0
        _score_frozen(learner, samples[begin:end], vocabs, scores[begin:end])
        if k:
            trainings.append({"at_s": None, "trained_on": int(rows.size), "train_s": round(train_s, 1)})
            progress(f"  retrain {k}: {rows.size:,} samples x {epochs} epochs in {train_s:.1f} s")
    wall = time.perf_counter() - started
    return Run(scores, wall, {"retrains": trainings, "epochs": epochs, "recent_ms": recent_ms})


def _vw_token(value: str) -> str:
    """A feature name VW parses as one token: no spaces, bars or colons."""
    return value.replace(" ", "_").replace("|", "_").replace(":", "_").replace("\t", "_") or "_"


def vw_line(s: Sample) -> str:
    """One sample in VW's text format: user, query tokens, item/category/brand, log price."""
    label = 1 if s.label else -1
    query = " ".join(_vw_token(t) for t in s.query.split())
    price = math.log1p(max(s.price, 0.0))
    return (
        f"{label} |u {_vw_token(s.user_id)} |q {query} "
        f"|i i={_vw_token(s.item_id)} c={_vw_token(s.category)} b={_vw_token(s.brand)} |p lp:{price:.4f}"
    )


def run_vw(samples: list[Sample], progress: Progress, *, args: str = VW_ARGS, seed: int = 0) -> Run:
    """VW online logistic regression: parse once, predict, learn, per sample."""
    import vowpalwabbit

    scores = np.full(len(samples), np.nan)
    started = time.perf_counter()
    vw = vowpalwabbit.Workspace(f"{args} --random_seed {seed}")
    try:
        for n, s in enumerate(samples):
            example = vw.parse(vw_line(s))
            scores[n] = vw.predict(example)
            vw.learn(example)
            vw.finish_example(example)
    finally:
        vw.finish()
    return Run(scores, time.perf_counter() - started, {"args": args})


def river_features(s: Sample) -> dict[str, float]:
    """One-hot user, query tokens, item, category and brand, plus a scaled log price."""
    features = {
        f"u={s.user_id}": 1.0,
        f"i={s.item_id}": 1.0,
        f"c={s.category}": 1.0,
        f"b={s.brand}": 1.0,
        "log_price": math.log1p(max(s.price, 0.0)) / 5.0,
    }
    for token in s.query.split():
        features[f"q={token}"] = 1.0
    return features


def run_river(samples: list[Sample], progress: Progress, *, every: int = 1, seed: int = 0) -> Run:
    """River FM: ``predict_proba_one`` then ``learn_one`` on every ``every``-th sample.

    With ``every > 1`` River sees only those samples (the others stay unscored, NaN), a
    subsample that keeps the stream's order and mix; it is used only when the whole stream
    would not fit the time budget.
    """
    from river import facto, optim

    scores = np.full(len(samples), np.nan)
    started = time.perf_counter()
    model = facto.FMClassifier(
        n_factors=RIVER_FACTORS,
        weight_optimizer=optim.SGD(RIVER_LR),
        latent_optimizer=optim.SGD(RIVER_LR),
        seed=seed,
    )
    report = max(len(samples) // 4, 1)
    for n in range(0, len(samples), every):
        s = samples[n]
        x = river_features(s)
        scores[n] = model.predict_proba_one(x).get(True, 0.0)
        model.learn_one(x, bool(s.label))
        if n and n % report < every:
            progress(f"  {n:,}/{len(samples):,}")
    return Run(
        scores,
        time.perf_counter() - started,
        {"model": f"facto.FMClassifier(n_factors={RIVER_FACTORS}, SGD({RIVER_LR}))", "every": every},
    )


# --------------------------------------------------------------------------- the comparison


def compare(
    samples: list[Sample],
    progress: Progress,
    *,
    static_fraction: float,
    retrain_every_ms: int,
    metric_window_ms: int = METRIC_WINDOW_MS,
    retrain_epochs: int = RETRAIN_EPOCHS,
    retrain_recent_ms: int | None = None,
    river_every: int = 1,
    seed: int = 0,
    models: Sequence[str] = MODELS,
) -> dict[str, Any]:
    """Run every model test-then-train over ``samples`` and compare them.

    Returns per-model samples/s and metrics (overall, before and after the static model's
    cut), per-window metrics for the plot, and the targets of the issue.
    """
    if not 0 < static_fraction < 1:
        raise ValueError(f"expected a static fraction in (0, 1), got {static_fraction!r}")
    if not samples:
        raise ValueError("expected labelled samples, got none")
    impression_ms = np.fromiter((s.impression_ts_ms for s in samples), dtype=np.int64, count=len(samples))
    labels = np.fromiter((s.label for s in samples), dtype=np.float64, count=len(samples))
    origin, last = int(impression_ms.min()), int(impression_ms.max())
    static_at = origin + int(static_fraction * (last - origin))
    cut = boundary_index(impression_ms, static_at)
    times = retrain_times(origin, last, retrain_every_ms)
    spans = segments(impression_ms, times)
    progress(
        f"{len(samples):,} samples ({int(labels.sum()):,} positives) over {(last - origin) / 1000:,.0f} s "
        f"of stream time; static learns {cut:,}; {len(times)} retrains"
    )

    runners: dict[str, Callable[[], Run]] = {
        "static": lambda: run_online(samples, progress, learn_until=cut, seed=seed),
        "retrain": lambda: run_retrain(
            samples,
            progress,
            spans,
            impression_ms=impression_ms,
            times=times,
            epochs=retrain_epochs,
            recent_ms=retrain_recent_ms,
            seed=seed,
        ),
        "freshrank": lambda: run_online(samples, progress, seed=seed),
        "vw": lambda: run_vw(samples, progress, seed=seed),
        "river": lambda: run_river(samples, progress, every=river_every, seed=seed),
    }
    # The first learner of a process pays torch's one-time costs; keep them out of every timing.
    warm = Learner(RankerConfig(), seed=seed)
    warm.learn(encode(samples[:DEFAULT_BATCH_SIZE], Vocabularies(warm.config), warm.config.max_tokens))
    del warm
    before = impression_ms < static_at
    results: dict[str, Any] = {}
    windows: dict[str, list[dict[str, Any]]] = {}
    for name in models:
        progress(f"{name}: test-then-train over {len(samples):,} samples")
        run = runners[name]()
        scored = int(np.isfinite(run.scores).sum())
        if name == "retrain":
            for row, at in zip(run.notes["retrains"], times, strict=True):
                row["at_s"] = round((at - origin) / 1000, 1)
        results[name] = {
            "samples_per_s": round(scored / run.wall_s, 1),
            "wall_s": round(run.wall_s, 1),
            "scored": scored,
            "overall": region_metrics(run.scores, labels, np.ones(len(samples), dtype=bool)),
            "before_drift": region_metrics(run.scores, labels, before),
            "after_drift": region_metrics(run.scores, labels, ~before),
            **run.notes,
        }
        windows[name] = windowed_metrics(impression_ms, run.scores, labels, origin, metric_window_ms)
        after = results[name]["after_drift"]
        progress(
            f"{name}: {results[name]['samples_per_s']:,.0f} samples/s, after the drift AUC {after['auc']} "
            f"logloss {after['logloss']}"
        )
    after_drift = {name: results[name]["after_drift"] for name in results}
    return {
        "samples": len(samples),
        "positives": int(labels.sum()),
        "stream_s": round((last - origin) / 1000, 1),
        "static_fraction": static_fraction,
        "static_until_s": round((static_at - origin) / 1000, 1),
        "static_learned_samples": cut,
        "retrain_every_s": retrain_every_ms / 1000,
        "metric_window_s": metric_window_ms / 1000,
        "batch_size": DEFAULT_BATCH_SIZE,
        "models": results,
        "after_drift_auc": {name: a["auc"] for name, a in after_drift.items()},
        "after_drift_logloss": {name: a["logloss"] for name, a in after_drift.items()},
        "samples_per_s": {name: results[name]["samples_per_s"] for name in results},
        "targets": target_report(after_drift) if {"freshrank", "static"} <= set(results) else {},
        "windows": windows,
    }


def plot_auc(ax: Any, result: dict[str, Any], title: str) -> None:
    """AUC per window over stream time, one line per model; the static cut and retrains marked."""
    minutes = result["stream_s"] > 1_200
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    if result["stream_s"] > 3 * 86_400:
        scale, unit = 3_600.0, "h"
    half = result["metric_window_s"] / 2
    for name, rows in result["windows"].items():
        xs = [(r["start_s"] + half) / scale for r in rows]
        ys = [math.nan if r["auc"] is None else r["auc"] for r in rows]
        ax.plot(xs, ys, marker=".", label=name, linewidth=2.2 if name == "freshrank" else 1.2)
    ax.axvline(result["static_until_s"] / scale, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        " static stops learning",
        (result["static_until_s"] / scale, 0.0),
        xycoords=("data", "axes fraction"),
        fontsize=8,
        va="bottom",
    )
    for row in result["models"].get("retrain", {}).get("retrains", []):
        ax.axvline(row["at_s"] / scale, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"stream time ({unit}; dotted: retrains)")
    ax.set_ylabel(f"AUC per {result['metric_window_s']:g} s window")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def new_figure(rows: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(9, 4.2 * rows), squeeze=False)
    return fig, axes[:, 0]


def close_figure(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def run(out: Path, progress: Progress) -> dict[str, Any]:
    """The comparison on the simulator's drifting stream; writes ``quality.png``."""
    config = SimulatorConfig(seed=SEED)
    started = time.perf_counter()
    events = generate(config, rate=RATE, duration_s=DURATION_S, start_ms=START_MS)
    samples, counts = labelled(events, window_ms=DEFAULT_WINDOW_MS)
    took = time.perf_counter() - started
    progress(f"stream: {counts['events']:,} events -> {len(samples):,} samples in {took:.1f} s")
    result = compare(samples, progress, static_fraction=STATIC_FRACTION, retrain_every_ms=RETRAIN_EVERY_MS)
    fig, axes = new_figure()
    plot_auc(axes[0], result, f"Prequential AUC on the simulated stream (seed {SEED}, {RATE:g} events/s)")
    figure = save_figure(fig, out, "quality")
    close_figure(fig)
    return {
        "stream": {
            "simulator_seed": SEED,
            "rate": RATE,
            "duration_s": DURATION_S,
            "attribution_window_ms": DEFAULT_WINDOW_MS,
            **counts,
        },
        **result,
        "figure": figure,
    }
