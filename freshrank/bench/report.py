"""The README's benchmark table, from the JSON a ``freshrank bench`` run left in a directory.

    python -m freshrank.bench.report docs/bench

Only figures present in the files are printed; a benchmark that did not run shows as absent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def _load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    return dict(orjson.loads(path.read_bytes())) if path.exists() else None


def _quality_targets(targets: dict[str, Any]) -> str:
    text = "vs static +0.05 {} · best baseline +0.01 {}".format(
        _met(targets.get("freshrank_beats_static_by_0.05_auc")),
        _met(targets.get("freshrank_beats_best_baseline_by_0.01")),
    )
    share = targets.get("freshrank_share_of_oracle_lift_0.9")
    if share is not None:
        text += f" · ≥ 0.90 of the oracle's lift {_met(share)} ({share.get('share')})"
    return text


def _met(target: dict[str, Any] | None) -> str:
    if target is None:
        return "–"
    return "met" if target.get("met") else "**not met**"


def rows(directory: Path) -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, value, target) rows."""
    out: list[tuple[str, str, str, str]] = []
    t = _load(directory, "throughput")
    if t:
        bare = t["bare_loop"]["samples_per_s"]
        out.append(("throughput", "bare PyTorch loop (the limit)", f"{bare:,.0f} samples/s", ""))
        for key, label in (("without_exports", "without exports"), ("with_exports", "publishing every 2 s")):
            r = t[key]
            target = t["targets"][f"ratio_to_bare_{key}"]
            out.append(
                (
                    "throughput",
                    f"updater end to end, {label}",
                    f"{r['samples_per_s']:,.0f} samples/s = {r['ratio_to_bare']:.2f} of bare",
                    f"≥ {target['target']} {_met(target)}",
                )
            )
        for key, label in (
            ("without_exports_1_ingest_worker", "1 ingest worker process"),
            ("without_exports_2_ingest_workers", "2 ingest worker processes"),
        ):
            r = t.get(key)
            if not r:
                continue
            target = t["targets"].get(f"ratio_to_bare_{key.removeprefix('without_exports_')}")
            per_core = r.get("samples_per_cpu_s_ingest_workers")
            out.append(
                (
                    "throughput",
                    f"updater end to end, without exports, {label}",
                    f"{r['samples_per_s']:,.0f} samples/s = {r['ratio_to_bare']:.2f} of bare"
                    + (f" · ingest {per_core:,.0f} samples per worker CPU-second" if per_core else ""),
                    f"≥ {target['target']} {_met(target)}" if target else "",
                )
            )
        bare_only = t.get("without_exports_unmeasured")
        if bare_only:
            out.append(
                (
                    "throughput",
                    "updater end to end, without exports, no impressions scored on arrival",
                    f"{bare_only['samples_per_s']:,.0f} samples/s = {bare_only['ratio_to_bare']:.2f} of bare",
                    "",
                )
            )
            if "prequential_auc_mid_stream" in bare_only:
                out.append(
                    (
                        "throughput",
                        "same work: AUC of samples scored as learned, mid-stream, bare / updater",
                        f"{t['bare_loop']['prequential_auc_mid_stream']:.3f} / "
                        f"{bare_only['prequential_auc_mid_stream']:.3f}",
                        "",
                    )
                )
    f = _load(directory, "freshness")
    if f:
        for rate, r in f["rates"].items():
            q = r["freshness_s"]
            target = ""
            if rate == "2000":
                target = "p50 ≤ 1 s {} · p99 ≤ 2.5 s {}".format(
                    _met(f["targets"]["p50_at_2000_s"]), _met(f["targets"]["p99_at_2000_s"])
                )
            out.append(
                (
                    "freshness",
                    f"{int(rate):,} events/s (measured {r['events_per_s']:,.0f}), deltas every 0.5 s,"
                    f" versions every {r['publish_interval_s']:g} s, p50 / p95 / p99",
                    f"{q['p50']:.2f} / {q['p95']:.2f} / {q['p99']:.2f} s",
                    target,
                )
            )
        runs = [
            ("no_deltas_2000", "2,000 events/s, no deltas (versions every 2 s)"),
            ("frequent_snapshots_2000", "2,000 events/s, deltas, versions every 2 s"),
            ("large_vocab_2000", "2,000 events/s, deltas, 150k items and users"),
        ]
        runs += [
            (rows, f"2,000 events/s, deltas, versions every 30 s, {int(rows):,} embedding rows")
            for rows in f["rows"]
        ]
        for key, label in runs:
            r = f["rows"][key] if key in f["rows"] else f[key]
            q = r["freshness_s"]
            target = ""
            if key == str(max(int(k) for k in f["rows"])):
                target = "within 20 % at every size " + _met(f["targets"]["within_20pct_at_every_size"])
            out.append(
                (
                    "freshness",
                    f"{label}, p50 / p95 / p99 (max consumer lag {r['max_consumer_lag']})",
                    f"{q['p50']:.2f} / {q['p95']:.2f} / {q['p99']:.2f} s",
                    target,
                )
            )
        launch = f["launch"]
        seconds = launch["time_to_top_s"]
        value = (
            f"{seconds} s (from rank {launch['rank_before']})" if seconds is not None else "not within 60 s"
        )
        by = (
            f" (version {launch['served_by_version']}, delta {launch.get('served_by_delta')})"
            if seconds
            else ""
        )
        target = "≤ 2 s " + _met(f["targets"]["launch_on_top_within_2_s"])
        out.append(("freshness", "a new item with every click → top of Triton's ranking", value + by, target))
    s = _load(directory, "snapshot")
    if s:
        fit = s["fit_time_vs_rows"]["total"]
        out.append(
            (
                "snapshot",
                "export + check + publish + load, fit",
                f"{fit['intercept_ms'] / 1000:.2f} s + {fit['ms_per_100k_rows']:.0f} ms per 100k rows",
                "",
            )
        )
        for case in s["cases"]:
            if case["dim"] == s["cases"][0]["dim"]:
                total = sum(v for k, v in case["seconds"].items() if k != "first_infer")
                out.append(
                    (
                        "snapshot",
                        f"{case['items']:,} items ({case['rows']:,} rows, {case['bytes'] / 2**20:,.0f} MiB)",
                        f"{total:.2f} s (Triton load {case['seconds']['load']:.2f} s)",
                        "",
                    )
                )
    v = _load(directory, "serving")
    if v:
        peaks = v["peaks"]
        out.append(
            ("serving", "onnxruntime in process (the limit)", f"{peaks['in_process_rps']:,.0f} req/s", "")
        )
        out.append(
            (
                "serving",
                "Triton gRPC / HTTP peak, 100 candidates",
                f"{peaks['grpc_rps']:,.0f} / {peaks['http_rps']:,.0f} req/s = "
                f"{v['ratios']['grpc_peak_over_in_process']:.2f} / "
                f"{v['ratios']['http_peak_over_in_process']:.2f}",
                f"gRPC ≥ 0.6 {_met(v['targets']['grpc_ratio'])}",
            )
        )
        half = v["open_loop_half_peak"]
        out.append(
            (
                "serving",
                f"gRPC at half the peak ({half['rps']:,.0f} req/s), p50 / p99",
                f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f} ms",
                f"p99 ≤ {v['targets']['p99_at_half_peak_ms']['target']:g} ms "
                f"{_met(v['targets']['p99_at_half_peak_ms'])}",
            )
        )
        grpc_peak = max(v["curves"]["grpc"], key=lambda r: r["rps"])
        if "triton_cpu_ms" in grpc_peak:
            inproc = v["in_process"][-1]
            out.append(
                (
                    "serving",
                    "CPU per request at the gRPC peak: client / Triton (in process)",
                    f"{grpc_peak['client_cpu_ms']:.2f} / {grpc_peak['triton_cpu_ms']:.2f} ms "
                    f"({1000 * inproc['threads'] / inproc['rps']:.2f} ms); "
                    f"{v['requests_per_execute']['grpc']} requests per execute",
                    "",
                )
            )
        for n, row in v.get("candidates", {}).items():
            out.append(
                (
                    "serving",
                    f"{n} candidates at concurrency 4: in process / gRPC / HTTP",
                    f"{row['in_process']['rps']:,.0f} / {row['grpc']['rps']:,.0f} / "
                    f"{row['http']['rps']:,.0f} req/s (gRPC {row['grpc_over_in_process']:.2f}, "
                    f"p99 {row['grpc']['p99_ms']:.1f} ms)",
                    "",
                )
            )
        d = v.get("deltas")
        if d:
            on, off = d["open_loop_with_deltas"], d["open_loop_without_deltas"]
            out.append(
                (
                    "serving",
                    f"gRPC at half the peak with a {d['rows_per_delta']:,}-row delta every"
                    f" {d['interval_s']:g} s / without, p99 (failed)",
                    f"{on['p99_ms']:.1f} ({on['errors']}) / {off['p99_ms']:.1f} ({off['errors']}) ms",
                    f"within 20 %, 0 failed {_met(v['targets']['deltas_p99_within_20pct_no_failures'])}",
                )
            )
            m = d["memory"]
            out.append(
                (
                    "serving",
                    f"Triton RSS over {m['deltas']:,} deltas applied in place",
                    f"{m['rss'][1]['rss_mb']:,.0f} MB after 1,000, {m['rss'][-1]['rss_mb']:,.0f} MB after"
                    f" {m['deltas']:,} ({m['ms_per_delta']} ms a delta)",
                    "",
                )
            )
    sw = _load(directory, "swaps")
    if sw:
        g, targets = sw["growth"], sw["targets"]
        flat = targets["rss_mb_per_100_swaps"]["met"] and targets["stubs_and_fds_flat"]["met"]
        out.append(
            (
                "swaps",
                f"{sw['swaps']} version swaps under gRPC + HTTP traffic: requests (failed)",
                f"{sw['requests']:,} ({sw['failed']}) in {sw['seconds']:,.0f} s",
                f"0 failed {_met(targets['no_failed_request'])}",
            )
        )
        out.append(
            (
                "swaps",
                f"Triton RSS, stubs, fds from swap {g['from_swap']} to {g['to_swap']}",
                f"{g['rss_mb'][0]:,.0f} → {g['rss_mb'][1]:,.0f} MB ({g['rss_mb_per_100_swaps']:+.1f} MB / 100"
                f" swaps); stubs {g['stubs'][0]} → {g['stubs'][1]}; fds {g['fds'][0]} → {g['fds'][1]}",
                f"≤ {targets['rss_mb_per_100_swaps']['target']:g} MB / 100 swaps, stubs and fds flat "
                + _met({"met": flat}),
            )
        )
    qd = _load(directory, "quality")
    if qd:
        auc = qd["after_drift_auc"]
        sps = qd["samples_per_s"]
        value = " · ".join(f"{m} {auc[m]:.3f} ({sps[m]:,.0f}/s)" for m in auc)
        targets = qd["targets"]
        target = _quality_targets(targets)
        out.append(("quality", "AUC after the drift (samples/s), simulator", value, target))
        for seed, d in qd.get("seeds", {}).items():
            if seed == str(qd.get("stream", {}).get("simulator_seed")):
                continue
            auc = d["after_drift_auc"]
            value = " · ".join(f"{m} {auc[m]:.3f}" for m in auc)
            targets = d["targets"]
            target = _quality_targets(targets)
            out.append(("quality", f"AUC after the drift, simulator seed {seed} (held out)", value, target))
        warm = qd.get("warm_start")
        if warm:
            minutes = [k for k in warm["warm"] if k.startswith("first_")]
            label = " / ".join(k.split("_")[1] for k in minutes)
            value = " · ".join(
                f"{name} " + " / ".join(f"{warm[name][k]:.3f}" for k in minutes) for name in ("warm", "cold")
            )
            history = warm["history"]
            out.append(
                (
                    "quality",
                    f"warm start ({history['samples_trained']:,} samples of history) vs cold: AUC over "
                    f"the first {label} min live",
                    value,
                    "",
                )
            )
    gd = _load(directory, "gate")
    if gd:
        for stream, rules in gd["streams"].items():
            value = " · ".join(
                f"{name} {r['rejected']}/{r['candidates']} rejected, {len(r['rollbacks'])} rollbacks, "
                f"served AUC {r['served_auc']}, live age mean {r['live_age_mean_s']} s"
                for name, r in rules.items()
            )
            if stream == "poisoned":
                target = f"poisoning caught {_met(gd['targets']['poisoning_caught'])}"
            else:
                target = f"≤ 10% rejected {_met(gd['targets']['clean_rejection_rate_at_most_0.10'])}"
            rate = gd.get("fast_stream", {}).get("rate") if stream == "clean_fast" else gd["stream"]["rate"]
            figure = f"{stream.replace('_fast', '')} stream at {rate:,.0f} events/s, each rule"
            out.append(("gate", figure, value, target))
    rd = _load(directory, "replay")
    if rd:
        for name, d in rd["datasets"].items():
            if "after_drift_auc" not in d:
                out.append(("replay", name, f"skipped: {d.get('skipped', '?')}", ""))
                continue
            auc = d["after_drift_auc"]
            value = " · ".join(f"{m} {auc[m]:.3f}" for m in auc)
            best = d.get("targets", {}).get("freshrank_beats_best_baseline_by_0.01")
            target = f"best baseline +0.01 {_met(best)}" if best else ""
            out.append(("replay", f"{name}: AUC after the drift ({d['samples']:,} samples)", value, target))
    vd = _load(directory, "vocab")
    if vd:
        for name, d in vd["streams"].items():
            if "expiry" not in d:
                out.append(("vocab", name, f"skipped: {d.get('skipped', '?')}", ""))
                continue
            caps = d["capacities"]
            value = (
                " · ".join(f"expiry {label} {r['auc_after_drift']:.3f}" for label, r in d["expiry"].items())
                + f" · full capacity {d['full_capacity']['auc_after_drift']:.3f}"
            )
            figure = (
                f"{name}: AUC after the drift, {caps['user_capacity']:,} user / "
                f"{caps['item_capacity']:,} item rows"
            )
            out.append(("vocab", figure, value, ""))
    td = _load(directory, "text")
    if td:
        v = td["variants"]
        for label, key in (("AUC, all samples", "auc_overall"), ("AUC among cold impressions", "cold_auc")):
            value = f"with text {v['text'][key]:.3f} · without {v['no_text'][key]:.3f}"
            out.append(("text", label, value, ""))
        for kind, p in v["text"]["probe"].items():
            other = v["no_text"]["probe"][kind]
            value = f"with text {p['top3_rate']:.0%} · without {other['top3_rate']:.0%}"
            out.append(("text", f"new item in the top 3 of 10, query by {kind.replace('_', ' ')}", value, ""))
        size = f"{v['text']['export']['size_mb']} MB · without {v['no_text']['export']['size_mb']} MB"
        out.append(("text", "version size", f"with text {size}", ""))
    return out


def markdown(directory: Path) -> str:
    lines = ["| benchmark | figure | value | target |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(directory)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")))
