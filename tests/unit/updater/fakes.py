"""Small fakes of the updater's ports (source, registry, lease, server), for the service's unit tests.

Each records what was done to it in a shared ``log`` so a test can check the order of the
stop sequence; each can be made to fail the way the real adapter does (DependencyError).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from exporter.records import Serving
from rankcore.errors import DependencyError, LeaseLost, RejectedRequest
from rankcore.model import RankerConfig
from updater.ingest import Record
from updater.settings import Timeouts, UpdaterSettings
from updater.status import Status

TINY = RankerConfig(
    user_capacity=64,
    token_capacity=64,
    item_capacity=64,
    category_capacity=8,
    brand_capacity=8,
    dim=4,
    hidden=8,
)


def settings(tmp: Path, **overrides: Any) -> UpdaterSettings:
    values: dict[str, Any] = dict(
        bootstrap="kafka:9092",
        pg_dsn="postgresql://fake/db",
        repository=tmp / "repo",
        state_dir=tmp / "state",
        batch_size=16,
        max_wait_s=0.05,
        publish_interval_s=0.2,
        checkpoint_interval_s=0.3,
        window_ms=1_000,
        model=TINY,
        holdout_every=0,
        metrics_port=0,
        timeouts=Timeouts(fetch_ms=10, triton_watch_s=0.1, stop_s=5.0, export_stop_s=5.0, registry_s=1.0),
    )
    values.update(overrides)
    return UpdaterSettings(**values)


def traffic(requests: int, start_ms: int, clicked: str = "hot") -> tuple[list[bytes], int]:
    """Each request shows "hot" (clicked at once) and "cold"; the last request pushes the
    watermark past every earlier window. Returns the record values and the samples they make."""
    values: list[bytes] = []
    for r in range(requests):
        ts = start_ms + r * 10
        for item in ("hot", "cold"):
            values.append(_event("impression", ts, f"u{r % 7}", f"r{r}", item, f"{r}-{item}-imp"))
        values.append(_event("click", ts + 2, f"u{r % 7}", f"r{r}", clicked, f"{r}-{clicked}-clk"))
    # Far enough ahead to close every window above, not its own.
    late = start_ms + requests * 10 + 5_000
    values.append(_event("impression", late, "u0", "late", "hot", "late-imp"))
    return values, 2 * requests


def _event(etype: str, ts: int, user: str, request: str, item: str, eid: str) -> bytes:
    body: dict[str, Any] = {
        "event_id": eid,
        "type": etype,
        "ts": ts,
        "user_id": user,
        "request_id": request,
        "query": "red shoes",
        "item_id": item,
        "item": {"category": "shoes", "brand": "acme", "price": 49.0},
    }
    if etype == "impression":
        body["position"] = 0
    return orjson.dumps(body)


class Log(list[str]):
    """What the fakes were asked to do, in order."""


class InMemorySource:
    """One partition of records; fetch hands them out in chunks; commit remembers offsets."""

    def __init__(self, log: Log, values: Sequence[bytes] = (), topic: str = "events") -> None:
        self.log = log
        self.topic = topic
        self.records = [Record(topic, 0, i, b"k", v) for i, v in enumerate(values)]
        self.positions: Callable[[], Mapping[str, int]] = dict
        self.paused = False
        self.pauses = 0
        self.committed: dict[str, int] = {}
        self.fail_commit = False
        self.fail_start = False
        self.started = False
        self._next = 0

    def extend(self, values: Sequence[bytes]) -> None:
        start = len(self.records)
        self.records += [Record(self.topic, 0, start + i, b"k", v) for i, v in enumerate(values)]

    async def start(self) -> None:
        self.log.append("source.start")
        if self.fail_start:
            raise DependencyError("Kafka at kafka:9092: no broker")
        self.started = True
        self._next = self.positions().get(f"{self.topic}:0", 0)

    async def stop(self) -> None:
        self.log.append("source.stop")
        self.started = False

    async def fetch(self, timeout_ms: int, max_records: int) -> list[Record]:
        if self.paused or self._next >= len(self.records):
            await asyncio.sleep(timeout_ms / 1000)
            return []
        chunk = self.records[self._next : self._next + min(max_records, 50)]
        self._next += len(chunk)
        await asyncio.sleep(0)
        return chunk

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1
        self.log.append("source.pause")

    def resume(self) -> None:
        self.paused = False
        self.log.append("source.resume")

    async def commit(self, offsets: Mapping[str, int]) -> None:
        self.log.append("source.commit")
        if self.fail_commit:
            raise DependencyError("Kafka offset commit: RequestTimedOutError")
        self.committed = dict(offsets)

    def lag(self) -> int | None:
        return len(self.records) - self._next

    def lags(self) -> dict[str, int]:
        return {f"{self.topic}:0": len(self.records) - self._next}

    def behind(self) -> frozenset[str] | None:
        return frozenset({f"{self.topic}:0"}) if self._next < len(self.records) else frozenset()


class FakeRegistry:
    """The registry's tables as lists; ``down`` raises DependencyError, ``refuse`` RejectedRequest."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.applied: list[dict[str, Any]] = []
        self.serving_row = Serving()
        self.down = False
        self.refuse: str | None = None
        self.connected = False

    async def start(self) -> None:
        if self.down:
            raise DependencyError("PostgreSQL: ConnectionRefusedError")
        self.connected = True

    async def stop(self) -> None:
        self.log.append("registry.stop")
        self.connected = False

    def terminate(self) -> None:
        self.connected = False

    async def apply(self, ops: list[dict[str, Any]]) -> None:
        if self.down:
            raise DependencyError("PostgreSQL: ConnectionResetError")
        if self.refuse is not None and any(op["op"] == self.refuse for op in ops):
            raise RejectedRequest("PostgreSQL: CheckViolationError (SQLSTATE 23514)")
        self.applied.extend(ops)

    async def serving(self) -> Serving:
        return self.serving_row

    async def max_version(self) -> int:
        return max((op["version"] for op in self.applied if op["op"] == "add_version"), default=0)

    async def count_published(self) -> int:
        return sum(1 for op in self.applied if op["op"] == "add_version" and op["status"] == "published")

    def ops(self, kind: str) -> list[dict[str, Any]]:
        return [op for op in self.applied if op["op"] == kind]


