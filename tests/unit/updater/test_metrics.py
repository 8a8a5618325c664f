"""The updater's Prometheus metrics, the dashboard's history and the endpoint serving both."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankcore.errors import ConfigError
from tests.unit.updater.fakes import (
    FakeRegistry,
    InMemorySource,
    Log,
    ScriptedLease,
    TinyServer,
    blank_status,
    settings,
    traffic,
    wait_for,
)
from updater.history import History
from updater.service import Updater
from updater.web import WebEndpoint

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: bytes) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def test_a_scrape_reads_the_status_and_the_histograms_move_with_each_release(tmp_path: Path) -> None:
    log = Log()
    s = settings(tmp_path)
    values = [b"{not json", *traffic(40, int(time.time() * 1000))[0]]
    updater = Updater(
        s,
        source=InMemorySource(log, values),
        server=TinyServer(log, s.repository / s.model_name),
        registry=FakeRegistry(log),
        lease=ScriptedLease(log, []),
    )
    idle = parse(updater.metrics.exposition())
    assert idle[("freshrank_writer", ())] == 0  # not started: no lease, nothing else to say
    assert "freshrank_events_consumed_total" not in names(idle)
    async with updater:
        await wait_for(lambda: updater.learner.samples_trained == 80, what="every sample learned")
        await wait_for(lambda: updater.release.served_version is not None, what="a version served")
        await wait_for(lambda: len(updater.release.freshness.by_action) > 0, what="freshness measured")
        got = parse(updater.metrics.exposition())
        status = updater.status()  # no await between: the same moment as the scrape
    assert got[("freshrank_writer", ())] == 1
    assert got[("freshrank_events_consumed_total", ())] == len(values)
    assert got[("freshrank_dead_letters_total", (("reason", "not_json"),))] == 1
    assert got[("freshrank_samples_trained_total", ())] == 80
    assert got[("freshrank_consumer_lag_records", (("partition", "0"), ("topic", "events")))] == 0
    assert got[("freshrank_served_version", ())] == status["served_version"]
    assert got[("freshrank_freshness_seconds_count", ())] > 0
    for stage in ("export", "gate", "load"):
        assert got[("freshrank_release_stage_duration_seconds_count", (("stage", stage),))] >= 1
    assert got[("freshrank_release_stage_duration_seconds_count", (("stage", "check"),))] == 0
    assert got[("freshrank_updater_info", (("device", "cpu"), ("rank", "0"), ("world_size", "1")))] == 1
    assert "process_resident_memory_bytes" in names(got)
    # Conventions: counters end in _total; no label takes an unbounded value (ids, versions).
    for name, labels in got:
        assert name.startswith(("freshrank_", "process_", "python_")), name
        assert {k for k, _ in labels} <= {
            "reason",
            "dependency",
            "feature",
            "topic",
            "partition",
            "stage",
            "le",
            "device",
            "rank",
            "world_size",
        }
    # The timeline the dashboard draws: the version that went live.
    assert any(e["kind"] == "live" and e["version"] == status["served_version"] for e in status["timeline"])


def test_the_history_keeps_rates_percentiles_and_its_bound() -> None:
    h = History(points=3)
    h.record(blank_status(100.0, 0, 0, 0), [])
    h.record(
        blank_status(102.0, 2_000, 10, 1_000, consumer_lag=5, served_holdout={"auc": 0.71}), [1.0, 2.0, 3.0]
    )
    cols = h.columns()
    assert cols["events_per_s"] == [None, 1_000.0]  # no rate at the first point
    assert cols["dead_letters_per_s"] == [None, 5.0]
    assert cols["samples_per_s"] == [None, 500.0]
    assert cols["lag"] == [None, 5] and cols["holdout_auc"] == [None, 0.71]
    assert cols["freshness_p50_s"] == [None, 2.0]
    # A restarted process's counters start again: that point has no rate, not a negative one.
    h.record(blank_status(103.0, 10, 0, 0), [])
    h.record(blank_status(104.0, 30, 0, 0), [])
    cols = h.columns()
    assert len(h) == 3 and cols["t"] == [102.0, 103.0, 104.0]
    assert cols["events_per_s"] == [1_000.0, None, 20.0]


async def test_the_endpoint_serves_metrics_the_dashboard_and_its_assets_and_refuses_a_taken_port() -> None:
    endpoint = WebEndpoint(
        "127.0.0.1", 0, lambda: b"freshrank_writer 1.0\n", lambda: {"now": {"served_version": 3}}
    )
    async with endpoint, aiohttp.ClientSession() as http:
        assert endpoint.port > 0
        async with http.get(f"{endpoint.url}metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
            assert await r.read() == b"freshrank_writer 1.0\n"
        async with http.get(f"{endpoint.url}api/dashboard") as r:
            assert orjson.loads(await r.read()) == {"now": {"served_version": 3}}
        async with http.get(endpoint.url) as r:
            page = await r.text()
            assert r.status == 200 and "static/dashboard.js" in page and "static/uPlot.iife.min.js" in page
        for asset in ("dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css"):
            async with http.get(f"{endpoint.url}static/{asset}") as r:
                assert r.status == 200, asset
        async with http.get(f"{endpoint.url}static/../web.py") as r:
            assert r.status in (403, 404)
        taken = WebEndpoint("127.0.0.1", endpoint.port, lambda: b"", dict)
        with pytest.raises(ConfigError, match=f"expected 127.0.0.1:{endpoint.port} to be free"):
            await taken.start()
    await endpoint.stop()  # safe twice
