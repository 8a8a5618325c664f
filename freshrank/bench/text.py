"""The text tower: cold start, what it costs, with it and without it.

The word simulator's stream (seed 7: English titles, queries that mostly name the product by
a synonym; the catalogue and every launch on the items stream) goes to two learners under the
quality benchmark's protocol (each sample scored at its impression, learned when its label is
known): freshrank as it ships, and the same without the text tower (``text_dim=0``).

- **Cold impressions**: an impression of an item none of whose clicks had been learned yet
  (its label known before the impression). Reported: the AUC of the clicks among cold
  impressions (needs only the log), and per request with a cold item of the query's concept
  and an item of another concept, the AUC and MRR of the cold matching items against the others
  (needs the simulator's concepts).
- **Probe**, through the serving graph: after the stream, for every concept, a brand-new item
  whose title names it by one phrase (published in the catalogue, never shown, never clicked)
  among 9 items the shop knows (3 of the same category, 6 of others), ranked by onnxruntime on
  the exported version (5 probes per concept) for a query naming the concept by another phrase
  (``synonym``), and by
  the title's own phrase (``same_words``). Reported: how often the new item is in the top 3 of
  the 10, and its mean rank.
- **Cost**: title encodings per second (distinct titles, the updater's encoder, CPU), in-process
  onnxruntime latency and throughput for requests of 100 candidates, the version's size on disk
  and its export + parity time, each with and without the text tower.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.check import check_parity, feeds, open_session
from exporter.onnx_export import build_onnx, write_onnx
from freshrank.bench.common import Progress, labelled, percentiles
from freshrank.bench.quality import START_MS, known_at_ms, run_online
from freshrank.simulator import CONCEPTS, WORD_ADJECTIVES, SimulatorConfig, generate, query_concept
from rankcore.features import Vocabularies
from rankcore.metrics import auc
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from rankcore.text import TextEncoder, load_table
from updater.joiner import DEFAULT_WINDOW_MS
from updater.learner import Learner

SEED = 7
RATE = 330.0
DURATION_S = 480.0
CANDIDATES = 10
TOP = 3
# Probes per concept (each with its own phrases, rivals and brand): 320 of each kind in all.
PROBES_PER_CONCEPT = 5
SERVING_CANDIDATES = 100
SERVING_REQUESTS = 400
VARIANTS = {"text": RankerConfig(), "no_text": dataclasses.replace(RankerConfig(), text_dim=0)}


def cold_mask(samples: Sequence[Sample], known_ms: np.ndarray, impression_ms: np.ndarray) -> np.ndarray:
    """True where no click of the sample's item had its label known before the impression."""
    first_click: dict[str, int] = {}
    for s, known in zip(samples, known_ms, strict=True):
        if s.label and known < first_click.get(s.item_id, 1 << 62):
            first_click[s.item_id] = int(known)
    return np.fromiter(
        (imp <= first_click.get(s.item_id, 1 << 62) for s, imp in zip(samples, impression_ms, strict=True)),
        dtype=bool,
        count=len(samples),
    )


def per_request_cold(samples: Sequence[Sample], scores: np.ndarray, cold: np.ndarray) -> dict[str, Any]:
    """Per request holding a cold item of the query's concept and an item of another concept:
    the AUC of the cold matching items against the other-concept ones, and the reciprocal rank
    of the best cold matching item among all the request's candidates (by score)."""
    by_request: dict[str, list[int]] = defaultdict(list)
    for row, s in enumerate(samples):
        by_request[s.request_id].append(row)
    aucs, rrs = [], []
    for rows in by_request.values():
        concept = query_concept(samples[rows[0]].query)
        if concept is None:
            continue
        matching = [r for r in rows if cold[r] and query_concept(samples[r].title) == concept]
        others = [r for r in rows if query_concept(samples[r].title) != concept]
        if not matching or not others or not np.all(np.isfinite(scores[rows])):
            continue
        pairs = [(scores[m] > scores[o]) + 0.5 * (scores[m] == scores[o]) for m in matching for o in others]
        aucs.append(float(np.mean(pairs)))
        order = sorted(rows, key=lambda r: -scores[r])
        rrs.append(1.0 / (1 + min(order.index(m) for m in matching)))
    return {
        "requests": len(aucs),
        "auc": round(float(np.mean(aucs)), 4) if aucs else None,
        "mrr": round(float(np.mean(rrs)), 4) if rrs else None,
    }