class ScriptedLease:
    """Token 1; ``confirm`` answers from ``script`` (True, False or an exception), then True."""

    def __init__(self, log: Log, script: Sequence[bool | BaseException] = ()) -> None:
        self.log = log
        self.token: int | None = None
        self.script = list(script)
        self.released = False

    async def wait(self, stopping: asyncio.Event) -> bool:
        self.token = 1
        return True

    async def confirm(self) -> bool:
        self.log.append("lease.confirm")
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return True

    async def release(self) -> None:
        self.log.append("lease.release")
        self.released = True


def lease_lost() -> LeaseLost:
    return LeaseLost("writer lease for 'ranker' now has token 2, ours is 1")


class ManualClock:
    """Wall time that a test moves on; monotonic time follows the real one (sleeps are real)."""

    def __init__(self, at: float = 1_800_000_000.0) -> None:
        self.at = at

    def time(self) -> float:
        return self.at + time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic()


async def wait_for(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


class TinyServer:
    """A model server over a repository directory: serves the newest version (or a pinned one)."""

    def __init__(self, log: Log, model_dir: Path) -> None:
        self.log = log
        self.url = "fake:8001"
        self.model_dir = model_dir
        self.down = False
        self.serving: int | None = None
        self.loads: list[int | None] = []

    def _check(self) -> None:
        if self.down:
            raise DependencyError(f"Triton at {self.url} did not answer")

    async def ready(self) -> bool:
        self._check()
        return True

    async def load(
        self, version: int | None = None, config_text: str | None = None, delta: int | None = None
    ) -> float:
        self._check()
        self.loads.append(version)
        versions = sorted(int(p.name) for p in self.model_dir.iterdir() if p.name.isdigit())
        self.serving = version if version is not None else (versions[-1] if versions else None)
        return 0.01

    async def served_version(self) -> int | None:
        self._check()
        return self.serving

    async def probe(self) -> int:
        self._check()
        if self.serving is None:
            raise DependencyError("no version is loaded")
        return self.serving

    async def probe_state(self) -> tuple[int, int]:
        return (await self.probe(), 0)

    async def close(self) -> None:
        self.log.append("server.close")


def blank_status(
    t: float = 0.0, events: int = 0, dead: int = 0, trained: int = 0, **changes: object
) -> Status:
    """A status with the given counters and every other field empty (None, {} or [])."""
    required = {
        f.name: None
        for f in dataclasses.fields(Status)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    values = {**required, "updated_at": t, "events_consumed": events, "dead_letters": dead}
    values.update(samples_trained=trained, consumer_paused=False, device="cpu", **changes)
    return Status(**values)  # type: ignore[arg-type]
