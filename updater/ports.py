"""The seams of the updater: what it needs from the outside world, as small interfaces.

:meth:`updater.service.Updater.from_settings` builds the real adapters (Kafka, PostgreSQL,
the writer lease, Triton); a test passes small fakes instead. Every adapter raises
:class:`rankcore.errors.DependencyError` when its remote fails in a way retrying can mend,
and :class:`rankcore.errors.PermanentError` when it refused for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from exporter.records import Serving
from updater.ingest import RawRecord


class EventSource(Protocol):
    """Records in, offsets committed; ``positions`` (set by the updater) says where its state is."""

    positions: Callable[[], Mapping[str, int]]
    paused: bool

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def fetch(self, timeout_ms: int, max_records: int) -> Sequence[RawRecord]: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    async def commit(self, offsets: Mapping[str, int]) -> None: ...
    def lag(self) -> int | None: ...
    def behind(self) -> frozenset[str] | None: ...


class RegistryStore(Protocol):
    """The PostgreSQL registry as the updater uses it (see :class:`updater.registry.Registry`)."""

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def terminate(self) -> None: ...
    async def apply(self, ops: list[dict[str, Any]]) -> None: ...
    async def serving(self) -> Serving: ...
    async def max_version(self) -> int: ...
    async def count_published(self) -> int: ...


class Lease(Protocol):
    """One writer per model (see :class:`updater.lease.WriterLease`)."""

    token: int | None

    async def wait(self, stopping: asyncio.Event) -> bool: ...
    async def confirm(self) -> bool: ...
    async def release(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (timestamps in status and records)."""
        ...

    def monotonic(self) -> float:
        """Seconds for cadences and durations."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