def _latest_items(samples: Sequence[Sample]) -> dict[str, Sample]:
    latest: dict[str, Sample] = {}
    for s in samples:
        latest[s.item_id] = s
    return latest


def probes(samples: Sequence[Sample], synonym: bool, seed: int = 3) -> list[tuple[str, list[Sample]]]:
    """(query, candidates), PROBES_PER_CONCEPT per concept: a new item first, then 9 known items
    of other concepts (3 of its category where there are). ``synonym``: the query names the
    concept by another phrase than the title's; otherwise by the title's own."""
    rng = random.Random(seed)
    known = [s for s in _latest_items(samples).values() if s.title]
    by_category: dict[str, list[Sample]] = defaultdict(list)
    for s in known:
        by_category[s.category].append(s)
    out = []
    for category, concepts in CONCEPTS.items():
        for concept, n in itertools.product(concepts, range(PROBES_PER_CONCEPT)):
            title_phrase, query_phrase = rng.sample(concept, 2)
            if not synonym:
                query_phrase = title_phrase
            same = [s for s in by_category[category] if query_concept(s.title) != concept[0]]
            other = [s for s in known if s.category != category]
            rivals = rng.sample(same, min(3, len(same)))
            rivals += rng.sample(other, CANDIDATES - 1 - len(rivals))
            brand = rng.choice(rivals).brand
            new = Sample(
                "probe-user",
                query_phrase,
                f"probe-{'syn' if synonym else 'same'}-{concept[0].replace(' ', '-')}-{n}",
                category,
                brand,
                float(np.median([r.price for r in rivals])),
                0,
                0,
                0,
                title=f"{brand} {rng.choice(WORD_ADJECTIVES)} {title_phrase}",
            )
            out.append((query_phrase, [new, *(dataclasses.replace(r, user_id="probe-user") for r in rivals)]))
    return out


def probe_summary(ranks: list[int]) -> dict[str, Any]:
    return {
        "top3_rate": round(float(np.mean([r <= TOP for r in ranks])), 4),
        "mean_rank": round(float(np.mean(ranks)), 2),
        "ranks": ranks,
    }


def probe_ranks(session: Any, requests: list[tuple[str, list[Sample]]]) -> list[int]:
    ranks = []
    for query, candidates in requests:
        (scores,) = session.run(["score"], feeds([dataclasses.replace(c, query=query) for c in candidates]))
        scores = scores.reshape(-1)
        ranks.append(1 + int(np.sum(scores > scores[0])))
    return ranks


def serving_cost(session: Any, samples: Sequence[Sample], seed: int = 5) -> dict[str, Any]:
    """In-process onnxruntime, one thread: requests of SERVING_CANDIDATES candidates."""
    rng = random.Random(seed)
    requests = []
    for _ in range(SERVING_REQUESTS):
        user = rng.choice(samples)
        rows = rng.sample(list(samples), SERVING_CANDIDATES)
        requests.append(feeds([dataclasses.replace(r, user_id=user.user_id, query=user.query) for r in rows]))
    for feed in requests[:20]:
        session.run(["score"], feed)
    latencies = []
    started = time.perf_counter()
    for feed in requests:
        t = time.perf_counter()
        session.run(["score"], feed)
        latencies.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - started
    return {
        "candidates": SERVING_CANDIDATES,
        "requests_per_s": round(len(requests) / wall, 1),
        "latency_ms": percentiles(latencies, (50, 99)),
    }


def title_encoding_rate(titles: list[str]) -> dict[str, Any]:
    """Distinct titles through a fresh encoder (no cache), one at a time and as one batch."""
    table = load_table()
    encoder = TextEncoder(table)
    started = time.perf_counter()
    for title in titles:
        encoder.title(title)
    single = time.perf_counter() - started
    encoder = TextEncoder(table)
    started = time.perf_counter()
    encoder.titles(titles)
    batched = time.perf_counter() - started
    return {
        "titles": len(titles),
        "per_s_one_at_a_time": round(len(titles) / single, 1),
        "per_s_batched": round(len(titles) / batched, 1),
        "device": "cpu (a table lookup: no GPU needed)",
        "table": {"words": len(table.words), "dim": table.dim, **table.meta},
    }


