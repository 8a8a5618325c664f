"""``freshrank up`` as a user runs it, with ``status`` and ``rank`` against the live stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrank.stack import free_port, port_open

pytestmark = pytest.mark.e2e

FRESHRANK = [sys.executable, "-m", "freshrank.cli"]


def run_cli(*args: str) -> dict[str, object]:
    done = subprocess.run([*FRESHRANK, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


# A stack of its own: `freshrank up` starts (and stops) every process itself.
def test_up_runs_the_loop_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = {
        "--kafka-port": free_port(),
        "--triton-http-port": free_port(),
        "--triton-grpc-port": free_port(),
    }
    up = subprocess.Popen(
        [
            *FRESHRANK,
            "up",
            "--json",
            "--duration",
            "180",
            "--rate",
            "1000",
            "--publish-interval",  # versions often enough to count a few
            "2",
            "--state-dir",
            str(state),
            "--listen-host",
            "127.0.0.1",
            *(arg for flag, port in ports.items() for arg in (flag, str(port))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        status_file = state / "updater" / "status.json"
        deadline = time.monotonic() + 150
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert up.poll() is None, up.communicate()[1][-3000:]
            if status_file.exists():
                status = json.loads(status_file.read_text())
                # Past the warm-up: the first ~10 s have positives only (negatives wait for the
                # attribution window), which skews the prequential AUC until the window has turned over.
                if (status.get("live_version") or 0) >= 3 and int(
                    status.get("samples_trained") or 0
                ) >= 30_000:
                    break
            time.sleep(1.0)
        assert (status.get("live_version") or 0) >= 3 and int(status["samples_trained"]) >= 30_000, status

        live = run_cli("status", "--json", "--state-dir", str(state))
        for key in (
            "live_version",
            "served_version",
            "versions_published",
            "events_consumed",
            "samples_trained",
            "dead_letters",
            "consumer_lag",
        ):
            assert key in live, key
        assert live["served_version"] is not None and live["versions_published"] >= 3  # type: ignore[operator]

        ranked = run_cli(
            "rank",
            "--user",
            "u1",
            "--query",
            "phone",
            "--candidates",
            "5",
            "--json",
            "--state-dir",
            str(state),
        )
        items = ranked["items"]
        assert isinstance(items, list) and len(items) == 5
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
        assert ranked["version"] >= 3  # type: ignore[operator]
    finally:
        up.send_signal(signal.SIGINT)
        stdout, stderr = up.communicate(timeout=90)
    assert up.returncode == 0, stderr[-3000:]
    assert "kafka     127.0.0.1:" in stderr and "triton    http 127.0.0.1:" in stderr
    summary = json.loads(stdout)
    assert summary["versions_published"] >= 3
    assert summary["served_version"] == summary["live_version"]
    assert summary["events_consumed"] > 5_000 and summary["samples_trained"] > 1_000
    assert summary["prequential_auc"] > 0.5
    # The served version's held-out AUC: scored by one model on traffic it never learned.
    assert summary["served_holdout_auc"] is not None and summary["served_holdout_auc"] > 0.5
    assert summary["freshness_p50_s"] is not None and summary["freshness_p50_s"] > 0
    assert summary["dead_letters"] > 0  # the simulator mixes in invalid events
    # Every child process is gone: nothing listens on the ports any more.
    assert [flag for flag, port in ports.items() if port_open(port)] == []
    # No half-written version left behind.
    assert not list((state / "model_repository" / "ranker").glob(".tmp-*"))


def test_up_with_two_workers_trains_as_a_group_and_stops_them_with_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = [free_port(), free_port(), free_port()]
    up = subprocess.run(
        [
            *FRESHRANK,
            "up",
            "--json",
            "--duration",
            "45",
            "--rate",
            "1000",
            "--publish-interval",
            "5",
            "--workers",
            "2",
            "--state-dir",
            str(state),
            "--kafka-port",
            str(ports[0]),
            "--triton-http-port",
            str(ports[1]),
            "--triton-grpc-port",
            str(ports[2]),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    summary = json.loads(up.stdout)
    other = json.loads((state / "updater-1" / "status.json").read_text())
    rank_0 = summary["samples_trained_by_rank_0"]
    # Both ranks learned their own partitions' samples; the summary counts the group's.
    assert rank_0 > 0 and other["samples_trained"] > 0
    assert summary["samples_trained"] == rank_0 + other["samples_trained"]
    assert other["group"]["rank"] == 1 and other["group"]["world_size"] == 2
    assert summary["served_version"] is not None and summary["served_version"] == summary["live_version"]
    # The other rank stopped with rank 0 at the group's last checkpoint, and nothing listens any more.
    assert "updater stopped" in (state / "updater-1.log").read_text()
    assert [port for port in ports if port_open(port)] == []
