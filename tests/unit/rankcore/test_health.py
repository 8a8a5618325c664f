"""Dependency health: up/down transitions, outages and their length."""

from __future__ import annotations

import logging

import pytest

from rankcore import health
from rankcore.health import Health


def test_outages_are_counted_once_per_down_edge_and_measured() -> None:
    h = Health("kafka")
    assert h.ok is None and h.to_dict() == {
        "ok": None,
        "since": None,
        "error": None,
        "outages": 0,
        "longest_outage_s": 0.0,
    }
    h.mark(True, now=100.0)
    h.mark(True, now=105.0)
    assert h.ok is True and h.since == 100.0 and h.outages == 0  # unchanged: still up since 100
    h.mark(False, "connection refused", now=110.0)
    h.mark(False, "timed out", now=115.0)
    assert h.ok is False and h.since == 110.0 and h.outages == 1
    assert h.error == "timed out"  # the latest reason, while down
    h.mark(True, now=130.0)
    assert h.ok is True and h.since == 130.0 and h.error is None
    assert h.longest_outage_s == 20.0
    h.mark(False, "reset", now=200.0)
    h.mark(True, now=205.0)  # shorter: the longest stays
    assert h.outages == 2 and h.longest_outage_s == 20.0
    h.mark(False, "reset", now=300.0)
    h.mark(True, now=350.26)
    assert h.outages == 3 and h.longest_outage_s == pytest.approx(50.26)
    assert h.to_dict() == {
        "ok": True,
        "since": 350.26,
        "error": None,
        "outages": 3,
        "longest_outage_s": 50.3,
    }


def test_down_at_the_first_check_is_an_outage() -> None:
    h = Health("postgres")
    h.mark(False, "no route to host", now=5.0)
    assert h.outages == 1 and h.error == "no route to host" and h.since == 5.0
    assert h.to_dict()["ok"] is False and h.to_dict()["error"] == "no route to host"
    h.mark(True, now=8.5)
    assert h.longest_outage_s == 3.5 and h.error is None


def test_now_defaults_to_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health.time, "time", lambda: 1_000.0)
    h = Health("triton")
    h.mark(False, "down")
    monkeypatch.setattr(health.time, "time", lambda: 1_042.0)
    h.mark(True)
    assert h.since == 1_042.0 and h.longest_outage_s == 42.0


def test_each_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    h = Health("kafka")
    with caplog.at_level(logging.WARNING, logger="rankcore.health"):
        h.mark(True, now=1.0)
        for t in (2.0, 3.0, 4.0):
            h.mark(False, "refused", now=t)
        h.mark(True, now=6.0)
        h.mark(True, now=7.0)
    assert [r.getMessage() for r in caplog.records] == [
        "kafka is unavailable: refused",
        "kafka is back after 4.0 s",
    ]
