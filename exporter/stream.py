"""The delta stream: deltas written to the model's log, and when serving answers with them.

The training side builds a delta (:func:`exporter.delta.build_delta`) every
``--delta-interval-s`` once a version this process cut is live, and hands it here; this
object's one task guards it, writes it (:class:`exporter.delta.DeltaLog`) and probes the
server until an answer carries its sequence number in ``model_state``: that is when the
actions the delta learned count as served (their freshness). One delta at a time: while one
is in flight the training side keeps collecting rows into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.delta import DEFAULT_MAX_ABS, Delta, DeltaLog, guard
from exporter.freshness import Freshness
from exporter.records import AddDelta, RegistrySink
from exporter.server import ModelServer
from rankcore.errors import DependencyError

log = logging.getLogger(__name__)

DEFAULT_SERVED_TIMEOUT_S = 5.0


@dataclass
class DeltaCounters:
    written: int = 0
    refused: int = 0
    unserved: int = 0  # written, but no answer carried it within the timeout
    failed: int = 0  # could not be written (the file system): its rows wait for the next version
    rows: int = 0
    keys: int = 0
    bytes: int = 0
    last_seq: int = 0
    last_served_seq: int = 0
    last_write_s: float = 0.0
    last_served_s: float = 0.0  # write -> first answer that carried it
    last_reason: str | None = None


class DeltaStream:
    def __init__(
        self,
        deltas: DeltaLog,
        server: ModelServer | None,
        freshness: Freshness,
        max_abs: float = DEFAULT_MAX_ABS,
        served_timeout_s: float = DEFAULT_SERVED_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        prune_upto: Callable[[], int | None] = lambda: None,
        sink: RegistrySink | None = None,
    ) -> None:
        self.log = deltas
        self.server = server
        self.freshness = freshness
        self.max_abs = max_abs
        self.served_timeout_s = served_timeout_s
        self.clock = clock
        # The newest delta every version in the repository already includes (None: unknown).
        self.prune_upto = prune_upto
        self.sink = sink  # each delta written is recorded there (the registry's outbox)
        self.counters = DeltaCounters(last_seq=deltas.last())
        self._pending: tuple[Delta, list[int]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def resume_from_log(self) -> None:
        """Go on from the newest delta in the log (another writer's, before this one)."""
        self.counters.last_seq = max(self.counters.last_seq, self.log.last())

    @property
    def next_seq(self) -> int:
        return self.counters.last_seq + 1

    @property
    def handed_seq(self) -> int:
        """The newest delta handed over (being written, or written)."""
        return self._pending[0].seq if self._pending is not None else self.counters.last_seq

    @property
    def busy(self) -> bool:
        return self._pending is not None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="deltas")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, delta: Delta, action_ts_ms: list[int]) -> bool:
        """Queue ``delta`` (sequence :attr:`next_seq`) with the action times it learned."""
        if self._pending is not None:
            return False
        if delta.seq != self.next_seq:
            raise ValueError(f"expected delta {self.next_seq}, got {delta.seq}")
        self._pending = (delta, action_ts_ms)
        self._wake.set()
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            delta, actions = self._pending
            try:
                await self._publish(delta, actions)
            except OSError as exc:
                # Not the updater's end: serving stays on the last delta, the next version has it all.
                self.counters.failed += 1
                self.counters.last_reason = f"not written: {exc}"
                self.freshness.requeue(actions)
                log.warning("delta %d not written: %s", delta.seq, exc)
            finally:
                self._pending = None

    async def _publish(self, delta: Delta, actions: list[int]) -> None:
        c = self.counters
        reason = guard(delta, self.max_abs)
        if reason is not None:
            # Not written, its number not used: serving stays on the last good state, and the
            # next snapshot (gated) carries what these rows learned.
            c.refused += 1
            c.last_reason = reason
            self.freshness.requeue(actions)
            log.warning("delta %d refused: %s", delta.seq, reason)
            return
        started = time.perf_counter()
        path = await asyncio.to_thread(self.log.write, delta)
        written_at = time.perf_counter()
        size = path.stat().st_size
        c.written += 1
        c.last_seq = delta.seq
        c.rows += delta.rows
        c.keys += delta.keys
        c.bytes += size
        if self.sink is not None:
            self.sink.record(
                AddDelta(
                    delta.seq,
                    delta.offsets,
                    delta.samples_trained,
                    delta.rows,
                    delta.keys,
                    size,
                    delta.created_ms,
                )
            )
        c.last_write_s = round(written_at - started, 4)
        upto = self.prune_upto()
        if upto is not None:
            await asyncio.to_thread(self.log.prune, upto)
        if self.server is None:
            return
        served_at = await self._served(delta.seq)
        if served_at is None:
            c.unserved += 1
            self.freshness.requeue(actions)  # a snapshot that has them will measure them
            return
        c.last_served_seq = delta.seq
        c.last_served_s = round(time.perf_counter() - written_at, 4)
        self.freshness.served(actions, served_at)

    async def _served(self, seq: int) -> float | None:
        """When the server first answered with delta ``seq`` (or a later one) applied; None when
        it did not within the timeout (it is pinned, reloading, or away)."""
        assert self.server is not None
        deadline = time.monotonic() + self.served_timeout_s
        while time.monotonic() < deadline:
            try:
                _, applied = await self.server.probe_state()
            except DependencyError as exc:
                self.counters.last_reason = f"probe: {exc}"  # counted unserved if it lasts
                applied = 0
            if applied >= seq:
                return self.clock()
            await asyncio.sleep(0.01)
        return None
