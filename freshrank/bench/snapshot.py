"""Snapshot cost against vocabulary size: export, parity check, publish, Triton load.

Each case is a :class:`Ranker` whose item vocabulary holds ``N`` synthetic ids and whose user
vocabulary holds ``N / 2`` (a shop with twice as many items as active users); "rows" below is
the number of vocabulary keys in the graph, ``1.5 N`` plus a few hundred tokens, categories
and brands. Every phase runs as ``updater.service`` runs it: ``build_onnx`` and ``write_onnx``
and the parity check inside :meth:`Publisher.publish`'s writer, then the hash, fsync and
rename, then an explicit Triton load of exactly that version, then a first ranking request.
A least-squares line ``time = a + b * rows`` per phase says what each million keys costs.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from exporter.check import check_parity
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import Publisher
from exporter.triton import Candidate, TritonModel
from freshrank.bench.common import Progress, save_figure
from freshrank.stack import EmbeddedStack, free_port
from rankcore.features import Vocabularies
from rankcore.model import Ranker, RankerConfig
from rankcore.sample import Sample

SIZES = (10_000, 100_000, 1_000_000, 3_000_000)  # item ids per case, at the default width
WIDTH_SIZE = 1_000_000
WIDTHS = (32, 64)  # extra widths at WIDTH_SIZE (the default width is measured anyway)
REPEATS = 2  # each case is exported and loaded this often; each phase keeps its fastest time
PARITY_SAMPLES = 256
CANDIDATES = 100
PHASES = ("build", "write", "parity", "publish", "load", "first_infer")
SMALL_VOCABS = {"token": 500, "category": 200, "brand": 500}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b * x``; returns ``(a, b)``. Needs two distinct ``x``."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size != y.size or x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"expected at least two distinct x values, got {xs!r}")
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def item_id(i: int) -> str:
    return f"sku-{i:08d}"


def user_id(i: int) -> str:
    return f"user-{i:08d}"


def make_case(items: int, dim: int) -> tuple[Ranker, Vocabularies]:
    users = items // 2
    config = replace(
        RankerConfig(),
        item_capacity=items + 2,
        user_capacity=users + 2,
        token_capacity=SMALL_VOCABS["token"] + 2,
        category_capacity=SMALL_VOCABS["category"] + 2,
        brand_capacity=SMALL_VOCABS["brand"] + 2,
        dim=dim,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        model = Ranker(config).eval()
    vocabs = Vocabularies(config)
    add_item, add_user = vocabs["item"].add, vocabs["user"].add
    for i in range(items):
        add_item(item_id(i))
    for i in range(users):
        add_user(user_id(i))
    for feature, n in SMALL_VOCABS.items():
        for i in range(n):
            vocabs[feature].add(f"{feature}{i}")
    return model, vocabs


def rows_of(vocabs: Vocabularies) -> int:
    return sum(vocabs.sizes().values())


def parity_samples(items: int, rng: random.Random) -> list[Sample]:
    return [
        Sample(
            user_id(rng.randrange(items // 2)),
            f"token{rng.randrange(500)} token{rng.randrange(500)}",
            item_id(rng.randrange(items)),
            f"category{rng.randrange(200)}",
            f"brand{rng.randrange(500)}",
            rng.random() * 100,
            0,
            0,
            0,
        )
        for _ in range(PARITY_SAMPLES)
    ]


def export(
    publisher: Publisher, version: int, model: Ranker, vocabs: Vocabularies, samples: list[Sample]
) -> tuple[dict[str, float], int]:
    """One production-shaped publish, with each phase timed; returns (seconds, bytes)."""
    timed: dict[str, float] = {}

    def write(directory: Path) -> list[Path]:
        t0 = time.perf_counter()
        proto = build_onnx(model, vocabs)
        t1 = time.perf_counter()
        files = write_onnx(proto, directory)
        del proto
        t2 = time.perf_counter()
        check_parity(directory / "model.onnx", model, vocabs, samples)
        t3 = time.perf_counter()
        timed.update(build=t1 - t0, write=t2 - t1, parity=t3 - t2)
        return files

    started = time.perf_counter()
    published = publisher.publish(version, write)
    total = time.perf_counter() - started
    timed["publish"] = total - timed["build"] - timed["write"] - timed["parity"]
    return timed, published.size_bytes


async def load_and_serve(
    triton: TritonModel, publisher: Publisher, version: int, items: int
) -> dict[str, float]:
    started = time.perf_counter()
    await triton.load(version, publisher.config_text())
    while await triton.served_version() != version:
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"version {version} not served after 300 s")
        await asyncio.sleep(0.01)
    loaded = time.perf_counter()
    candidates = [Candidate(item_id(i * 7919 % items), "category1", "brand1", 9.5) for i in range(CANDIDATES)]
    ranking = await triton.rank(user_id(1), "token1 token2", candidates)
    if ranking.version != version:
        raise RuntimeError(f"expected version {version} to answer, got {ranking.version}")
    return {"load": loaded - started, "first_infer": time.perf_counter() - loaded}


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def profile_export(
    model: Ranker, vocabs: Vocabularies, samples: list[Sample], top: int = 12
) -> dict[str, Any]:
    """cProfile of build + write + parity for one case: where the time per key goes."""
    directory = Path(tempfile.mkdtemp(prefix="freshrank-profile-"))
    profiler = cProfile.Profile()
    profiler.enable()
    write_onnx(build_onnx(model, vocabs), directory)
    check_parity(directory / "model.onnx", model, vocabs, samples)
    profiler.disable()
    for f in directory.iterdir():
        f.unlink()
    directory.rmdir()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    rows = []
    for (filename, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({func})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return {"total_s": round(sum(r["tottime_s"] for r in rows), 3), "top_by_self_time": rows[:top]}


def run(out: Path, progress: Progress) -> dict[str, Any]:
    cases = [(n, RankerConfig().dim) for n in SIZES]
    cases += [(WIDTH_SIZE, w) for w in WIDTHS if w != RankerConfig().dim]
    cases.sort(key=lambda c: (c[0], c[1]))
    results: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-snapshot-") as tmp:
        stack = EmbeddedStack(
            Path(tmp), kafka_port=free_port(), triton_http_port=free_port(), triton_grpc_port=free_port()
        )
        progress("starting the embedded stack (broker, PostgreSQL, Triton)")
        stack.start()
        try:
            publisher = Publisher(stack.repository, keep=1)
            triton = TritonModel(stack.triton.grpc_url, timeout_s=60, load_timeout_s=300)
            triton_pid = stack.triton.process.proc.pid  # type: ignore[union-attr]
            cached: tuple[int, Vocabularies] | None = None
            version = 0
            for items, dim in cases:
                t0 = time.perf_counter()
                if cached is not None and cached[0] == items:
                    vocabs = cached[1]
                    torch.manual_seed(0)
                    model = Ranker(replace(_config_of(vocabs, items), dim=dim)).eval()
                else:
                    cached = None
                    gc.collect()
                    model, vocabs = make_case(items, dim)
                    cached = (items, vocabs)
                setup_s = time.perf_counter() - t0
                samples = parity_samples(items, rng)
                runs = []
                for _ in range(REPEATS):
                    version += 1
                    timed, size = export(publisher, version, model, vocabs, samples)
                    timed.update(asyncio.run(load_and_serve(triton, publisher, version, items)))
                    publisher.prune(protect={version})
                    runs.append(timed)
                # The machine is shared: the fastest of the repeats is the cost without interference.
                timed = {phase: min(r[phase] for r in runs) for phase in PHASES}
                row = {
                    "items": items,
                    "users": items // 2,
                    "rows": rows_of(vocabs),
                    "dim": dim,
                    "bytes": size,
                    "setup_s": round(setup_s, 2),
                    "seconds": {k: round(v, 4) for k, v in timed.items()},
                    "seconds_all_runs": [{k: round(v, 4) for k, v in r.items()} for r in runs],
                    # The fastest repeat's own total (not a sum of minima from different repeats).
                    "total_s": round(min(sum(r.values()) for r in runs), 3),
                    "triton_rss_mb": round(tree_rss_mb(triton_pid), 1),
                    "bench_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
                }
                results.append(row)
                progress(
                    f"N={items:>9,} dim={dim:>3}: {size / 2**20:6.1f} MiB, "
                    + ", ".join(f"{k} {v:.2f}" for k, v in timed.items())
                    + f" s; Triton RSS {row['triton_rss_mb']:.0f} MiB"
                )
                if items == max(SIZES) and dim == RankerConfig().dim:
                    progress(f"profiling build + write + parity at N={items:,}")
                    profile = {"items": items, "dim": dim, **profile_export(model, vocabs, samples)}
                del model
            asyncio.run(triton.close())
        finally:
            stack.stop()

    default = [r for r in results if r["dim"] == RankerConfig().dim]
    fits: dict[str, dict[str, float]] = {}
    for phase in (*PHASES, "total"):
        ys = [r["total_s"] if phase == "total" else r["seconds"][phase] for r in default]
        a, b = fit_line([r["rows"] for r in default], ys)
        fits[phase] = {"intercept_ms": round(a * 1000, 1), "ms_per_100k_rows": round(b * 1e5 * 1000, 2)}
    progress(
        "fit per 100k rows: "
        + ", ".join(f"{p} {f['ms_per_100k_rows']:.1f} ms (+{f['intercept_ms']:.0f})" for p, f in fits.items())
    )
    by_width = [r for r in results if r["items"] == WIDTH_SIZE]
    result: dict[str, Any] = {
        "what_n_counts": "N item ids; N/2 user ids; 'rows' = all vocabulary keys in the graph",
        "cases": results,
        "fit_time_vs_rows": fits,
        "by_width_at_1m": [{"dim": r["dim"], "bytes": r["bytes"], **r["seconds"]} for r in by_width],
        "profile_largest": profile,
    }
    result["plot"] = plot(default, by_width, fits, out)
    return result


def _config_of(vocabs: Vocabularies, items: int) -> RankerConfig:
    return replace(
        RankerConfig(),
        item_capacity=vocabs["item"].capacity,
        user_capacity=vocabs["user"].capacity,
        token_capacity=vocabs["token"].capacity,
        category_capacity=vocabs["category"].capacity,
        brand_capacity=vocabs["brand"].capacity,
    )


def plot(
    default: list[dict[str, Any]],
    by_width: list[dict[str, Any]],
    fits: dict[str, dict[str, float]],
    out: Path,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = np.array([r["rows"] for r in default], dtype=np.float64)
    line_x = np.linspace(0, rows.max(), 50)
    for phase in (*PHASES, "total"):
        ys = [r["total_s"] if phase == "total" else r["seconds"][phase] for r in default]
        label = f"{phase} ({fits[phase]['ms_per_100k_rows']:.0f} ms/100k)"
        (dots,) = left.plot(rows / 1e6, ys, "o", label=label)
        f = fits[phase]
        left.plot(
            line_x / 1e6,
            f["intercept_ms"] / 1000 + f["ms_per_100k_rows"] / 1000 * line_x / 1e5,
            "-",
            color=dots.get_color(),
            alpha=0.6,
        )
    left.set_xlabel("vocabulary keys in the graph (millions)")
    left.set_ylabel("seconds")
    left.set_title(f"snapshot phases vs vocabulary size (dim {RankerConfig().dim})")
    left.legend(fontsize=7)
    widths = [r["dim"] for r in by_width]
    bottom = np.zeros(len(by_width))
    for phase in PHASES:
        vals = np.array([r["seconds"][phase] for r in by_width])
        right.bar([str(w) for w in widths], vals, bottom=bottom, label=phase)
        bottom += vals
    right.set_xlabel(f"embedding width at {WIDTH_SIZE:,} items")
    right.set_ylabel("seconds")
    right.set_title("snapshot phases vs width")
    right.legend(fontsize=7)
    path = save_figure(fig, out, "snapshot")
    plt.close(fig)
    return path
