"""Registry sync: the outbox in front of PostgreSQL, its flusher, and PostgreSQL's health.

Every registry write is recorded durably in the outbox at once (:meth:`RegistrySync.record`),
and the flush task applies the outbox in order, in bounded transactions, whenever PostgreSQL
is reachable. An outage only delays writes; an operation PostgreSQL refuses for good (a
permanent error: a constraint, bad data) is set aside with a log line and a status entry,
never retried forever and never reported as an outage. The same task picks up serving
decisions operators made with the CLI (pin, unpin, rollback), kept in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from exporter.records import RegistryOp, Serving, to_dict
from rankcore.errors import DependencyError, PermanentError, RejectedRequest
from rankcore.health import Health
from updater.ingest import DeadLetter
from updater.outbox import Outbox
from updater.ports import RegistryStore
from updater.registry import DEFAULT_TIMEOUT_S, dead_letters_op

log = logging.getLogger(__name__)

OUTBOX_CHUNK = 200
FLUSH_EVERY_S = 1.0
READ_SERVING_EVERY_S = 2.0


class RegistrySync:
    def __init__(
        self,
        outbox: Outbox,
        registry: RegistryStore,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_serving: Callable[[Serving], None] = lambda serving: None,
        on_max_version: Callable[[int], None] = lambda version: None,
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.timeout_s = timeout_s
        self.on_serving = on_serving
        self.on_max_version = on_max_version
        # Why PostgreSQL refuses every write for now (no table, no privilege): the writes wait.
        self.refused: str | None = None
        self.health = Health("postgres")
        self.set_aside = 0
        self.last_set_aside: dict[str, Any] = {}
        # Read once, before anything this process queued has been applied.
        self.baseline_published: int | None = None
        self.max_version = 0
        self._wanted = asyncio.Event()
        self._last_serving_read = 0.0

    # ----------------------------------------------------------------- the sink

    def record(self, op: RegistryOp) -> None:
        """Queue a registry write durably; the flusher applies it when PostgreSQL is reachable."""
        self.append(to_dict(op))

    def record_dead_letters(self, letters: list[DeadLetter]) -> None:
        if letters:
            self.append(dead_letters_op(letters))

    def append(self, op: dict[str, Any]) -> None:
        self.outbox.append(op)
        self._wanted.set()

    # ----------------------------------------------------------------- PostgreSQL

    def _down(self, exc: BaseException) -> None:
        self.health.mark(False, str(exc))
        self.registry.terminate()  # a fresh pool once it is back

    def _refuses(self, exc: PermanentError) -> None:
        """PostgreSQL refuses every write (not one operation's data): keep them all, say so loudly."""
        if self.refused is None:
            log.error("PostgreSQL refuses the registry writes until someone acts: %s", exc)
        self.refused = str(exc)
        self.health.mark(False, f"refuses registry writes: {exc}")

    def reset_baseline(self) -> None:
        """Read the baseline again at the next connect (a standby that became the writer)."""
        self.baseline_published = None

    async def connect(self) -> bool:
        """Connect if needed (and read the baseline once); False while PostgreSQL is away."""
        if self.registry.connected and self.baseline_published is not None:
            return True
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.registry.start()
                if self.baseline_published is None:
                    self.max_version = max(self.max_version, await self.registry.max_version())
                    self.baseline_published = await self.registry.count_published()
                    self.on_max_version(self.max_version)
        except (DependencyError, TimeoutError) as exc:
            self._down(exc)
            return False
        except PermanentError as exc:
            self._refuses(exc)
            return False
        self.health.mark(True)
        return True

    async def flush_once(self) -> None:
        """Apply the outbox to PostgreSQL in bounded transactions, oldest first."""
        while len(self.outbox):
            if not await self.connect():
                return
            chunk = self.outbox.pending()[:OUTBOX_CHUNK]
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.registry.apply(chunk)
            except RejectedRequest as exc:
                # Not a passing fault: find the operation PostgreSQL refuses and set it aside.
                try:
                    await self._apply_one_by_one(chunk, exc)
                except (DependencyError, TimeoutError) as lost:
                    self._down(lost)
                    return
                except PermanentError as refused:
                    self._refuses(refused)
                    return
            except (DependencyError, TimeoutError) as exc:
                self._down(exc)
                return
            except PermanentError as exc:
                self._refuses(exc)
                return
            else:
                self.outbox.drop(len(chunk))
            self.refused = None
            self.health.mark(True)

    async def _apply_one_by_one(self, chunk: list[dict[str, Any]], error: Exception) -> None:
        for op in chunk:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.registry.apply([op])
            except RejectedRequest as exc:
                log.error(  # noqa: TRY400 - a refused row, not a crash: no traceback
                    "registry refused a %s operation for good (%s); set aside in %s",
                    op.get("op"),
                    exc,
                    self.outbox.rejected_path,
                )
                self.outbox.set_aside(op, str(exc))
                self.set_aside += 1
                self.last_set_aside = {"op": op.get("op"), "error": str(exc), "at": time.time()}
            self.outbox.drop(1)
        log.warning("registry operations applied one by one after: %s", error)

    async def read_serving(self) -> None:
        """Pick up a pin, unpin or manual rollback made with the CLI (kept in the registry)."""
        if not self.registry.connected or len(self.outbox):
            return  # our own serving changes are not applied yet; keep what we know
        try:
            async with asyncio.timeout(self.timeout_s):
                serving = await self.registry.serving()
        except (DependencyError, TimeoutError) as exc:
            self._down(exc)
            return
        except PermanentError as exc:
            log.error("could not read the serving decision: %s", exc)  # noqa: TRY400
            return
        if len(self.outbox):
            return  # a decision of ours (a rollback) was recorded while this read ran: it is newer
        self.on_serving(serving)

    async def run(self) -> None:
        """The flush task: apply what is queued (at once when woken, else every second)."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a cancellation that meets wait_for's
            # timeout is swallowed, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_EVERY_S):
                    await self._wanted.wait()
            self._wanted.clear()
            if self.baseline_published is None:
                await self.connect()  # the baseline is owed (PostgreSQL was away), even with nothing to write
            await self.flush_once()
            if time.monotonic() - self._last_serving_read >= READ_SERVING_EVERY_S:
                self._last_serving_read = time.monotonic()
                await self.read_serving()

    async def flush_remaining(self, timeout_s: float) -> None:
        """A last flush at stop, at most ``timeout_s``; the rest waits in the outbox for the next start."""
        with contextlib.suppress(TimeoutError):  # what is left is logged below and kept
            async with asyncio.timeout(timeout_s):
                await self.flush_once()
        if len(self.outbox):
            log.warning(
                "%d registry writes stay in %s for the next start", len(self.outbox), self.outbox.path
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": len(self.outbox),
            "bytes": self.outbox.size_bytes,
            "set_aside": self.set_aside,
            "refused": self.refused,
            "last_set_aside": self.last_set_aside,
        }
