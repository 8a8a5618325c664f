"""The Grafana dashboard of compose.yaml, built with Grafana's own typed builders.

``python -m freshrank.grafana`` writes ``deploy/grafana/dashboards/freshrank.json``, which
Grafana's provisioning loads (``deploy/grafana/provisioning/``). The panels are the live
dashboard's (``updater/dashboard/``) over Prometheus: events/s, lag, AUC with versions marked,
freshness percentiles, the version timeline with rejections and rollbacks, dead letters by
reason. Every query is PromQL that ``promtool`` parses (the tests check it with the rules file)
over metrics the updater exports (the tests check those names against a scrape).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import AnnotationQuery, Dashboard, Row, TimePicker
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

DASHBOARD_FILE = Path("deploy/grafana/dashboards/freshrank.json")
# The provisioned datasource (deploy/grafana/provisioning/datasources/prometheus.yml).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="freshrank-prometheus")
WIDTH = 24
LEGEND = (
    common.VizLegendOptions()
    .show_legend(True)
    .display_mode(LegendDisplayMode.LIST)
    .placement(LegendPlacement.BOTTOM)
)
TOOLTIP = common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.NONE)


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def series(title: str, unit: str, *queries: prometheus.Dataquery, at: GridPos) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).grid_pos(at)
    panel = panel.line_width(2).fill_opacity(8).span_nulls(True).legend(LEGEND).tooltip(TOOLTIP)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def figure(title: str, unit: str, q: prometheus.Dataquery, at: GridPos, decimals: int = 0) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .decimals(decimals)
        .datasource(DATASOURCE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(BigValueGraphMode.AREA)
        .with_target(q)
        .grid_pos(at)
    )


# Everything the panels ask Prometheus, by panel: the tests parse each with promtool.
RATE = "[$__rate_interval]"
QUERIES: dict[str, list[tuple[str, str]]] = {
    "events": [
        (f"sum(rate(freshrank_events_consumed_total{RATE}))", "events/s"),
        (f"sum(rate(freshrank_samples_trained_total{RATE}))", "samples trained/s"),
        (f"sum(rate(freshrank_dead_letters_total{RATE}))", "dead letters/s"),
    ],
    "lag": [("sum by (topic, partition) (freshrank_consumer_lag_records)", "{{topic}}:{{partition}}")],
    "auc": [
        ("max(freshrank_prequential_auc)", "prequential"),
        ("max(freshrank_holdout_auc)", "held-out (served)"),
    ],
    "freshness": [
        (f"histogram_quantile({q}, sum by (le) (rate(freshrank_freshness_seconds_bucket{RATE})))", f"p{p}")
        for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))
    ],
    "versions": [
        ("max(freshrank_served_version)", "served version"),
        ("max(freshrank_live_version)", "live (gate's baseline)"),
    ],
    "releases": [
        ("sum(increase(freshrank_versions_published_total[5m]))", "published"),
        ("sum(increase(freshrank_versions_rejected_total[5m]))", "rejected"),
        ("sum(increase(freshrank_rollbacks_total[5m]))", "rolled back"),
        ("sum(increase(freshrank_serving_holds_total[5m]))", "holds"),
    ],
    "dead_letters": [("sum by (reason) (increase(freshrank_dead_letters_total[1h]))", "{{reason}}")],
    "stages": [
        (
            "histogram_quantile(0.95, sum by (le, stage) "
            f"(rate(freshrank_release_stage_duration_seconds_bucket{RATE})))",
            "{{stage}} p95",
        )
    ],
    "dependencies": [("min by (dependency) (freshrank_dependency_up)", "{{dependency}}")],
    "triton": [
        (f"sum(rate(nv_inference_request_success{RATE}))", "requests/s"),
        (
            f"sum(rate(nv_inference_request_duration_us{RATE})) / 1e6 "
            f"/ sum(rate(nv_inference_request_success{RATE}))",
            "mean request seconds",
        ),
    ],
    "stats": [
        (f"sum(rate(freshrank_events_consumed_total{RATE}))", "events/s"),
        ("sum(freshrank_consumer_lag_records)", "lag"),
        ("max(freshrank_served_version)", "served version"),
        ("max(freshrank_holdout_auc)", "held-out AUC"),
        (f"histogram_quantile(0.95, sum by (le) (rate(freshrank_freshness_seconds_bucket{RATE})))", "p95"),
        ("sum(freshrank_registry_outbox_records)", "outbox"),
    ],
}
# Version changes and rollbacks, drawn on every time-series panel.
ANNOTATIONS = {
    "versions": "changes(max(freshrank_served_version)[2m:15s]) > 0",
    "rollbacks": "increase(sum(freshrank_rollbacks_total)[2m:15s]) > 0",
    "rejections": "increase(sum(freshrank_versions_rejected_total)[2m:15s]) > 0",
}


def _q(panel: str) -> list[prometheus.Dataquery]:
    return [query(expr, legend) for expr, legend in QUERIES[panel]]


def build() -> Dashboard:
    half = WIDTH // 2
    stats = QUERIES["stats"]
    units = ("ops", "short", "none", "none", "s", "short")
    d = (
        Dashboard("freshrank")
        .uid("freshrank")
        .description("Online learning to rank: ingest, training, the gate, serving (updater and Triton)")
        .tags(["freshrank"])
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .timepicker(TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m"]))
    )
    for name, expr in ANNOTATIONS.items():
        color = {"versions": "green", "rollbacks": "orange", "rejections": "red"}[name]
        d = d.annotation(
            AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(color).expr(expr)
        )
    for i, ((expr, legend), unit) in enumerate(zip(stats, units, strict=True)):
        d = d.with_panel(
            figure(
                legend,
                unit,
                query(expr, legend),
                GridPos(h=4, w=4, x=4 * i, y=0),
                3 if "AUC" in legend else 0,
            )
        )
    d = d.with_row(Row("Stream").grid_pos(GridPos(h=1, w=WIDTH, x=0, y=4)))
    d = d.with_panel(
        series("Events, samples and dead letters", "ops", *_q("events"), at=GridPos(h=8, w=half, x=0, y=5))
    )
    d = d.with_panel(
        series("Consumer lag by partition", "short", *_q("lag"), at=GridPos(h=8, w=half, x=half, y=5))
    )
    d = d.with_row(Row("Model").grid_pos(GridPos(h=1, w=WIDTH, x=0, y=13)))
    d = d.with_panel(
        series("AUC: prequential and held-out", "percentunit", *_q("auc"), at=GridPos(h=8, w=half, x=0, y=14))
        .min(0.4)
        .max(1)
    )
    d = d.with_panel(
        series(
            "Freshness: action to the first answer that learned it",
            "s",
            *_q("freshness"),
            at=GridPos(h=8, w=half, x=half, y=14),
        )
    )
    d = d.with_row(Row("Releases").grid_pos(GridPos(h=1, w=WIDTH, x=0, y=22)))
    d = d.with_panel(
        series("Served version", "none", *_q("versions"), at=GridPos(h=8, w=8, x=0, y=23)).decimals(0)
    )
    d = d.with_panel(
        series(
            "Versions published, rejected, rolled back (5 min)",
            "short",
            *_q("releases"),
            at=GridPos(h=8, w=8, x=8, y=23),
        )
    )
    d = d.with_panel(
        series("Release stage durations (p95)", "s", *_q("stages"), at=GridPos(h=8, w=8, x=16, y=23))
    )
    dead = (
        bargauge.Panel()
        .title("Dead letters by reason (last hour)")
        .unit("short")
        .datasource(DATASOURCE)
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .grid_pos(GridPos(h=8, w=8, x=0, y=32))
    )
    for q in _q("dead_letters"):
        dead = dead.with_target(q)
    d = d.with_row(Row("Health").grid_pos(GridPos(h=1, w=WIDTH, x=0, y=31)))
    d = d.with_panel(dead)
    d = d.with_panel(
        series(
            "Dependencies up (1) or down (0)", "none", *_q("dependencies"), at=GridPos(h=8, w=8, x=8, y=32)
        )
    )
    d = d.with_panel(
        series("Triton: requests and mean latency", "short", *_q("triton"), at=GridPos(h=8, w=8, x=16, y=32))
    )
    return d


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or [str(DASHBOARD_FILE)])[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
