"""The release cycle, with one owner.

rollback check -> gate -> build -> check -> publish -> load -> probe -> record -> prune

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.check import check_parity
from exporter.freshness import Freshness, percentile
from exporter.gate import GateSettings, judge, should_roll_back
from exporter.onnx_export import build_onnx, write_onnx
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
        deltas: bool = False,
    ) -> None:
        self.publisher = publisher
        # Deltas flow between versions: a rejected candidate then means what serving already
        # has is worse than the live version, which is reloaded as it was cut (snapshot_only).
        self.deltas = deltas
        self.snapshot_only = False
        self.cuts: dict[int, int] = {}  # version -> the last delta it includes (this process's)
        self.sink = sink
        self.gate = gate or GateSettings()
        self.server = server
        self._confirm_writer = confirm_writer
        self._writer_token = writer_token
        self.watch_s = watch_s
        self.probe_settle_s = probe_settle_s
        self.clock = clock
        self.health = Health("triton")
        self.freshness = Freshness()
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
        """The operator's serving decision, read from the registry: the next reconcile applies it."""
        if serving != self.serving:
            log.info("serving changed from %s to %s", self.serving, serving)
            self.serving = serving
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
            snapshot, self._pending = self._pending, None
            if snapshot is not None:
                self._releasing = True
                try:
                    outcome = await self._release_guarded(snapshot)
                finally:
                    self._releasing = False
                self.last_outcome = outcome
                if outcome.kind not in ("skipped", "failed"):
                    self.samples_released = max(self.samples_released, snapshot.samples_trained)
                if self._fenced:
                    return
            if self.server is not None and not self._closing and time.monotonic() >= next_watch:
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
        if self.deltas:
            metrics["delta_seq"] = snap.delta_seq
        rolled = await self._maybe_roll_back(snap)
        if rolled is not None:
            self.freshness.requeue(snap.fresh_action_ts_ms)
            return rolled
        live = (self.live.model, self.live.vocabs) if self.live is not None else None
        verdict = await asyncio.to_thread(judge, snap.model, snap.vocabs, live, snap.holdout, self.gate)
        metrics.update(verdict.metrics)
        if self.live is not None and "live_holdout_auc" in verdict.metrics:
            self._served_holdout(self.live.version, verdict.metrics, "live_")
        self._version_floor = max(self._version_floor, version)
        if verdict.reason is not None:
            outcome = self._reject(snap, version, metrics, f"gate: {verdict.reason}")
            await self._hold_live_snapshot()
            return outcome
        try:
            built = await asyncio.to_thread(self._build, snap, version)
        except CheckFailed as exc:
            return self._reject(snap, version, metrics, str(exc))
        metrics.update(export_s=round(built.export_s, 3), parity_max_abs_diff=built.parity)
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
        fresh: list[float] = []
        if served == version:
            self.snapshot_only = False  # loaded as the newest: it follows the deltas again
            fresh = self.freshness.served(snap.fresh_action_ts_ms, served_at)
            self._go_live(candidate)
            self._served_holdout(version, metrics, "")
            if self.serving.mode == "rolled_back":
                # A candidate passed the gate against the version rolled back to: back to the newest.
                self.sink.record(SetServing.of(Serving()))
            self.serving = Serving()
        else:
            log.warning("the server answers with version %s after loading %d", served, version)
            self.freshness.requeue(snap.fresh_action_ts_ms)  # measured when a version that has them serves
        self.last_export = {
            "version": version,
            "export_s": round(built.export_s, 3),
            "load_s": round(load_s, 3),
            "size_bytes": published.size_bytes,
            "parity_max_abs_diff": built.parity,
        }
        self.sink.record(
            MarkLive(served, {"load_s": round(load_s, 3), "freshness_p50_s": percentile(fresh, 50)})
        )
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
            self.deltas
            and live is not None
            and live.version in self.cuts
            and self.serving.mode == "latest"
            and not self.snapshot_only
            and not self.server_down
        )

    async def _hold_live_snapshot(self) -> None:
        """After a rejection with deltas flowing: serve the live version as it was cut."""
        live = self.live
        if not self.deltas or self.server is None or live is None or self.serving.mode != "latest":
            return
        if self.snapshot_only or live.version not in self.publisher.versions():
            return
        try:
            await self._load(live.version, expect=live.version)
        except DependencyError as exc:
            self.health.mark(False, str(exc))
            return
        self.snapshot_only = True
        log.warning("serving version %d as it was cut until a candidate passes the gate", live.version)

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
        """Go back to the best recent version when the live one fell too far below it.

        The live version and the versions served before it are scored on the latest held-out
        window; the best of those is the rollback target.
        """
        live, history = self.live, list(self.history)
        if self.server is None or live is None or not history or self.serving.mode != "latest":
            return None
        if not snap.holdout:
            return None

        def score_all() -> list[tuple[LiveModel, HoldoutMetrics]]:
            return [(m, evaluate(m.model, m.vocabs, snap.holdout)) for m in (live, *history)]

        scored = await asyncio.to_thread(score_all)
        now_m = scored[0][1]
        previous, prev_m = max(scored[1:], key=lambda pair: -1.0 if math.isnan(pair[1].auc) else pair[1].auc)
        reason = should_roll_back(now_m, prev_m, self.gate)
        if reason is None:
            return None
        detected = time.perf_counter()
        log.warning("rolling back from version %d to %d: %s", live.version, previous.version, reason)
        try:
            _, served, _ = await self._load(previous.version, expect=previous.version)
        except DependencyError as exc:
            self.health.mark(False, str(exc))
            return ReleaseOutcome("failed", previous.version, self.served_version, str(exc))
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
        self.sink.record(SetServing.of(self.serving))
        self.sink.record(MarkLive(previous.version))
        return ReleaseOutcome("rolled_back", previous.version, served, reason)

    # ----------------------------------------------------------------- serving

    async def _load(self, version: int | None, expect: int | None) -> tuple[float, int, float]:
        """Load ``version`` (None: the newest) and probe until ``expect`` answers (briefly).

        Returns the load's seconds, the version that answered, and when it answered.
        """
        assert self.server is not None
        async with self._lock:
            config = self.publisher.config_text()
            load_s = await self.server.load(version=version, config_text=config)
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
            _, answered, _ = await self._load(self.serving.held, expect=wanted)
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
        self.serving = serving
        self.sink.record(SetServing.of(serving))
        if self.server is None:
            return None
        _, served, _ = await self._load(serving.held, expect=self.wanted())
        self._answered(served)
        self.sink.record(MarkLive(served))
        return served