def export_cost(
    learner: Learner, vocabs: Vocabularies, titles: dict[str, str], check: list[Sample], directory: Path
) -> tuple[dict[str, Any], Path]:
    model = learner.frozen_copy()
    started = time.perf_counter()
    write_onnx(build_onnx(model, vocabs, titles), directory)
    exported = time.perf_counter() - started
    diff = check_parity(directory / "model.onnx", model, vocabs, check, titles=titles)
    checked = time.perf_counter() - started - exported
    size = sum(p.stat().st_size for p in directory.iterdir())
    cost = {
        "export_s": round(exported, 3),
        "parity_s": round(checked, 3),
        "parity_max_diff": float(f"{diff:.3g}"),
        "size_mb": round(size / 1e6, 2),
        "titles": len(titles),
    }
    return cost, directory / "model.onnx"


def run(out: Path, progress: Progress) -> dict[str, Any]:
    started = time.perf_counter()
    events = generate(
        SimulatorConfig(seed=SEED), rate=RATE, duration_s=DURATION_S, start_ms=START_MS, items=True
    )
    samples, counts = labelled(events, window_ms=DEFAULT_WINDOW_MS)
    progress(
        f"seed {SEED}: {counts['events']:,} events, {counts['item_updates']:,} item updates -> "
        f"{len(samples):,} samples in {time.perf_counter() - started:.1f} s"
    )
    impression_ms = np.fromiter((s.impression_ts_ms for s in samples), dtype=np.int64, count=len(samples))
    known_ms = known_at_ms(samples, DEFAULT_WINDOW_MS)
    labels = np.fromiter((s.label for s in samples), dtype=np.float64, count=len(samples))
    cold = cold_mask(samples, known_ms, impression_ms)
    titles = {item: s.title for item, s in _latest_items(samples).items() if s.title}
    requests = {"synonym": probes(samples, synonym=True), "same_words": probes(samples, synonym=False)}
    for kind in requests.values():
        for _, candidates in kind:
            titles[candidates[0].item_id] = candidates[0].title
    clicked = int(labels[cold].sum())
    progress(
        f"{int(cold.sum()):,} cold impressions ({clicked:,} clicked); {len(requests['synonym'])} probes each"
    )
    result: dict[str, Any] = {
        "stream": {
            "simulator_seed": SEED,
            "titles": "words",
            "rate": RATE,
            "duration_s": DURATION_S,
            **counts,
        },
        "cold_impressions": int(cold.sum()),
        "cold_clicks": int(labels[cold].sum()),
        "probes": {kind: len(r) for kind, r in requests.items()},
        "variants": {},
    }
    check = list(samples[-256:])
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in VARIANTS.items():
            learner, vocabs = Learner(config, seed=0), Vocabularies(config)
            progress(f"{name}: score at impression, learn when known, over {len(samples):,} samples")
            online = run_online(
                samples, progress, impression_ms=impression_ms, known_ms=known_ms, start=(learner, vocabs)
            )
            scored = online.scored & np.isfinite(online.scores)
            export, path = export_cost(learner, vocabs, titles, check, Path(tmp) / name)
            session = open_session(path)
            probe = {kind: probe_summary(probe_ranks(session, r)) for kind, r in requests.items()}
            serving = serving_cost(session, samples)
            variant = {
                "samples_per_s": round(int(online.scored.sum()) / online.wall_s, 1),
                "auc_overall": round(auc(online.scores[scored], labels[scored]), 4),
                "cold_auc": round(auc(online.scores[scored & cold], labels[scored & cold]), 4),
                "cold_per_request": per_request_cold(samples, online.scores, cold),
                "probe": probe,
                "export": export,
                "serving_in_process": serving,
            }
            result["variants"][name] = variant
            progress(
                f"{name}: AUC {variant['auc_overall']}, cold AUC {variant['cold_auc']}, per request "
                f"{variant['cold_per_request']}, probe top-{TOP} "
                + ", ".join(
                    f"{k} {p['top3_rate']:.0%} (mean rank {p['mean_rank']})" for k, p in probe.items()
                )
                + f", {export['size_mb']} MB, serving {serving['latency_ms']} ms"
            )
    result["title_encoding"] = title_encoding_rate(sorted(set(titles.values())))
    progress(f"title encodings: {result['title_encoding']['per_s_one_at_a_time']:,.0f}/s one at a time")
    return result
