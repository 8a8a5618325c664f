"""What operators see, on the real stack: the updater's /metrics, Triton's, and the live
dashboard drawn by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.triton import Candidate, TritonModel
from freshrank.stack import free_port
from tests.e2e.helpers import Lane, event, now_ms, traffic, wait_for
from updater.service import Updater
from updater.settings import UpdaterSettings

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# As root in a closed network: no sandbox, no GPU, nothing that dials out.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not in the scrape: {sorted({n for n, _ in samples})}"
    return samples[key]


def browse(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert Path(CHROMIUM).is_file(), "the dashboard test needs Debian's chromium (`make test` installs it)"
    profile = tmp / f"chromium-{len(list(tmp.glob('chromium-*')))}"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


# On the shared stack: its own lane, and its own port for the metrics.
async def test_a_scrape_moves_with_the_traffic_and_the_dashboard_draws_it_live(
    lane: Lane, settings_for: Callable[..., UpdaterSettings], tmp_path: Path
) -> None:
    port = free_port()
    metrics, page = f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{port}/"
    updater = Updater.from_settings(settings_for(lane, metrics_port=port))
    async with updater:
        await wait_for(lambda: updater.status()["dependencies"]["kafka"]["ok"], 30, "the consumer up")
        before = await asyncio.to_thread(scrape, metrics)
        assert value(before, "freshrank_writer") == 1
        assert value(before, "freshrank_events_consumed_total") == 0

        start = now_ms() - 60_000
        records, expected = traffic(300, start)
        records.append(event("impression", start + 60_000, "u0", "closer", "x", "closer"))
        records += [(None, b"{not json"), (b"u1", b'{"type":"click"}')]
        await lane.send(records)
        await wait_for(lambda: updater.learner.samples_trained >= expected, 60, "all samples trained")
        await wait_for(
            lambda: updater.freshness_settled and updater.release.samples_released >= expected,
            60,
            "a served version with every sample",
        )
        async with TritonModel(lane.triton_grpc, model=lane.model_name) as triton:
            await triton.rank("u1", "red shoes", [Candidate("hot", "shoes", "acme", 49.0)])
        await asyncio.sleep(1.2)  # one more status tick for the dashboard's history
        after = await asyncio.to_thread(scrape, metrics)

        # The browser: the page polls once a second; 5 s of its time give it several rounds.
        dom = (
            await asyncio.to_thread(browse, page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
        ).stdout
        shot = tmp_path / "dashboard.png"
        await asyncio.to_thread(
            browse,
            page,
            tmp_path,
            "--window-size=1440,1000",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
        )
        status = updater.status()

    assert value(after, "freshrank_events_consumed_total") == len(records)
    assert value(after, "freshrank_dead_letters_total", reason="not_json") == 1
    assert value(after, "freshrank_dead_letters_total", reason="missing_field") == 1
    assert value(after, "freshrank_samples_trained_total") == expected
    published = value(after, "freshrank_versions_published_total")
    assert published >= 1
    assert value(after, "freshrank_served_version") == status["served_version"]
    assert value(after, "freshrank_freshness_seconds_count") > 0
    for stage in ("export", "gate", "load"):
        assert value(after, "freshrank_release_stage_duration_seconds_count", stage=stage) >= 1, stage
    for dependency in ("kafka", "postgres", "triton"):
        assert value(after, "freshrank_dependency_up", dependency=dependency) == 1
    lags = {dict(labels)["partition"] for name, labels in after if name == "freshrank_consumer_lag_records"}
    assert lags, "a lag per partition"
    assert value(after, "freshrank_registry_outbox_records") == 0
    assert value(after, "process_resident_memory_bytes") > 0

    triton = await asyncio.to_thread(scrape, lane.stack.triton.metrics_url)
    served = [
        v
        for (name, labels), v in triton.items()
        if name in ("nv_inference_request_success", "nv_inference_request_success_total")
        and dict(labels).get("model") == lane.model_name
    ]
    assert sum(served) >= 1, f"Triton counts the request: {sorted(set(triton))[:40]}"

    refreshes = int(re.search(r'data-refreshes="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    assert refreshes >= 2, "the page polled more than once"
    shown = re.search(r'id="events-consumed" data-value="(\d+)"', dom)
    assert shown is not None and int(shown.group(1)) == len(records)
    assert 'data-kind="live"' in dom, "the version timeline shows a version going live"
    assert 'data-name="not_json"' in dom, "dead letters by reason"
    assert 'class="pill ok">live<' in dom
    assert dom.count("<canvas") >= 4, "the four charts drew"
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:4] == b"\x89PNG"
