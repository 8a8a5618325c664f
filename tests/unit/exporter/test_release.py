"""The release cycle: ReleaseManager over a real Publisher, a fake model server and a list sink."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import ANY

import pytest

import exporter.release as release_module
from exporter.delta import DELTA_DIR, Delta, DeltaLog
from exporter.gate import GateSettings
from exporter.publish import ROLLED_BACK_PREFIX, Publisher
from exporter.records import AddVersion, ListSink, MarkLive, Serving, SetServing, SetStatus
from exporter.release import ReleaseManager, ReleaseOutcome, rollback_target
from rankcore.errors import FreshrankError
from tests.unit.exporter.fakes import LOAD_S, FakeServer, Load, snapshot, task_samples, trained

NOW = 1_000.0  # the release manager's clock: freshness is exact
GATE = GateSettings(min_samples=50)
HOLDOUT = task_samples(200, start=1_000)  # good models score AUC 1.0 on it, flipped ones 0.0
ROLLBACK_REASON = "held-out AUC 0.0000 fell below previous good 1.0000 - 0.05"


@dataclass
class Rig:
    release: ReleaseManager
    server: FakeServer
    sink: ListSink
    publisher: Publisher

    @property
    def ops(self) -> list[object]:
        return list(self.sink.ops)


def rig(
    tmp_path: Path,
    *,
    with_server: bool = True,
    down: bool = False,
    stale_index: bool = False,
    load_delay_s: float = 0.0,
    deltas: bool = False,
    watch_s: float = 0.05,
) -> Rig:
    publisher = Publisher(tmp_path / "repo")
    server = FakeServer(publisher.model_dir, down=down, stale_index=stale_index, load_delay_s=load_delay_s)
    sink = ListSink()
    release = ReleaseManager(
        publisher,
        sink,
        GATE,
        server=server if with_server else None,
        writer_token=lambda: 7,
        watch_s=watch_s,
        clock=lambda: NOW,
        deltas=DeltaLog(publisher.model_dir / DELTA_DIR) if deltas else None,
    )
    return Rig(release, server, sink, publisher)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s")
        await asyncio.sleep(0.01)


def digest(directory: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        data = f.read_bytes()
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


# ----------------------------------------------------------------- (a) the first release


async def test_first_release_publishes_loads_probes_and_records(tmp_path: Path) -> None:
    r = rig(tmp_path)
    good = trained()
    snap = snapshot(
        good,
        HOLDOUT,
        fresh=[999_000, 998_000],
        metrics={"prequential_auc": 0.5, "prequential_logloss": math.nan},
    )
    outcome = await r.release.release(snap)

    assert outcome == ReleaseOutcome("live", 1, 1)
    assert r.publisher.versions() == [1]
    assert r.server.loads == [Load(None, r.publisher.config_text())]  # the newest directory
    assert r.server.probes == 1 and r.server.current == 1
    assert [type(op) for op in r.ops] == [AddVersion, MarkLive]
    added, live = r.ops
    assert isinstance(added, AddVersion) and isinstance(live, MarkLive)
    assert (added.version, added.status, added.reason) == (1, "published", None)
    assert added.offsets == {"events:0": 120} and added.samples_seen == 120
    assert added.path == str(r.publisher.model_dir / "1")
    assert (added.size_bytes, added.sha256) == digest(r.publisher.model_dir / "1")
    assert added.metrics["writer_token"] == 7
    assert added.metrics["prequential_auc"] == 0.5
    assert added.metrics["prequential_logloss"] is None  # NaN is not stored
    assert added.metrics["holdout_samples"] == 200 and added.metrics["holdout_auc"] == 1.0
    assert "live_holdout_auc" not in added.metrics  # nothing live to compare with yet
    assert added.metrics["parity_max_abs_diff"] < 1e-5
    # Freshness: the clock says 1000 s; the actions were at 999 s and 998 s.
    assert live == MarkLive(1, {"load_s": LOAD_S, "freshness_p50_s": 1.5})
    assert list(r.release.freshness.by_action) == [(999.0, 1.0), (998.0, 2.0)]
    assert len(r.release.freshness) == 0
    assert r.release.live is not None and r.release.live.version == 1
    assert r.release.live.model is good.model
    assert r.release.served_version == 1
    assert r.release.health.ok is True
    assert r.release.counters.published_here == 1
    assert r.release.last_export["version"] == 1 and r.release.last_export["load_s"] == LOAD_S


async def test_without_a_server_a_release_goes_live_at_once(tmp_path: Path) -> None:
    r = rig(tmp_path, with_server=False)
    outcome = await r.release.release(snapshot(trained()))
    assert outcome == ReleaseOutcome("live", 1, 1)
    assert [type(op) for op in r.ops] == [AddVersion, MarkLive]
    assert r.ops[1] == MarkLive(1)
    assert r.server.loads == []


# ----------------------------------------------------------------- (b) the gate


async def test_gate_rejects_a_clearly_worse_candidate(tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    r.release.freshness.learned([5_000, 6_000, 7_000])
    before = len(r.release.freshness)
    bad = snapshot(trained(flipped=True), HOLDOUT, fresh=r.release.freshness.take())
    assert len(r.release.freshness) == 0

    outcome = await r.release.release(bad)

    reason = outcome.reason or ""
    assert reason.startswith("gate: held-out AUC 0.0000 vs live 1.0000: -1.0000"), reason
    assert outcome == ReleaseOutcome("rejected", 2, 1, reason)
    rejected = r.ops[-1]
    assert isinstance(rejected, AddVersion)
    assert (rejected.version, rejected.status, rejected.reason) == (2, "rejected", reason)
    assert (rejected.path, rejected.size_bytes, rejected.sha256) == (None, None, None)
    assert rejected.metrics["holdout_auc"] == 0.0 and rejected.metrics["live_holdout_auc"] == 1.0
    assert rejected.metrics["gate_auc_delta"] == -1.0
    # The served version's held-out figures are the live one's: the candidate never served.
    assert r.release.served_holdout == {"version": 1, "auc": 1.0, "logloss": ANY, "samples": ANY}
    # No version directory, not even a half-written one; nothing loaded; version 1 still live.
    assert sorted(p.name for p in r.publisher.model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert r.server.loads == [Load(None, r.publisher.config_text())] and r.server.current == 1
    assert r.release.counters.versions_rejected == 1
    assert r.release.live is not None and r.release.live.version == 1
    # The actions it learned wait for a version that serves them.
    assert len(r.release.freshness) == before
    assert r.release.freshness.take() == [5_000, 6_000, 7_000]
    # A rejected number is never used again (the registry has a row for it).
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).version == 3


# ----------------------------------------------------------------- (c) pinned


async def test_pinned_serving_publishes_but_loads_nothing(tmp_path: Path) -> None:
    r = rig(tmp_path)
    await r.release.release(snapshot(trained()))
    r.release.follow(Serving("pinned", 1, "by hand"))
    ops_before = len(r.ops)

    outcome = await r.release.release(snapshot(trained(), fresh=[999_500]))

    assert outcome == ReleaseOutcome("published", 2, 1, "serving is pinned")
    assert r.publisher.versions() == [1, 2]
    assert r.server.loads == [Load(None, r.publisher.config_text())]  # unchanged
    assert await r.server.probe() == 1
    new_ops = r.ops[ops_before:]
    assert len(new_ops) == 1
    assert isinstance(new_ops[0], AddVersion) and (new_ops[0].version, new_ops[0].status) == (2, "published")
    assert r.release.freshness.take() == [999_500]  # not served yet
    # The reconcile keeps the pin too: it serves what it should.
    await r.release.reconcile()
    assert r.server.loads == [Load(None, r.publisher.config_text())] and r.ops[ops_before:] == new_ops


# ----------------------------------------------------------------- (d) server down


async def test_a_pin_that_lands_during_a_load_is_applied_right_after_it(tmp_path: Path) -> None:
    # The operator pins version 1 (the CLI loads it) while the updater's load of version 2 is
    # under way; that load lands last. The reconcile must not wait for its watch interval.
    r = rig(tmp_path, load_delay_s=0.3, watch_s=3600)
    await r.release.release(snapshot(trained()))
    r.release.start()
    try:
        assert r.release.submit(snapshot(trained()))
        await until(lambda: len(r.server.loads) == 2)  # version 2's load is under way
        r.release.follow(Serving("pinned", 1, "by hand"))
        await until(lambda: len(r.server.loads) == 3, timeout_s=5)  # well before the watch
        await until(lambda: r.release.served_version == 1)
        assert r.server.current == 1 and r.release.serving == Serving("pinned", 1, "by hand")
    finally:
        await r.release.close()


async def test_server_down_publishes_then_reconcile_loads_the_newest(tmp_path: Path) -> None:
    r = rig(tmp_path, down=True)
    first = await r.release.release(snapshot(trained(), fresh=[999_000]))
    second = await r.release.release(snapshot(trained()))

    assert (first.kind, first.version, first.served) == ("published", 1, None)
    assert (second.kind, second.version, second.served) == ("published", 2, None)
    assert first.reason == "fake://triton is down"
    assert r.release.health.ok is False and r.release.health.outages == 1
    assert r.release.server_down is True
    assert r.server.loads == []
    assert r.publisher.versions() == [1, 2]
    assert [(op.version, op.status) for op in r.ops if isinstance(op, AddVersion)] == [
        (1, "published"),
        (2, "published"),
    ]
    assert not any(isinstance(op, MarkLive) for op in r.ops)
    assert r.release.freshness.take() == [999_000]  # requeued
    # Still down: the reconcile only notes it.
    await r.release.reconcile()
    assert r.server.loads == [] and r.release.health.ok is False

    r.server.down = False
    await r.release.reconcile()

    assert r.server.loads == [Load(None, r.publisher.config_text())] and r.server.current == 2
    assert r.ops[-1] == MarkLive(2)
    assert r.release.served_version == 2
    assert r.release.health.ok is True and r.release.server_down is False


# ----------------------------------------------------------------- (e) automatic rollback


async def test_rollback_goes_back_to_the_best_earlier_version(tmp_path: Path) -> None:
    r = rig(tmp_path)
    good, mediocre, bad = trained(), trained(steps=0), trained(flipped=True)
    # 1: good (AUC 1.0). 2: untrained (worse than 1, but served: no holdout to judge it by).
    # 3: trained on flipped labels (AUC 0.0), served the same way.
    assert (await r.release.release(snapshot(good, HOLDOUT))).kind == "live"
    assert (await r.release.release(snapshot(mediocre))).kind == "live"
    assert (await r.release.release(snapshot(bad))).kind == "live"
    assert r.server.current == 3
    assert [m.version for m in r.release.history] == [1, 2]
    ops_before = len(r.ops)

    outcome = await r.release.release(snapshot(good, HOLDOUT, fresh=[999_900]))

    assert outcome == ReleaseOutcome("rolled_back", 1, 1, ROLLBACK_REASON)
    assert r.ops[ops_before:] == [
        SetStatus(3, "rolled_back", ROLLBACK_REASON),
        SetServing("rolled_back", 1, ROLLBACK_REASON, over_mode="latest"),  # only over "latest"
        MarkLive(1),
    ]
    # Exactly version 1 was loaded (pinned by config), not "the newest".
    assert r.server.loads[-1] == Load(1, r.publisher.config_text())
    assert r.server.current == 1 and r.release.served_version == 1
    # Everything newer than the target is out of the server's sight, numbers not reused.
    assert r.publisher.versions() == [1]
    assert (r.publisher.model_dir / f"{ROLLED_BACK_PREFIX}3").is_dir()
    assert (r.publisher.model_dir / f"{ROLLED_BACK_PREFIX}2").is_dir()
    assert r.publisher.next_version() == 4
    assert r.release.serving == Serving("rolled_back", 1, ROLLBACK_REASON)
    assert r.release.counters.rollbacks == 1
    assert r.release.live is not None and r.release.live.version == 1
    assert list(r.release.history) == []
    assert r.release.last_rollback["from"] == 3 and r.release.last_rollback["to"] == 1
    assert r.release.last_rollback["at"] == NOW and r.release.last_rollback["served"] == 1
    assert r.release.freshness.take() == [999_900]  # the snapshot was not published

    # A later candidate that passes the gate against version 1 brings back "the newest".
    again = await r.release.release(snapshot(good, HOLDOUT))
    assert again == ReleaseOutcome("live", 4, 4)
    # Only over the rollback: a pin made meanwhile in the registry stands.
    assert SetServing("latest", None, None, None, "rolled_back", 1) in r.ops[ops_before + 3 :]
    assert r.release.serving == Serving()
    assert r.publisher.versions() == [1, 4]


async def test_a_pin_made_while_versions_are_scored_stops_the_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rig(tmp_path)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert (await r.release.release(snapshot(trained(steps=0)))).kind == "live"
    assert (await r.release.release(snapshot(trained(flipped=True)))).kind == "live"
    assert r.server.current == 3
    scoring = release_module.evaluate

    def evaluate_then_pin(*args: object) -> object:
        r.release.serving = Serving("pinned", 3, "by hand")  # the registry sync, mid-scoring
        return scoring(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(release_module, "evaluate", evaluate_then_pin)
    ops_before = len(r.ops)
    outcome = await r.release.release(snapshot(trained(), HOLDOUT))
    assert outcome.kind == "published" and outcome.reason == "serving is pinned"
    assert r.server.current == 3 and r.release.counters.rollbacks == 0
    assert not any(isinstance(op, SetServing) for op in r.ops[ops_before:])
    assert r.release.serving == Serving("pinned", 3, "by hand")


async def three_versions(r: Rig) -> None:
    """1: good (judged on a holdout); 2: untrained and 3: flipped, served with none to judge by."""
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert (await r.release.release(snapshot(trained(steps=0)))).kind == "live"
    assert (await r.release.release(snapshot(trained(flipped=True)))).kind == "live"


async def rolled_back_to_1(r: Rig) -> None:
    """Versions 1 (good), 2 (untrained), 3 (flipped), then a rollback to 1."""
    await three_versions(r)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "rolled_back"
    assert r.release.serving.mode == "rolled_back" and r.server.current == 1


async def test_a_pin_made_while_a_rollback_loads_stops_it(tmp_path: Path) -> None:
    r = rig(tmp_path, load_delay_s=0.3)
    await three_versions(r)
    pin = Serving("pinned", 2, "by hand")
    ops_before = len(r.ops)
    rolling = asyncio.create_task(r.release.release(snapshot(trained(), HOLDOUT)))
    await until(lambda: len(r.server.loads) == 4)  # the rollback's load of version 1 is under way
    r.release.follow(pin)  # the registry sync, mid-load

    outcome = await rolling

    # As if the pin had come before: no rollback, the candidate published under the pin.
    assert outcome.kind == "published" and outcome.reason == "serving is pinned"
    assert r.release.serving == pin and r.release.counters.rollbacks == 0
    assert not any(isinstance(op, (SetServing, SetStatus)) for op in r.ops[ops_before:])
    assert r.publisher.versions() == [1, 2, 3, 4]  # nothing quarantined
    # The pin is applied before the release returns, not at the next watch.
    assert [load.version for load in r.server.loads[3:]] == [1, 2]
    assert r.server.current == 2 and r.release.served_version == 2


async def test_a_pin_made_while_the_candidate_after_a_rollback_loads_is_not_undone(tmp_path: Path) -> None:
    # The failure this guards: the operator pins 1 while a candidate that passed the gate
    # against the rollback loads; the release then wrote "latest" over the operator's pin.
    r = rig(tmp_path, load_delay_s=0.3)
    await rolled_back_to_1(r)
    held = r.release.serving
    pin = Serving("pinned", 1, "by hand")
    ops_before = len(r.ops)
    releasing = asyncio.create_task(r.release.release(snapshot(trained(), HOLDOUT)))
    loads = len(r.server.loads)
    await until(lambda: len(r.server.loads) == loads + 1)  # version 4's load is under way
    r.release.follow(pin)

    outcome = await releasing

    assert (outcome.version, outcome.served) == (4, 1)
    assert r.release.serving == pin
    assert not any(isinstance(op, SetServing) for op in r.ops[ops_before:])
    assert r.server.current == 1 and r.server.loads[-1].version == 1
    # Without the pin the same candidate ends the rollback, recorded only over it.
    r.release.follow(held)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert SetServing("latest", None, None, None, "rolled_back", 1) in r.ops
    assert r.release.serving == Serving()


async def test_the_task_applies_a_new_serving_decision_before_the_snapshot_in_hand(tmp_path: Path) -> None:
    r = rig(tmp_path, watch_s=3600)
    await r.release.release(snapshot(trained()))
    await r.release.release(snapshot(trained()))
    assert r.server.current == 2
    r.release.follow(Serving("pinned", 1, "by hand"))
    assert r.release.submit(snapshot(trained()))
    r.release.start()
    try:
        await until(lambda: r.release.last_outcome is not None)
        # The pin was loaded first; the snapshot was then published under it, never loaded.
        assert [load.version for load in r.server.loads[2:]] == [1]
        assert r.release.last_outcome.reason == "serving is pinned"
        assert r.server.current == 1
    finally:
        await r.release.close()


async def test_no_rollback_when_the_live_version_holds_up(tmp_path: Path) -> None:
    r = rig(tmp_path)
    await r.release.release(snapshot(trained(), HOLDOUT))
    await r.release.release(snapshot(trained(seed=1), HOLDOUT))
    outcome = await r.release.release(snapshot(trained(), HOLDOUT))
    assert outcome == ReleaseOutcome("live", 3, 3)
    assert r.release.counters.rollbacks == 0
    assert not any(isinstance(op, SetStatus) for op in r.ops)


# ----------------------------------------------------------------- (f) apply_serving


async def test_apply_serving_records_the_probed_version_not_the_stale_index(tmp_path: Path) -> None:
    r = rig(tmp_path, stale_index=True)
    await r.release.release(snapshot(trained()))
    await r.release.release(snapshot(trained()))
    assert r.server.current == 2
    ops_before = len(r.ops)

    served = await r.release.apply_serving(Serving("pinned", 1, "by hand"))

    assert served == 1
    assert r.server.loads[-1] == Load(1, r.publisher.config_text())
    assert r.ops[ops_before:] == [SetServing("pinned", 1, "by hand"), MarkLive(1)]
    assert r.release.served_version == 1
    # The trap: the repository index still lists 2 READY. Whatever trusts served_version()
    # right after the load (as the old CLI did) marks 2 live while 1 answers.
    assert await r.server.served_version() == 2
    assert await r.server.probe() == 1

    # Unpinning loads the newest again.
    assert await r.release.apply_serving(Serving()) == 2
    assert r.ops[-2:] == [SetServing("latest", None, None), MarkLive(2)]


async def test_apply_serving_refuses_a_version_that_is_not_there(tmp_path: Path) -> None:
    r = rig(tmp_path)
    await r.release.release(snapshot(trained()))
    ops_before, loads_before = len(r.ops), list(r.server.loads)
    with pytest.raises(FreshrankError, match="version 9 is not in"):
        await r.release.apply_serving(Serving("pinned", 9, "typo"))
    assert len(r.ops) == ops_before and r.server.loads == loads_before
    assert r.release.serving == Serving()


# ----------------------------------------------------------------- (g) rollback_target


def old_cli_rollback_target(history: Iterable[tuple[int, str]]) -> int | None:
    """The previous CLI logic: the first 'live' row, then the newest 'retired' row below it."""
    rows = sorted(history, reverse=True)
    live = next((v for v, status in rows if status == "live"), None)
    if live is None:
        return None
    return next((v for v, status in rows if status == "retired" and v < live), None)


LAGGING = [(12, "live"), (11, "retired"), (10, "retired")]


def test_rollback_target_goes_below_what_is_served_not_the_registrys_live_row() -> None:
    # The updater rolled back 12 -> 11; its writes (12 rolled_back, 11 live) still wait in its
    # outbox, so the registry shows 12 live. The server answers with 11.
    assert rollback_target(11, LAGGING, [10, 11, 12]) == 10
    # The old logic started from the registry's live row and named the served version itself:
    # a "rollback" that changes nothing.
    assert old_cli_rollback_target(LAGGING) == 11


def test_rollback_target_needs_an_earlier_version_on_disk() -> None:
    assert rollback_target(11, LAGGING, [11, 12]) is None  # 10 was pruned
    assert rollback_target(10, LAGGING, [10, 11, 12]) is None  # nothing served before 10
    assert rollback_target(11, [], [10, 11]) is None  # no registry rows


def test_rollback_target_never_picks_rolled_back_rejected_or_unserved_versions() -> None:
    rows = [(12, "live"), (11, "rolled_back"), (10, "rejected"), (9, "published"), (8, "retired")]
    assert rollback_target(12, rows, range(8, 13)) == 8
    assert rollback_target(12, rows, range(9, 13)) is None


# ----------------------------------------------------------------- (h) close


async def test_close_finishes_the_release_in_hand_and_is_safe_twice(tmp_path: Path) -> None:
    r = rig(tmp_path, load_delay_s=0.3)
    r.release.start()
    assert r.release.submit(snapshot(trained(), fresh=[999_000])) is True
    assert r.release.busy is True
    assert r.release.submit(snapshot(trained())) is False  # one in hand at a time
    await until(lambda: bool(r.server.loads))  # the load is under way

    await r.release.close()

    assert r.release.last_outcome == ReleaseOutcome("live", 1, 1)
    assert r.ops[-1] == MarkLive(1, {"load_s": LOAD_S, "freshness_p50_s": 1.0})
    assert r.release.task is None and r.release.busy is False
    assert r.server.closes == 1
    assert r.release.submit(snapshot(trained())) is False  # closing: nothing taken
    await r.release.close()  # twice: no error, nothing new
    assert r.release.last_outcome == ReleaseOutcome("live", 1, 1)
    assert len(r.ops) == 2


async def test_the_task_releases_a_submitted_snapshot_and_reconciles(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.release.start()
    try:
        assert r.release.submit(snapshot(trained())) is True
        await until(lambda: r.release.last_outcome is not None)
        assert r.release.last_outcome == ReleaseOutcome("live", 1, 1)
        # The server restarts empty: the watch loads the newest again.
        r.server.current = None
        await until(lambda: r.server.current == 1)
        assert r.server.loads == [
            Load(None, r.publisher.config_text()),
            Load(None, r.publisher.config_text()),
        ]
        await until(lambda: r.ops[-1] == MarkLive(1) and len(r.ops) == 3)
    finally:
        await r.release.close()


# ----------------------------------------------------------------- reconcile and the live model


async def test_a_version_loaded_by_the_reconcile_is_the_one_rolled_back_from(tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"  # 1: good
    r.server.down = True
    # 2: trained on flipped labels, no holdout to judge it by; Triton is away, so it waits.
    assert (await r.release.release(snapshot(trained(flipped=True)))).kind == "published"
    r.server.down = False
    await r.release.reconcile()  # Triton is back: the newest, 2, serves
    assert r.server.current == 2 and r.ops[-1] == MarkLive(2) and r.release.served_version == 2

    # The next release (its candidate is as bad; the held-out window shows it) must roll the
    # served version 2 back to 1. The manager still holds 1 as live with no history, so there
    # is nothing to compare, and the gate rejects the candidate against 1: version 2 stays
    # served, never judged.
    outcome = await r.release.release(snapshot(trained(flipped=True), HOLDOUT))
    assert (outcome.kind, outcome.version, outcome.served) == ("rolled_back", 1, 1)  # got rejected, 3, 2
    assert SetStatus(2, "rolled_back", ROLLBACK_REASON) in r.ops
    assert r.server.current == 1


# ----------------------------------------------------------------- between versions: checks and holds


async def test_a_served_state_that_fails_a_check_is_held_at_the_snapshot(tmp_path: Path) -> None:
    r = rig(tmp_path, deltas=True)
    log = r.release.deltas
    assert log is not None
    first = snapshot(trained(), HOLDOUT)
    first.delta_seq = 4  # version 1 includes deltas up to 4
    assert (await r.release.release(first)).kind == "live"
    assert r.release.deltas_wanted and r.release.checked_seq == 4 and log.held() is None

    good, bad = trained(), trained(flipped=True)
    assert await r.release.check(good.model, good.vocabs, HOLDOUT, seq=6) is None
    assert r.release.checked_seq == 6 and r.release.deltas_wanted
    # Deltas 7 and 8 made serving worse than version 1: back to it as cut (delta 4), no load.
    reason = await r.release.check(bad.model, bad.vocabs, HOLDOUT, seq=8)
    assert reason is not None and reason.startswith("held-out AUC 0.0000 vs live 1.0000")
    assert log.held() == {"version": 1, "upto": 4, "reason": f"delta 8: {reason}"}
    assert r.release.held is not None and (r.release.held.by, r.release.held.upto) == ("check", 4)
    assert r.release.checked_seq == 6
    assert not r.release.deltas_wanted and len(r.server.loads) == 1
    counters = r.release.counters
    assert (counters.checks, counters.checks_failed, counters.holds) == (2, 1, 1)
    # Failing again changes nothing; a state that passes lifts the hold.
    assert await r.release.check(bad.model, bad.vocabs, HOLDOUT, seq=8) is not None
    assert r.release.counters.holds == 1 and log.held() is not None
    assert await r.release.check(good.model, good.vocabs, HOLDOUT, seq=9) is None
    assert log.held() is None and r.release.held is None and r.release.deltas_wanted
    assert r.release.checked_seq == 9


async def test_a_rejected_candidate_holds_serving_until_a_candidate_passes(tmp_path: Path) -> None:
    r = rig(tmp_path, deltas=True)
    log = r.release.deltas
    assert log is not None
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert await r.release.check(trained().model, trained().vocabs, HOLDOUT, seq=3) is None
    bad = snapshot(trained(flipped=True), HOLDOUT)
    bad.delta_seq = 5
    assert (await r.release.release(bad)).kind == "rejected"
    assert r.release.held is not None and r.release.held.by == "gate"
    assert log.held() == {"version": 1, "upto": 0, "reason": ANY}
    # A check's wider margins do not lift what the gate held ...
    assert await r.release.check(trained().model, trained().vocabs, HOLDOUT, seq=5) is None
    assert log.held() is not None
    # ... a candidate that passes does, and serving follows its deltas from its cut on.
    good = snapshot(trained(), HOLDOUT)
    good.delta_seq = 7
    assert (await r.release.release(good)).kind == "live"
    assert log.held() is None and r.release.held is None and r.release.checked_seq == 7
    assert r.release.deltas_wanted


async def test_no_check_or_hold_while_serving_is_pinned(tmp_path: Path) -> None:
    r = rig(tmp_path, deltas=True)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    await r.release.apply_serving(Serving("pinned", 1, "by hand"))
    bad = trained(flipped=True)
    assert await r.release.check(bad.model, bad.vocabs, HOLDOUT, seq=2) is None
    assert r.release.counters.checks == 0 and r.release.held is None


async def test_pinning_a_version_with_its_deltas_up_to_one_checks_the_log(tmp_path: Path) -> None:
    r = rig(tmp_path, deltas=True)
    first = snapshot(trained(), HOLDOUT)
    first.delta_seq = 3
    assert (await r.release.release(first)).kind == "live"
    log = r.release.deltas
    assert log is not None
    for seq in (4, 5):
        log.write(Delta(seq, 0, {}))
    with pytest.raises(FreshrankError, match="cut after delta 3: it cannot serve delta 2"):
        await r.release.apply_serving(Serving("pinned", 1, "by hand", delta=2))
    with pytest.raises(FreshrankError, match="delta 6 is not in the log"):
        await r.release.apply_serving(Serving("pinned", 1, "by hand", delta=7))
    assert r.release.serving == Serving()  # refused: nothing recorded, nothing loaded
    assert await r.release.apply_serving(Serving("pinned", 1, "by hand", delta=5)) == 1
    assert r.server.loads[-1] == Load(1, r.publisher.config_text(), 5)
    assert r.ops[-2] == SetServing("pinned", 1, "by hand", 5)
    # A restarted server is reconciled to the same state.
    r.server.current = None
    await r.release.reconcile()
    assert r.server.loads[-1] == Load(1, r.publisher.config_text(), 5)


def test_a_delta_is_named_only_with_a_held_version() -> None:
    with pytest.raises(ValueError, match="only with a held version"):
        Serving(delta=3)
    assert Serving("pinned", 4, "x", 3).delta == 3


async def test_with_deltas_flowing_the_rollback_check_judges_what_serves_not_the_stale_snapshot(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, deltas=True)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    # Version 2's own weights are bad (nothing to judge it on when it was cut) ...
    assert (await r.release.release(snapshot(trained(flipped=True)))).kind == "live"
    assert r.release.deltas_wanted
    # ... but deltas since carried serving to the learner's state, which is good: no rollback.
    outcome = await r.release.release(snapshot(trained(), HOLDOUT))
    assert outcome.kind == "live" and r.release.counters.rollbacks == 0
    # Without deltas the live version's weights are what serves, and they are rolled back from.
    plain = rig(tmp_path / "plain")
    assert (await plain.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert (await plain.release.release(snapshot(trained(flipped=True)))).kind == "live"
    assert (await plain.release.release(snapshot(trained(), HOLDOUT))).kind == "rolled_back"


async def test_a_hold_left_by_an_earlier_writer_stays_until_this_writers_first_version(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, deltas=True)
    log = r.release.deltas
    assert log is not None
    log.hold(7, 40, "delta 41: worse")  # what a writer that crashed while held left
    r.release.adopt_hold()
    assert r.release.held is not None and (r.release.held.version, r.release.held.upto) == (7, 40)
    assert (await r.release.release(snapshot(trained(), HOLDOUT))).kind == "live"
    assert r.release.held is None and log.held() is None and r.release.deltas_wanted
