"""A replica set as one model server: live only when every replica serves it, a failing replica
blocks promotion and is named, one that comes back is caught up by the reconcile."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.fleet import ReplicaSet
from exporter.publish import Publisher
from exporter.records import ListSink
from exporter.release import ReleaseManager, ReleaseOutcome
from rankcore.errors import DependencyError
from tests.unit.exporter.fakes import FakeServer, Load, snapshot, trained
from tests.unit.exporter.test_release import GATE


def fleet(tmp_path: Path) -> tuple[ReleaseManager, FakeServer, FakeServer, Publisher, ListSink]:
    publisher = Publisher(tmp_path / "repo")
    a, b = FakeServer(publisher.model_dir), FakeServer(publisher.model_dir)
    a.url, b.url = "fake://a", "fake://b"
    sink = ListSink()
    release = ReleaseManager(
        publisher,
        sink,
        GATE,
        server=ReplicaSet([a, b]),
        writer_token=lambda: 7,
        watch_s=0.05,
        clock=lambda: 1.0,
    )
    return release, a, b, publisher, sink


async def test_a_version_is_live_once_every_replica_serves_it(tmp_path: Path) -> None:
    release, a, b, publisher, _ = fleet(tmp_path)
    outcome = await release.release(snapshot(trained()))
    assert outcome == ReleaseOutcome("live", 1, 1)
    assert a.loads == b.loads == [Load(None, publisher.config_text())]
    replicas = release.server.replicas()  # type: ignore[union-attr]
    assert [(r["url"], r["ok"], r["state"]) for r in replicas] == [
        ("fake://a", True, (1, 0)),
        ("fake://b", True, (1, 0)),
    ]


async def test_a_replica_down_blocks_promotion_is_named_and_is_caught_up_when_back(tmp_path: Path) -> None:
    release, a, b, _, _ = fleet(tmp_path)
    await release.release(snapshot(trained()))
    b.down = True
    outcome = await release.release(snapshot(trained()))
    # Not live: b did not load it; what every replica serves is still version 1.
    assert (outcome.kind, outcome.version, outcome.served) == ("published", 2, 1)
    assert "1 of 2 replicas failed to load" in str(outcome.reason) and "fake://b" in str(outcome.reason)
    assert a.current == 2 and b.current == 1
    states = {r["url"]: r for r in release.server.replicas()}  # type: ignore[union-attr]
    assert states["fake://b"]["ok"] is False and "down" in states["fake://b"]["error"]
    # Back, as a restarted Triton: nothing loaded. The reconcile loads the newest on the fleet.
    b.down, b.current = False, None
    await release.reconcile()
    assert a.current == b.current == 2
    assert release.served_version == 2 and release.health.ok is True


async def test_the_fleet_answers_the_lowest_state_and_fails_when_one_does_not_answer(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path / "repo")
    (publisher.model_dir / "1").mkdir()
    (publisher.model_dir / "2").mkdir()
    a, b = FakeServer(publisher.model_dir), FakeServer(publisher.model_dir)
    a.url, b.url = "fake://a", "fake://b"
    a.current, b.current = 2, 1
    replicas = ReplicaSet([a, b])
    assert await replicas.probe_state() == (1, 0) and await replicas.served_version() == 1
    b.current = None
    assert await replicas.served_version() is None
    with pytest.raises(DependencyError, match=r"1 of 2 replicas failed to answer: fake://b"):
        await replicas.probe()
    with pytest.raises(ValueError, match="at least one"):
        ReplicaSet([])
