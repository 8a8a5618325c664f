"""The release cycle, with one owner.

rollback check -> gate -> build -> check -> publish -> load -> probe -> record -> prune

With deltas flowing between versions (``exporter/delta.py``), the gate also judges what serving
has between versions: every ``GateSettings.check_interval_s`` the updater hands the learner's
state, exactly the live version plus the deltas cut so far, to :meth:`ReleaseManager.check`. A
state that falls too far below the live version (or a candidate the gate rejects) puts a *hold*
on serving: back to the live version as it was cut, applied by the backend without a reload
(``deltas/hold.json``), until a check (or, after a rejection, a candidate) passes.

:class:`ReleaseManager` owns that cycle and its task: the updater hands it a
:class:`Snapshot` (:meth:`ReleaseManager.submit`) and reads what came of it
(:attr:`ReleaseManager.last_outcome`, the counters, the served version). Between releases the
same task reconciles the server with what it should serve (it restarted, a load failed, an
operator pinned a version). ``freshrank pin``/``unpin``/``rollback`` go through
:meth:`ReleaseManager.apply_serving` too, so every load is followed by a probe and recorded
the same way. Within a process one lock orders the loads; between the CLI and a running
updater the registry's serving row is the decision (the CLI writes it before it loads), and
the updater's reconcile follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from exporter.check import check_parity
from exporter.delta import DELTA_DIR, DeltaLog
from exporter.freshness import Freshness, percentile
from exporter.gate import GateSettings, check_settings, judge, should_roll_back
from exporter.onnx_export import build_onnx, read_cut, write_onnx
from exporter.publish import Published, Publisher
from exporter.records import AddVersion, MarkLive, RegistrySink, Serving, SetServing, SetStatus
from exporter.server import ModelServer
from rankcore.errors import CheckFailed, DependencyError, FreshrankError, LeaseLost
from rankcore.features import Vocabularies
from rankcore.health import Health
from rankcore.holdout import HoldoutMetrics, evaluate
from rankcore.model import Ranker
from rankcore.sample import Sample

log = logging.getLogger(__name__)

DEFAULT_WATCH_S = 2.0
DEFAULT_CLOSE_TIMEOUT_S = 60.0
# After a load that moves to another version, Triton can answer with the old one for a moment
# while it swaps; the probe asks again until the expected version answers, this long at most.
DEFAULT_PROBE_SETTLE_S = 5.0
# Release events kept for the timeline (status, the dashboard): versions live, rejected, rolled
# back, failed; holds put and lifted.
TIMELINE_LENGTH = 200


class ReleaseObserver(Protocol):
    """Told how long each stage of a release took and how fresh what it served was (the
    updater's Prometheus histograms)."""

    def stage_took(self, stage: str, seconds: float) -> None:
        """``stage``: export (ONNX, parity, version directory), gate (candidate against live),
        load (the server answering with it), check (the served state between versions)."""

    def served_fresh(self, seconds: Sequence[float]) -> None:
        """Seconds from each action to the first answer of a state that learned it."""


class _Unobserved:
    def stage_took(self, stage: str, seconds: float) -> None:
        pass

    def served_fresh(self, seconds: Sequence[float]) -> None:
        pass


@dataclass(frozen=True)
class TimelineEntry:
    """One event of the release cycle at ``at`` (epoch seconds): an outcome's kind (live,
    published, rejected, rolled_back, failed) or ``hold`` / ``hold_lifted``."""

    at: float
    kind: str
    version: int | None
    served: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiveModel:
    """A version the server serves (or served), with the weights and vocabularies it was built from."""

    version: int
    model: Ranker
    vocabs: Vocabularies


@dataclass
class Snapshot:
    """Everything a release needs, detached from the live training objects."""

    model: Ranker
    vocabs: Vocabularies
    offsets: dict[str, int]
    samples_trained: int
    metrics: dict[str, Any]
    parity_samples: list[Sample]
    holdout: list[Sample]
    fresh_action_ts_ms: list[int] = field(default_factory=list)
    # item_id -> title, the catalogue's: the text tower's title vectors in the version.
    titles: dict[str, str] = field(default_factory=dict)
    # The last delta (exporter.delta) this state includes: serving applies the ones after it.
    delta_seq: int = 0
    taken_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ReleaseOutcome:
    """What one release did. ``kind``: live, published (not loaded), rejected, rolled_back,
    skipped (writer lease unsettled) or failed."""

    kind: str
    version: int | None = None
    served: int | None = None
    reason: str | None = None


@dataclass
class ReleaseCounters:
    published_here: int = 0
    versions_rejected: int = 0
    export_failures: int = 0
    rollbacks: int = 0
    checks: int = 0  # judgements of the served state between versions
    checks_failed: int = 0
    holds: int = 0


@dataclass(frozen=True)
class Hold:
    """Serving stays at ``version`` + deltas up to ``upto``; ``by`` ``check`` or ``gate``."""

    version: int
    upto: int
    reason: str
    by: str
    at: float


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


def rollback_target(served: int, history: Iterable[tuple[int, str]], available: Iterable[int]) -> int | None:
    """The version served before ``served``: the newest older version that went live and is still there.

    ``served`` is what the server answers with now (probed), not the registry's "live" row,
    which lags the server while registry writes wait in the outbox. ``history`` is the
    registry's (version, status) rows; ``available`` the version directories present.
    """
    present = set(available)
    earlier = [v for v, status in history if status in ("live", "retired") and v < served and v in present]
    return max(earlier) if earlier else None


@dataclass(frozen=True)
class _Built:
    published: Published
    export_s: float
    parity: float


class ReleaseManager:
    """Owns the release cycle and its task; ``start()`` / ``close()``; safe to close twice."""

    def __init__(
        self,
        publisher: Publisher,
        sink: RegistrySink,
        gate: GateSettings | None = None,
        *,
        server: ModelServer | None = None,
        confirm_writer: Callable[[], Awaitable[bool]] | None = None,
        writer_token: Callable[[], int | None] = lambda: None,
        watch_s: float = DEFAULT_WATCH_S,
        probe_settle_s: float = DEFAULT_PROBE_SETTLE_S,
        clock: Callable[[], float] = time.time,
        deltas: DeltaLog | None = None,
        observer: ReleaseObserver | None = None,
    ) -> None:
        self.publisher = publisher
        self.observer: ReleaseObserver = observer or _Unobserved()
        # Deltas flow between versions (the log they go to, also where holds are written): a
        # state judged worse, or a rejected candidate, holds serving at the last state that passed.
        self.deltas = deltas
        self.held: Hold | None = None
        self.last_hold: Hold | None = None  # kept after it is lifted
        self.cuts: dict[int, int] = {}  # version -> the last delta it includes (this process's)
        # The newest delta of a state that passed a judgement (a check, or the gate as a version).
        self.checked_seq = 0
        self.last_check: dict[str, Any] = {}
        # When the gate last judged (a candidate or a check), monotonic.
        self.judged_at = float("-inf")
        self.sink = sink
        self.gate = gate or GateSettings()
        self.server = server
        self._confirm_writer = confirm_writer
        self._writer_token = writer_token
        self.watch_s = watch_s
        self.probe_settle_s = probe_settle_s
        self.clock = clock
        self.health = Health("triton")
        self.freshness = Freshness(on_served=self.observer.served_fresh)
        self.timeline: deque[TimelineEntry] = deque(maxlen=TIMELINE_LENGTH)
        self.counters = ReleaseCounters()
        self.serving = Serving()
        self.served_version: int | None = None
        self.live: LiveModel | None = None
        # Versions served before the live one, newest last: the candidates for a rollback.
        self.history: deque[LiveModel] = deque(maxlen=self.gate.rollback_history)
        # The newest version published but not loaded (server down, serving pinned): it becomes
        # the live model once the server answers with it (a reconcile, an unpin).
        self._unloaded: LiveModel | None = None
        self.last_export: dict[str, Any] = {}
        self.last_rollback: dict[str, Any] = {}
        # The live version's AUC and logloss on the latest held-out window, from each round of the
        # gate: samples never trained on, all scored by one model, so unlike the trainer's
        # prequential window it has no start-up skew (positives are learned at once, negatives
        # only when the window closes, so the two are scored by different model states).
        self.served_holdout: dict[str, Any] = {}
        self.last_outcome: ReleaseOutcome | None = None
        # Samples trained in the newest snapshot that was judged (skipped or failed ones are retried).
        self.samples_released = -1
        self._version_floor = 0
        self._lock = asyncio.Lock()
        self._pending: Snapshot | None = None
        self._releasing = False
        self._wake = asyncio.Event()
        self._serving_changed = False  # by follow(): reconcile without waiting for the watch
        self._closing = False
        self._fenced = False
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="release")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Finish the release in hand (at most ``timeout_s``), then stop the task and the server client."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=timeout_s)
            if not done:
                log.error("the release in hand took over %.0f s at stop; cancelled", timeout_s)
                task.cancel()
                await asyncio.wait([task])
            elif not task.cancelled() and task.exception() is not None:
                log.error("the release task failed: %s", task.exception())
        if self.server is not None:
            await self.server.close()

    # ----------------------------------------------------------------- what the updater calls

    @property
    def busy(self) -> bool:
        """A snapshot is waiting or being released."""
        return self._pending is not None or self._releasing

    def submit(self, snapshot: Snapshot) -> bool:
        """Hand over the next snapshot; False (nothing taken) while one is still in hand."""
        if self.busy or self._closing or self._fenced:
            return False
        # With deltas flowing, the next delta serves what was learned sooner than a load would.
        taken = [] if self.deltas_wanted else self.freshness.take()
        snapshot.fresh_action_ts_ms = taken + snapshot.fresh_action_ts_ms
        self._pending = snapshot
        self._wake.set()
        return True

    def follow(self, serving: Serving) -> None:
        """The operator's serving decision, read from the registry: a reconcile applies it at
        once (after the release in hand, whose load may have landed after the operator's)."""
        if serving != self.serving:
            log.info("serving changed from %s to %s", self.serving, serving)
            self.serving = serving
            self._serving_changed = True
            self._wake.set()

    def raise_version_floor(self, version: int) -> None:
        """Version numbers the registry already used (rejected ones leave no directory)."""
        self._version_floor = max(self._version_floor, version)

    @property
    def server_down(self) -> bool:
        return self.server is not None and self.health.ok is False

    def protected(self, *versions: int | None) -> set[int]:
        """Versions retention must keep: served, held, and the ones a rollback may go back to."""
        keep = {self.served_version, self.serving.version, *versions}
        keep |= {m.version for m in (self.live, self._unloaded, *self.history) if m is not None}
        return {v for v in keep if v is not None}

    # ----------------------------------------------------------------- the task

    async def _run(self) -> None:
        next_watch = 0.0
        while not (self._closing and self._pending is None):
            timeout = max(0.0, next_watch - time.monotonic()) if self.server is not None else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if self._serving_changed and self.server is not None and not self._closing:
                # The operator's decision first: the snapshot in hand is released under it.
                self._serving_changed = False
                await self.reconcile()
                next_watch = time.monotonic() + self.watch_s
            snapshot, self._pending = self._pending, None
            if snapshot is not None:
                self._releasing = True
                try:
                    outcome = await self._release_guarded(snapshot)
                finally:
                    self._releasing = False
                self.last_outcome = outcome
                if outcome.kind != "skipped":
                    self._note(outcome.kind, outcome.version, outcome.served, outcome.reason)
                if outcome.kind not in ("skipped", "failed"):
                    self.samples_released = max(self.samples_released, snapshot.samples_trained)
                if self._fenced:
                    return
            due = self._serving_changed or time.monotonic() >= next_watch
            if self.server is not None and not self._closing and due:
                self._serving_changed = False
                await self.reconcile()
                next_watch = time.monotonic() + self.watch_s

    async def _release_guarded(self, snap: Snapshot) -> ReleaseOutcome:
        """A release that fails is logged and counted; the next snapshot retries."""
        try:
            return await self.release(snap)
        except LeaseLost:
            self._fenced = True
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return ReleaseOutcome("skipped", reason="writer lease lost")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters.export_failures += 1
            log.exception("release failed; the next snapshot retries")
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return ReleaseOutcome("failed", reason=f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------- one release

    async def release(self, snap: Snapshot) -> ReleaseOutcome:
        """rollback check -> gate -> build -> check -> publish -> load -> probe -> record -> prune."""
        if self._confirm_writer is not None and not await self._confirm_writer():
            log.warning("writer lease unsettled (held under our token by another session); publish skipped")
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return ReleaseOutcome("skipped", reason="writer lease unsettled")
        version = self.publisher.next_version(floor=self._version_floor)
        metrics: dict[str, Any] = {k: _finite(v) for k, v in snap.metrics.items()}
        metrics["writer_token"] = self._writer_token()
        if self.deltas is not None:
            metrics["delta_seq"] = snap.delta_seq
        rolled = await self._maybe_roll_back(snap)
        if rolled is not None:
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return rolled
        live = (self.live.model, self.live.vocabs) if self.live is not None else None
        self.judged_at = time.monotonic()
        verdict = await asyncio.to_thread(judge, snap.model, snap.vocabs, live, snap.holdout, self.gate)
        self.observer.stage_took("gate", time.monotonic() - self.judged_at)
        metrics.update(verdict.metrics)
        if self.live is not None and "live_holdout_auc" in verdict.metrics:
            # With deltas flowing serving has the candidate's state, not the live version's weights.
            prefix = "" if self.deltas_wanted else "live_"
            self._served_holdout(self.live.version, verdict.metrics, prefix)
        self._version_floor = max(self._version_floor, version)
        if verdict.reason is not None:
            outcome = self._reject(snap, version, metrics, f"gate: {verdict.reason}")
            if self.held is None:
                await self._hold(f"candidate {version} rejected: {verdict.reason}", by="gate")
            return outcome
        try:
            built = await asyncio.to_thread(self._build, snap, version)
        except CheckFailed as exc:
            return self._reject(snap, version, metrics, str(exc))
        metrics.update(export_s=round(built.export_s, 3), parity_max_abs_diff=built.parity)
        self.observer.stage_took("export", built.export_s)
        published = built.published
        self.sink.record(
            AddVersion(
                version,
                "published",
                snap.offsets,
                snap.samples_trained,
                metrics,
                path=str(published.path),
                size_bytes=published.size_bytes,
                sha256=published.sha256,
            )
        )
        self.counters.published_here += 1
        candidate = LiveModel(version, snap.model, snap.vocabs)
        if self.server is None:
            self._go_live(candidate)
            self.served_version = version
            self.sink.record(MarkLive(version))
            self.publisher.prune(protect=self.protected(version))
            return ReleaseOutcome("live", version, version)
        if self.serving.mode == "pinned":
            # Training and publishing go on; serving stays where the operator put it.
            self._unloaded = candidate
            self.publisher.prune(protect=self.protected(version))
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return ReleaseOutcome("published", version, self.served_version, "serving is pinned")
        decided = self.serving  # the operator may decide otherwise while the load runs
        try:
            load_s, served, served_at = await self._load(None, expect=version)
        except DependencyError as exc:
            # Stays "published": the reconcile loads the newest version when the server is back.
            self._unloaded = candidate
            self.health.mark(False, str(exc))
            log.warning("version %d published but not loaded: %s", version, exc)
            self.publisher.prune(protect=self.protected(version))
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return ReleaseOutcome("published", version, self.served_version, str(exc))
        overruled = self.serving != decided
        fresh: list[float] = []
        if served == version:
            self.checked_seq = snap.delta_seq
            await self._release_hold()  # it named the version before: the new one follows the log
            fresh = self.freshness.served(snap.fresh_action_ts_ms, served_at)
            self._go_live(candidate)
            self._served_holdout(version, metrics, "")
            if not overruled:
                if self.serving.mode == "rolled_back":
                    # A candidate passed the gate against the version rolled back to: the newest
                    # serves again (unless the operator decided otherwise in the meantime).
                    self.sink.record(SetServing.of(Serving(), over=decided))
                self.serving = Serving()
        else:
            log.warning("the server answers with version %s after loading %d", served, version)
            self.freshness.requeue(snap.fresh_action_ts_ms)  # measured when a version that has them serves
        self.sink.record(
            MarkLive(served, {"load_s": round(load_s, 3), "freshness_p50_s": percentile(fresh, 50)})
        )
        if overruled:
            # A pin (or rollback) arrived during the load: it stands, and is applied before this
            # release counts as done.
            log.info("serving became %s while version %d loaded: applying it", self.serving, version)
            self._serving_changed = False
            await self.reconcile()
            served = self.served_version if self.served_version is not None else served
        self.last_export = {
            "version": version,
            "export_s": round(built.export_s, 3),
            "load_s": round(load_s, 3),
            "size_bytes": published.size_bytes,
            "parity_max_abs_diff": built.parity,
        }
        self.publisher.prune(protect=self.protected(version))
        log.info(
            "version %d live: export %.2f s, load %.2f s, %d samples",
            version,
            built.export_s,
            load_s,
            snap.samples_trained,
        )
        return ReleaseOutcome("live" if served == version else "published", version, served)

    @property
    def deltas_wanted(self) -> bool:
        """Whether deltas serve now: on top of a version this process cut, served as the newest."""
        live = self.live
        return (
            self.deltas is not None
            and live is not None
            and live.version in self.cuts
            and self.serving.mode == "latest"
            and self.held is None
            and not self.server_down
        )

    async def check(self, model: Ranker, vocabs: Vocabularies, holdout: list[Sample], seq: int) -> str | None:
        """Judge the state serving has between versions: the live version plus deltas up to ``seq``,
        which ``model`` is (the updater's learner, its trainer drained). Held to the wider
        margins of :func:`exporter.gate.check_settings`: the state is compared with a version up
        to a publish interval older. Failing puts a hold on serving; passing lifts a hold a
        check put. Returns why it failed, or None."""
        live = self.live
        if self.deltas is None or live is None or live.version not in self.cuts:
            return None
        if self.serving.mode != "latest" or self.server_down:
            return None
        self.judged_at = time.monotonic()
        settings = check_settings(self.gate)
        verdict = await asyncio.to_thread(judge, model, vocabs, (live.model, live.vocabs), holdout, settings)
        self.observer.stage_took("check", time.monotonic() - self.judged_at)
        self.counters.checks += 1
        self.last_check = {"seq": seq, "at": self.clock(), "reason": verdict.reason, **verdict.metrics}
        # What serves now on the latest window: this state, or the version as cut while held.
        held = verdict.reason is not None or self.held is not None
        self._served_holdout(live.version, verdict.metrics, "live_" if held else "")
        if verdict.reason is None:
            self.checked_seq = max(self.checked_seq, seq)
            if self.held is not None and self.held.by == "check":
                await self._release_hold()
            return None
        self.counters.checks_failed += 1
        log.warning("the state at delta %d fails against version %d: %s", seq, live.version, verdict.reason)
        if self.held is None:
            await self._hold(f"delta {seq}: {verdict.reason}", by="check")
        return verdict.reason

    def adopt_hold(self) -> None:
        """Take over a hold left in the log (by a writer that crashed or handed over): serving
        stays held until this process's first version goes live, which lifts it."""
        if self.deltas is None or self.held is not None:
            return
        try:
            found = self.deltas.held()
        except (OSError, ValueError) as exc:
            log.warning("an unreadable hold in the delta log is left as it is: %s", exc)
            return
        if found is None:
            return
        try:
            version, upto = int(found["version"]), int(found["upto"])
        except (KeyError, TypeError, ValueError):
            log.warning("a hold in the delta log that names no version and delta: %s", found)
            return
        self.held = Hold(version, upto, str(found.get("reason", "")), "gate", self.clock())
        log.warning("serving stays held at version %d delta %d until a version of this writer", version, upto)

    async def _hold(self, reason: str, by: str) -> None:
        """Serve the live version as it was cut, no delta after it.

        The snapshot is the one state known to be better on the current window (the state
        that failed was judged against it); a state that passed an earlier check was judged
        on an earlier window, which a poisoned period may have labelled too.
        """
        live = self.live
        if self.deltas is None or live is None or live.version not in self.cuts:
            return
        if self.serving.mode != "latest":
            return
        upto = self.cuts[live.version]
        try:
            await asyncio.to_thread(self.deltas.hold, live.version, upto, reason)
        except OSError as exc:
            log.warning("could not hold serving at version %d delta %d: %s", live.version, upto, exc)
            return
        self.held = self.last_hold = Hold(live.version, upto, reason, by, self.clock())
        self.counters.holds += 1
        self._note("hold", live.version, reason=reason)
        log.warning("serving held at version %d delta %d: %s", live.version, upto, reason)

    async def _release_hold(self) -> None:
        if self.held is None or self.deltas is None:
            return
        try:
            await asyncio.to_thread(self.deltas.release)
        except OSError as exc:
            log.warning("could not lift the hold on serving: %s", exc)
            return
        log.info("serving follows the deltas again (hold at delta %d lifted)", self.held.upto)
        self._note("hold_lifted", self.held.version)
        self.held = None

    def _note(
        self, kind: str, version: int | None, served: int | None = None, reason: str | None = None
    ) -> None:
        self.timeline.append(TimelineEntry(self.clock(), kind, version, served, reason))

    def _served_holdout(self, version: int, metrics: dict[str, Any], prefix: str) -> None:
        self.served_holdout = {
            "version": version,
            "auc": metrics.get(f"{prefix}holdout_auc"),
            "logloss": metrics.get(f"{prefix}holdout_logloss"),
            "samples": metrics.get("holdout_samples"),
        }

    def _reject(self, snap: Snapshot, version: int, metrics: dict[str, Any], reason: str) -> ReleaseOutcome:
        self.counters.versions_rejected += 1
        log.warning("version %d rejected: %s", version, reason)
        self.freshness.requeue(snap.fresh_action_ts_ms)
        self.sink.record(
            AddVersion(version, "rejected", snap.offsets, snap.samples_trained, metrics, reason=reason)
        )
        return ReleaseOutcome("rejected", version, self.served_version, reason)

    def _build(self, snap: Snapshot, version: int) -> _Built:
        """ONNX export, onnxruntime parity, atomic version directory (in a worker thread)."""
        started = time.perf_counter()
        parity: list[float] = []

        def write(directory: Path) -> list[Path]:
            proto = build_onnx(
                snap.model, snap.vocabs, snap.titles, version=version, delta_seq=snap.delta_seq
            )
            files = write_onnx(proto, directory)
            if snap.parity_samples:
                parity.append(
                    check_parity(
                        directory / "model.onnx",
                        snap.model,
                        snap.vocabs,
                        snap.parity_samples,
                        titles=snap.titles,
                    )
                )
            return files

        published = self.publisher.publish(version, write)
        self.cuts[version] = snap.delta_seq
        return _Built(published, time.perf_counter() - started, parity[0] if parity else 0.0)

    def _go_live(self, model: LiveModel) -> None:
        if self.live is not None and self.live.version != model.version:
            self.history.append(self.live)
        self.live = model
        if self._unloaded is not None and self._unloaded.version <= model.version:
            self._unloaded = None

    def _answered(self, version: int) -> None:
        """The server answers with ``version`` now: judge candidates against it from here on.

        A version this process never built (from before a restart) leaves the live model as is.
        """
        if self.live is not None and self.live.version == version:
            return
        if self._unloaded is not None and self._unloaded.version == version:
            self._go_live(self._unloaded)
            return
        earlier = next((m for m in self.history if m.version == version), None)
        if earlier is not None:
            self.history.remove(earlier)
            self._go_live(earlier)

    # ----------------------------------------------------------------- rollback

    async def _maybe_roll_back(self, snap: Snapshot) -> ReleaseOutcome | None:
        """Go back to the best recent version when what serves fell too far below it.

        What serves (the live version, or with deltas flowing the state in hand) and the
        versions served before it are scored on the latest held-out window; the best of those
        is the rollback target.
        """
        live, history = self.live, list(self.history)
        if self.server is None or live is None or not history or self.serving.mode != "latest":
            return None
        if not snap.holdout:
            return None

        # With deltas flowing, what serves is the live version plus its deltas, which the
        # snapshot in hand is (the learner now); the live version's own weights are a publish
        # interval old, and judged alone against older versions on today's window they can
        # look worse than what is served. Without deltas the live version is what serves.
        serving_now = (snap.model, snap.vocabs) if self.deltas_wanted else (live.model, live.vocabs)

        def score_all() -> list[tuple[LiveModel | None, HoldoutMetrics]]:
            return [(None, evaluate(*serving_now, snap.holdout))] + [
                (m, evaluate(m.model, m.vocabs, snap.holdout)) for m in history
            ]

        scored = await asyncio.to_thread(score_all)
        if self.serving.mode != "latest":
            return None  # the operator pinned or rolled back while the versions were scored
        now_m = scored[0][1]
        best, prev_m = max(scored[1:], key=lambda pair: -1.0 if math.isnan(pair[1].auc) else pair[1].auc)
        assert best is not None
        previous = best
        reason = should_roll_back(now_m, prev_m, self.gate)
        if reason is None:
            return None
        detected = time.perf_counter()
        log.warning("rolling back from version %d to %d: %s", live.version, previous.version, reason)
        decided = self.serving  # "latest"; the operator may decide otherwise while the load runs
        try:
            _, served, _ = await self._load(previous.version, expect=previous.version)
        except DependencyError as exc:
            self.health.mark(False, str(exc))
            return ReleaseOutcome("failed", previous.version, self.served_version, str(exc))
        if self.serving != decided:
            # The operator pinned (or rolled back) while it loaded: that decision stands, as it
            # would have had it come while the versions were scored, and is applied now.
            log.info("serving became %s during the rollback's load: the rollback is dropped", self.serving)
            self._serving_changed = False
            await self.reconcile()
            return None
        self.counters.rollbacks += 1
        # The server has moved off them: the newest directory is the target again, so no later
        # "load the newest" (an unpin, a server restart) can bring a rolled-back version back.
        self.publisher.quarantine([v for v in self.publisher.versions() if v > previous.version])
        self.serving = Serving("rolled_back", previous.version, reason)
        # The bad version and everything served after the target leave the history.
        self.live = previous
        kept = [m for m in self.history if m.version < previous.version]
        self.history.clear()
        self.history.extend(kept)
        self.last_rollback = {
            "from": live.version,
            "to": previous.version,
            "reason": reason,
            "at": self.clock(),
            "seconds_to_serve": round(time.perf_counter() - detected, 3),
            "served": served,
        }
        self.sink.record(SetStatus(live.version, "rolled_back", reason))
        # Over "latest" only: a pin the operator makes before this reaches the registry stands.
        self.sink.record(SetServing.of(self.serving, over=decided))
        self.sink.record(MarkLive(previous.version))
        return ReleaseOutcome("rolled_back", previous.version, served, reason)

    # ----------------------------------------------------------------- serving

    async def _load(
        self, version: int | None, expect: int | None, delta: int | None = None
    ) -> tuple[float, int, float]:
        """Load ``version`` (None: the newest; with ``delta``, the deltas up to it applied) and
        probe until ``expect`` answers (briefly).

        Returns the load's seconds, the version that answered, and when it answered.
        """
        assert self.server is not None
        async with self._lock:
            config = self.publisher.config_text()
            load_s = await self.server.load(version=version, config_text=config, delta=delta)
            self.observer.stage_took("load", load_s)
            deadline = time.monotonic() + self.probe_settle_s
            while True:
                served = await self.server.probe()
                if expect is None or served == expect or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            served_at = self.clock()
        self.served_version = served
        self.health.mark(True)
        return load_s, served, served_at

    def _check_deltas_for(self, version: int, delta: int) -> None:
        """``version`` + the deltas up to ``delta`` must be a state the log can still rebuild."""
        cut = read_cut(self.publisher.model_dir / str(version) / "model.onnx")
        if delta < cut:
            raise FreshrankError(
                f"version {version} was cut after delta {cut}: it cannot serve delta {delta}"
            )
        present = set(DeltaLog(self.publisher.model_dir / DELTA_DIR).seqs())
        missing = [s for s in range(cut + 1, delta + 1) if s not in present]
        if missing:
            raise FreshrankError(
                f"version {version} + deltas {cut + 1}..{delta}: delta {missing[0]} is not in the log"
                f" ({len(missing)} missing; retention removes those every kept version includes)"
            )

    def wanted(self) -> int | None:
        """The version the server should answer with: the held one, else the newest published."""
        if self.serving.held is not None:
            return self.serving.held
        versions = self.publisher.versions()
        return versions[-1] if versions else None

    async def reconcile(self) -> None:
        """Track the server's readiness; when it serves something else than it should (it
        restarted, a load failed, the operator pinned or unpinned), load what it should."""
        assert self.server is not None
        try:
            ready = await self.server.ready()
            served = await self.server.served_version() if ready else None
        except DependencyError as exc:
            self.health.mark(False, str(exc))
            return
        self.health.mark(ready, None if ready else f"not ready at {self.server.url}")
        if not ready:
            return
        self.served_version = served
        wanted = self.wanted()
        if wanted is None or served == wanted:
            return
        try:
            # The index can still list a version that is unloading: ask the server itself.
            if await self.server.probe() == wanted:
                self.served_version = wanted
                return
        except DependencyError:
            pass  # nothing answers (a restarted server has no model loaded): load it
        try:
            _, answered, _ = await self._load(self.serving.held, expect=wanted, delta=self.serving.delta)
        except DependencyError as exc:
            self.health.mark(False, str(exc))
            return
        log.info("the server answers with version %s again", answered)
        self._answered(answered)
        self.sink.record(MarkLive(answered))

    async def apply_serving(self, serving: Serving) -> int | None:
        """Record the serving decision and apply it to the server now (pin, unpin, rollback).

        Returns the version that answers afterwards (None without a server).
        """
        if serving.held is not None and serving.held not in self.publisher.versions():
            raise FreshrankError(
                f"version {serving.held} is not in {self.publisher.model_dir} (retention removed it,"
                " or it was rolled back)"
            )
        if serving.held is not None and serving.delta is not None:
            self._check_deltas_for(serving.held, serving.delta)
        self.serving = serving
        self.sink.record(SetServing.of(serving))
        if self.server is None:
            return None
        _, served, _ = await self._load(serving.held, expect=self.wanted(), delta=serving.delta)
        self._answered(served)
        self.sink.record(MarkLive(served))
        return served
