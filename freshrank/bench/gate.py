"""The publishing gate's noise: how often it rejects candidates on a clean stream, whether it
still catches poisoning, and what its rejections cost in freshness and served quality.

The updater's loop replayed on stream time, without the I/O: the simulator's events go
through the updater's consumer path (:class:`updater.ingest.Ingest`: every
``DEFAULT_HOLDOUT_EVERY``-th request held out), its learner learns the rest in batches of
``DEFAULT_BATCH_SIZE``, and every ``CANDIDATE_INTERVAL_S`` of stream time a candidate
is cut and put through the release side's decisions on the latest ``DEFAULT_HOLDOUT_WINDOW``
held-out samples: the rollback check (:func:`exporter.gate.should_roll_back` against the
versions served before), then the gate. Exporting and loading take no time here, so the
figures isolate the gate's decisions from Triton's.

Three rules judge the same sequence of candidates, each keeping its own live version:

- ``paired``: :func:`exporter.gate.judge` with the defaults (DeLong's paired test for AUC and
  the paired logloss difference; rejected when worse by more than the margin at the
  one-sided confidence) on the held-out impressions of the last ``DEFAULT_RECENT_S``
  seconds (:func:`rankcore.holdout.recent`), those with an open window as misses
  (:meth:`updater.ingest.Ingest.open_holdout`), as the updater does;
- ``paired_newest_5000``: the same test on the newest 5,000 held-out samples, whatever their age;
- ``unpaired``: the rule before both, on the newest 5,000, rejecting when the candidate's
  held-out AUC is below the live one's by more than 0.02 or its logloss above by more than
  0.02, point estimates.

Each rule reports its rejection rate, rollbacks, how old its live version was at each
impression (stream time since that version's candidate was cut: the freshness cost of
rejections) and its *served* AUC: every impression scored by the version that rule had live
at its impression time, the number a shop sees. Streams: the simulator's seed 7 clean, with
every click decision inverted for ``POISON_FOR_S`` from ``POISON_AT_S``, and clean at the
demo's rate (``FAST_RATE``). During the poison the served AUC is against poisoned labels, so
``served_auc_60s_after_poison_window`` is the figure that shows recovery.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.gate import GateSettings, judge, should_roll_back
from freshrank.bench.common import Progress, percentiles
from freshrank.bench.common import bar as progress_bar
from freshrank.simulator import SimulatorConfig, encode_event, generate
from rankcore.features import Vocabularies, encode, score
from rankcore.holdout import DEFAULT_HOLDOUT_EVERY, DEFAULT_RECENT_S, HoldoutMetrics, evaluate, recent
from rankcore.metrics import auc
from rankcore.model import Ranker, RankerConfig
from rankcore.sample import Sample
from updater.batcher import DEFAULT_BATCH_SIZE, Batcher
from updater.ingest import Ingest, Record
from updater.joiner import DEFAULT_WINDOW_MS
from updater.learner import Learner
from updater.settings import DEFAULT_HOLDOUT_WINDOW

SEED = 7
# Candidates this often (stream time): the rate at which the gate's rule is exercised, as with
# versions every 2 s; the served state between versions is judged at the same cadence.
CANDIDATE_INTERVAL_S = 2.0
RATE = 330.0
DURATION_S = 360.0
START_MS = 1_700_000_000_000
FAST_RATE = 1_000.0
FAST_DURATION_S = 150.0
POISON_AT_S = 150.0
POISON_FOR_S = 30.0
# Impressions before this are left out of the served AUC: nothing is live yet.
WARMUP_S = 30.0
UNPAIRED_AUC_MARGIN = 0.02
UNPAIRED_LOGLOSS_MARGIN = 0.02
# Capacities sized to the simulator (3,000 users, ~1,600 items, ~100 tokens), so that every
# version a rule served can be kept to score the impressions it served.
CONFIG = RankerConfig(
    user_capacity=4_096, token_capacity=1_024, item_capacity=4_096, category_capacity=64, brand_capacity=128
)


def unpaired(
    model: Ranker, vocabs: Vocabularies, live: tuple[Ranker, Vocabularies] | None, holdout: list[Sample]
) -> str | None:
    """The rule before the paired gate: point estimates against fixed margins."""
    candidate = evaluate(model, vocabs, holdout)
    if not candidate.finite:
        return "non-finite scores on the held-out window"
    if live is None or candidate.samples < GateSettings().min_samples or math.isnan(candidate.auc):
        return None
    current = evaluate(*live, holdout)
    if not math.isnan(current.auc) and candidate.auc < current.auc - UNPAIRED_AUC_MARGIN:
        return "held-out AUC below live by more than the margin"
    if not math.isnan(current.logloss) and candidate.logloss > current.logloss + UNPAIRED_LOGLOSS_MARGIN:
        return "held-out logloss above live by more than the margin"
    return None


@dataclass
class Version:
    number: int
    cut_ms: int
    model: Ranker
    vocabs: Vocabularies


@dataclass
class Rule:
    """One gate rule's own release state: what is live, what was served before, its counts."""

    name: str
    decide: Callable[[Version, Version | None, list[Sample]], str | None]
    settings: GateSettings
    window: int = DEFAULT_HOLDOUT_WINDOW
    recent_s: float = DEFAULT_RECENT_S
    live: Version | None = None
    history: deque[Version] = field(default_factory=deque)
    timeline: list[tuple[int, Version]] = field(default_factory=list)  # (from stream ms, live version)
    candidates: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)

    def go_live(self, version: Version, at_ms: int) -> None:
        if self.live is not None:
            self.history.appendleft(self.live)
            while len(self.history) > self.settings.rollback_history:
                self.history.pop()
        self.live = version
        self.timeline.append((at_ms, version))

    def release(self, candidate: Version, holdout: list[Sample], now_ms: int) -> None:
        """The release side's order: the rollback check, then the gate."""
        settings = self.settings
        holdout = holdout[-self.window :]
        if self.recent_s > 0:
            holdout = recent(holdout, self.recent_s, settings.min_samples)
        if self.live is not None and self.history and holdout:
            scored = [(v, evaluate(v.model, v.vocabs, holdout)) for v in (self.live, *self.history)]
            previous, prev_m = max(scored[1:], key=lambda pair: _auc_or_low(pair[1]))
            reason = should_roll_back(scored[0][1], prev_m, settings)
            if reason is not None:
                at_s = round((now_ms - START_MS) / 1000, 1)
                self.rollbacks.append({"at_s": at_s, "from": self.live.number, "to": previous.number})
                self.history = deque(v for v in self.history if v.number < previous.number)
                self.live = previous
                self.timeline.append((now_ms, previous))
                return  # as the release side: a rollback ends this round
        self.candidates += 1
        reason = self.decide(candidate, self.live, holdout)
        if reason is not None:
            self.rejected += 1
            kind = reason.split(" ")[1] if reason.startswith("held-out") else reason
            self.reasons[kind] = self.reasons.get(kind, 0) + 1
            return
        self.go_live(candidate, now_ms)


def _auc_or_low(metrics: HoldoutMetrics) -> float:
    return -1.0 if math.isnan(metrics.auc) else metrics.auc


def stream(
    config: SimulatorConfig, rate: float, duration_s: float
) -> Iterator[tuple[int, list[Sample], list[Sample], Callable[[], list[Sample]]]]:
    """``(stream ms, trained samples, held-out samples, what gives the open held-out
    impressions)`` as the updater's consumer path emits them
    (:meth:`updater.ingest.Ingest.open_holdout`)."""
    ingest = Ingest(window_ms=DEFAULT_WINDOW_MS, holdout_every=DEFAULT_HOLDOUT_EVERY)
    events = generate(config, rate=rate, duration_s=duration_s, start_ms=START_MS)
    for offset, event in enumerate(events):
        now_ms = int(event["ts"]) if isinstance(event.get("ts"), int) else START_MS
        record = Record(topic="bench", partition=0, offset=offset, key=None, value=encode_event(event)[1])
        out = ingest.process([record], now_ms)
        if out.trained or out.held_out:
            yield now_ms, out.trained, out.held_out, ingest.open_holdout
    last = ingest.drain()
    yield START_MS + int(duration_s * 1000), last.trained, last.held_out, list


def paired_rule(name: str, settings: GateSettings, recent_s: float = DEFAULT_RECENT_S) -> Rule:
    """The gate on the held-out impressions of the last ``recent_s`` seconds (0: the newest
    ``DEFAULT_HOLDOUT_WINDOW`` samples, what it judged on before)."""

    def decide(candidate: Version, live: Version | None, holdout: list[Sample]) -> str | None:
        pair = (live.model, live.vocabs) if live is not None else None
        return judge(candidate.model, candidate.vocabs, pair, holdout, settings).reason

    return Rule(name, decide, settings, recent_s=recent_s)


def unpaired_rule(name: str = "unpaired") -> Rule:
    def decide(candidate: Version, live: Version | None, holdout: list[Sample]) -> str | None:
        pair = (live.model, live.vocabs) if live is not None else None
        return unpaired(candidate.model, candidate.vocabs, pair, holdout)

    return Rule(name, decide, GateSettings(), recent_s=0.0)


def replay(
    config: SimulatorConfig,
    progress: Progress,
    rules: list[Rule],
    rate: float = RATE,
    duration_s: float = DURATION_S,
) -> dict[str, Any]:
    """Learn the stream once; judge every candidate under each rule; score what each served.

    Candidates are cut while the traffic lasts: after the last impression the stream's tail
    is its remaining actions and then misses alone (no new impressions to balance them),
    which pulled the model's click rate from 0.15 to 0.006 within 8 s and made the gate
    reject the four candidates cut there; no running shop has that tail."""
    learner = Learner(CONFIG, seed=0)
    vocabs = Vocabularies(CONFIG)
    holdout: deque[Sample] = deque(maxlen=DEFAULT_HOLDOUT_WINDOW)
    seen: list[Sample] = []

    batcher = Batcher(DEFAULT_BATCH_SIZE)
    interval_ms = int(CANDIDATE_INTERVAL_S * 1000)
    next_cut = START_MS + interval_ms
    number = 0
    started = time.perf_counter()
    # Candidates are cut while the traffic lasts: after its last impression the stream's tail
    # is the remaining actions and then misses alone, which no running shop has.
    last_cut = START_MS + int(duration_s * 1000)
    bar = progress_bar(progress, "candidates", (last_cut - START_MS) // interval_ms, unit="candidates")
    for now_ms, trained, held_out, open_held in stream(config, rate, duration_s):
        seen += trained
        seen += held_out
        holdout.extend(held_out)
        for batch in batcher.add(trained, 0.0):
            learner.learn(encode(batch, vocabs, CONFIG.max_tokens))
        while now_ms >= next_cut and next_cut <= last_cut:
            number += 1
            candidate = Version(number, next_cut, learner.frozen_copy(), vocabs.copy())
            window = [*holdout, *open_held()]
            for rule in rules:
                rule.release(candidate, window, next_cut)
            next_cut += interval_ms
            bar.advance()
            if number % 30 == 0:
                counts = (f"{r.name} rejected {r.rejected} rolled back {len(r.rollbacks)}" for r in rules)
                progress(f"  {number} candidates, " + ", ".join(counts))
    progress(f"  {number} candidates in {time.perf_counter() - started:.0f} s")
    return {rule.name: served(rule, seen, number) for rule in rules}


def served(rule: Rule, samples: list[Sample], candidates: int) -> dict[str, Any]:
    """The rule's decisions, and every impression scored by the version it had live then."""
    impressions = np.fromiter((s.impression_ts_ms for s in samples), dtype=np.int64, count=len(samples))
    labels = np.fromiter((s.label for s in samples), dtype=np.float32, count=len(samples))
    scores = np.full(len(samples), np.nan)
    age_s = np.full(len(samples), np.nan)
    starts = np.array([at for at, _ in rule.timeline], dtype=np.int64)
    which = np.searchsorted(starts, impressions, side="right") - 1
    for k, (_, version) in enumerate(rule.timeline):
        rows = np.flatnonzero(which == k)
        if rows.size:
            batch = encode([samples[r] for r in rows], version.vocabs, CONFIG.max_tokens, grow=False)
            scores[rows] = score(version.model, batch)
            age_s[rows] = (impressions[rows] - version.cut_ms) / 1000
    live = np.isfinite(scores) & (impressions >= START_MS + WARMUP_S * 1000)
    poison_end = START_MS + int((POISON_AT_S + POISON_FOR_S) * 1000)
    after_poison = live & (impressions >= poison_end) & (impressions < poison_end + 60_000)
    return {
        "candidates": rule.candidates,
        "rejected": rule.rejected,
        "rejection_rate": round(rule.rejected / rule.candidates, 4) if rule.candidates else None,
        "rejected_by": rule.reasons,
        "rollbacks": rule.rollbacks,
        "versions_served": len({v.number for _, v in rule.timeline}),
        "served_auc": _rounded(auc(scores[live], labels[live])),
        "served_auc_60s_after_poison_window": _rounded(auc(scores[after_poison], labels[after_poison])),
        "live_age_s": percentiles(age_s[live].tolist()),
        "live_age_mean_s": round(float(age_s[live].mean()), 2),
        "candidates_cut": candidates,
    }


def _rounded(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 4)


def run(out: Path, progress: Progress) -> dict[str, Any]:
    settings = GateSettings()
    poisoned = SimulatorConfig(seed=SEED, poison_start_s=POISON_AT_S, poison_duration_s=POISON_FOR_S)
    streams = {
        "clean": (SimulatorConfig(seed=SEED), RATE, DURATION_S),
        "poisoned": (poisoned, RATE, DURATION_S),
        # The demo's rate: 5,000 held-out samples are ~70 s here, less than one trend period.
        "clean_fast": (SimulatorConfig(seed=SEED), FAST_RATE, FAST_DURATION_S),
    }
    results: dict[str, Any] = {}
    for name, (config, rate, duration_s) in streams.items():
        progress(f"{name} stream: {duration_s:g} s at {rate:g} events/s, seed {SEED}")
        rules = [
            paired_rule("paired", settings),
            paired_rule("paired_newest_5000", settings, recent_s=0.0),
            unpaired_rule(),
        ]
        results[name] = replay(config, progress, rules, rate, duration_s)
    clean = results["clean"]["paired"]
    fast = results["clean_fast"]["paired"]
    poisoned_run = results["poisoned"]["paired"]
    fast_rate = fast["rejection_rate"]
    return {
        "stream": {"seed": SEED, "rate": RATE, "duration_s": DURATION_S, "warmup_s": WARMUP_S},
        "fast_stream": {"rate": FAST_RATE, "duration_s": FAST_DURATION_S},
        "holdout_recent_s": DEFAULT_RECENT_S,
        "poison": {"at_s": POISON_AT_S, "for_s": POISON_FOR_S},
        "batch_size": DEFAULT_BATCH_SIZE,
        "publish_interval_s": CANDIDATE_INTERVAL_S,
        "holdout_every": DEFAULT_HOLDOUT_EVERY,
        "holdout_window": DEFAULT_HOLDOUT_WINDOW,
        "gate": {
            "auc_margin": settings.auc_margin,
            "logloss_margin": settings.logloss_margin,
            "confidence": settings.confidence,
            "rollback_auc_drop": settings.rollback_auc_drop,
        },
        "unpaired_rule": {"auc_margin": UNPAIRED_AUC_MARGIN, "logloss_margin": UNPAIRED_LOGLOSS_MARGIN},
        "streams": results,
        "targets": {
            "clean_rejection_rate_at_most_0.10": {
                "met": all(
                    r is not None and r <= 0.10 for r in (clean["rejection_rate"], fast["rejection_rate"])
                ),
                "rejection_rate": clean["rejection_rate"],
                "rejection_rate_fast": fast_rate,
            },
            "poisoning_caught": {
                "met": bool(poisoned_run["rollbacks"]) or poisoned_run["rejected"] > clean["rejected"],
                "rollbacks": len(poisoned_run["rollbacks"]),
                "rejected": poisoned_run["rejected"],
            },
        },
    }
