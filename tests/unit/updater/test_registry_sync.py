"""RegistrySync: the outbox in front of PostgreSQL, over a real Outbox and a fake registry store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from exporter.records import AddVersion, MarkLive, RegistryOp, Serving, SetServing, SetStatus, to_dict
from rankcore.errors import DependencyError, PermanentError, RejectedRequest
from updater.outbox import Outbox
from updater.registry_sync import RegistrySync


class FakeStore:
    """A :class:`updater.ports.RegistryStore` in memory.

    ``down``: every call raises DependencyError (PostgreSQL away). ``refuse``: operation kinds
    it refuses for good (RejectedRequest), rolling back the whole chunk as a transaction would.
    """

    def __init__(self, *, max_version: int = 0, published: int = 0) -> None:
        self.down = False
        self.refuse: set[str] = set()
        self.applied: list[dict[str, Any]] = []
        self.chunks: list[int] = []  # the size of every apply call that got through
        self.serving_value = Serving()
        self.max_version_value = max_version
        self.published = published
        self._connected = False
        self.calls: dict[str, int] = {}
        self.refuse_all: PermanentError | None = None  # every write refused (no table, no privilege)

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.down:
            raise DependencyError("PostgreSQL: ConnectionRefusedError: [Errno 111] Connection refused")

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        self._call("start")
        self._connected = True

    async def stop(self) -> None:
        self.calls["stop"] = self.calls.get("stop", 0) + 1
        self._connected = False

    def terminate(self) -> None:
        self.calls["terminate"] = self.calls.get("terminate", 0) + 1
        self._connected = False

    async def apply(self, ops: list[dict[str, Any]]) -> None:
        self._call("apply")
        if self.refuse_all is not None:
            raise self.refuse_all
        for op in ops:
            if op["op"] in self.refuse:
                raise RejectedRequest(f"PostgreSQL: CheckViolationError: refused {op['op']} (SQLSTATE 23514)")
        self.applied.extend(ops)
        self.chunks.append(len(ops))

    async def serving(self) -> Serving:
        self._call("serving")
        return self.serving_value

    async def max_version(self) -> int:
        self._call("max_version")
        return self.max_version_value

    async def count_published(self) -> int:
        self._call("count_published")
        return self.published


OPS: list[RegistryOp] = [
    AddVersion(3, "published", {"events:0": 10}, 10, {"holdout_auc": 0.7}, path="/repo/ranker/3"),
    SetStatus(2, "rolled_back", "worse"),
    MarkLive(3, {"load_s": 0.1}),
]


def make(tmp_path: Path, store: FakeStore, **kwargs: Any) -> RegistrySync:
    outbox = Outbox(tmp_path / "state")
    outbox.open()
    return RegistrySync(outbox, store, timeout_s=1.0, **kwargs)


async def test_writes_survive_an_outage_and_are_applied_in_order(tmp_path: Path) -> None:
    store = FakeStore()
    sync = make(tmp_path, store)
    store.down = True
    for op in OPS:
        sync.record(op)

    await sync.flush_once()

    assert len(sync.outbox) == 3 and store.applied == []
    assert sync.health.ok is False and sync.health.outages == 1
    assert "Connection refused" in (sync.health.error or "")
    # Durable: a process started now finds them.
    again = Outbox(tmp_path / "state")
    again.open()
    assert again.pending() == [to_dict(op) for op in OPS]
    # Still down: one outage, not one per attempt.
    await sync.flush_once()
    assert sync.health.outages == 1 and len(sync.outbox) == 3

    store.down = False
    await sync.flush_once()

    assert store.applied == [to_dict(op) for op in OPS]
    assert store.chunks == [3]  # one transaction
    assert len(sync.outbox) == 0
    reopened = Outbox(tmp_path / "state")
    reopened.open()
    assert reopened.pending() == []
    assert sync.health.ok is True and sync.health.outages == 1
    assert sync.to_dict()["pending"] == 0 and sync.to_dict()["set_aside"] == 0


async def test_an_outage_during_apply_keeps_the_chunk_and_drops_the_pool(tmp_path: Path) -> None:
    store = FakeStore()
    sync = make(tmp_path, store)
    assert await sync.connect() is True
    sync.record(OPS[0])
    store.down = True  # connected, but the apply fails

    await sync.flush_once()

    assert len(sync.outbox) == 1 and store.applied == []
    assert store.calls["apply"] == 1  # an outage, not a refusal: no one-by-one retry
    assert store.calls["terminate"] == 1 and store.connected is False
    assert sync.health.ok is False and sync.health.outages == 1

    store.down = False
    await sync.flush_once()
    assert store.applied == [to_dict(OPS[0])] and len(sync.outbox) == 0
    assert store.calls["start"] == 2  # a fresh pool


async def test_a_permanent_error_sets_the_op_aside_and_is_no_outage(tmp_path: Path) -> None:
    store = FakeStore()
    sync = make(tmp_path, store)
    store.refuse = {"set_status"}
    for op in OPS:
        sync.record(op)

    await sync.flush_once()

    assert store.applied == [to_dict(OPS[0]), to_dict(OPS[2])]  # the others, in order
    assert store.chunks == [1, 1]  # the refused chunk rolled back, then one by one
    assert len(sync.outbox) == 0
    assert sync.set_aside == 1
    assert sync.last_set_aside["op"] == "set_status"
    assert "SQLSTATE 23514" in sync.last_set_aside["error"]
    lines = sync.outbox.rejected_path.read_bytes().splitlines()
    assert len(lines) == 1
    kept = orjson.loads(lines[0])
    assert kept["op"] == to_dict(OPS[1])
    assert kept["error"] == "PostgreSQL: CheckViolationError: refused set_status (SQLSTATE 23514)"
    assert sync.health.ok is True and sync.health.outages == 0
    assert store.calls.get("terminate", 0) == 0  # the pool is fine


async def test_an_outage_while_applying_one_by_one_keeps_the_rest(tmp_path: Path) -> None:
    store = FakeStore()
    sync = make(tmp_path, store)
    store.refuse = {"set_status"}
    for op in OPS:
        sync.record(op)
    original_apply = store.apply
    calls = 0

    async def apply_then_lose(ops: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # chunk (refused), op 1 (ok), op 2 (PostgreSQL goes away)
            store.down = True
        await original_apply(ops)

    store.apply = apply_then_lose  # type: ignore[method-assign]
    await sync.flush_once()

    assert store.applied == [to_dict(OPS[0])]
    assert sync.outbox.pending() == [to_dict(OPS[1]), to_dict(OPS[2])]
    assert sync.set_aside == 0 and not sync.outbox.rejected_path.exists()
    assert sync.health.ok is False and sync.health.outages == 1


async def test_read_serving_only_once_our_own_writes_are_applied(tmp_path: Path) -> None:
    store = FakeStore()
    seen: list[Serving] = []
    sync = make(tmp_path, store, on_serving=seen.append)
    store.serving_value = Serving("pinned", 3, "by hand")

    await sync.read_serving()  # not connected yet
    assert seen == [] and store.calls.get("serving", 0) == 0

    assert await sync.connect() is True
    sync.record(SetServing("rolled_back", 2, "worse"))
    await sync.read_serving()  # our rollback is not in the registry yet: keep what we know
    assert seen == [] and store.calls.get("serving", 0) == 0

    await sync.flush_once()
    await sync.read_serving()
    assert seen == [Serving("pinned", 3, "by hand")]
    assert store.calls["serving"] == 1


async def test_read_serving_marks_an_outage(tmp_path: Path) -> None:
    store = FakeStore()
    seen: list[Serving] = []
    sync = make(tmp_path, store, on_serving=seen.append)
    assert await sync.connect() is True
    store.down = True
    await sync.read_serving()
    assert seen == [] and sync.health.ok is False and store.connected is False


async def test_connect_reads_the_baseline_once(tmp_path: Path) -> None:
    store = FakeStore(max_version=7, published=5)
    sync = make(tmp_path, store)

    assert await sync.connect() is True

    assert (sync.max_version, sync.baseline_published) == (7, 5)
    assert sync.health.ok is True
    # What this process applies later does not move the baseline; a reconnect does not re-read it.
    store.max_version_value, store.published = 9, 6
    assert await sync.connect() is True  # already connected: nothing asked
    store.terminate()
    assert await sync.connect() is True
    assert store.calls["start"] == 2
    assert store.calls["max_version"] == 1 and store.calls["count_published"] == 1
    assert (sync.max_version, sync.baseline_published) == (7, 5)


async def test_connect_while_down_reads_the_baseline_when_back(tmp_path: Path) -> None:
    store = FakeStore(max_version=4, published=3)
    sync = make(tmp_path, store)
    store.down = True
    assert await sync.connect() is False
    assert sync.baseline_published is None and sync.max_version == 0
    assert sync.health.ok is False and sync.health.outages == 1
    store.down = False
    assert await sync.connect() is True
    assert (sync.max_version, sync.baseline_published) == (4, 3)
    assert sync.health.ok is True


async def test_flush_remaining_applies_what_it_can_and_leaves_the_rest(tmp_path: Path) -> None:
    store = FakeStore()
    sync = make(tmp_path, store)
    sync.record(OPS[0])
    await sync.flush_remaining(timeout_s=1.0)
    assert store.applied == [to_dict(OPS[0])] and len(sync.outbox) == 0
    store.down = True
    sync.record(OPS[2])
    await sync.flush_remaining(timeout_s=1.0)
    assert sync.outbox.pending() == [to_dict(OPS[2])]  # waits for the next start


async def test_a_registry_refusing_every_write_keeps_them_all(tmp_path: Path) -> None:
    # A table dropped, a privilege revoked: not one operation's data. Nothing is set aside (that
    # would empty the outbox into the rejected file); the writes wait and the status says why.
    store = FakeStore()
    sync = make(tmp_path, store)
    for op in OPS:
        sync.record(op)
    store.refuse_all = PermanentError(
        'PostgreSQL: UndefinedTableError: relation "model_versions" does not exist (SQLSTATE 42P01)'
    )
    await sync.flush_once()
    assert sync.outbox.pending() == [to_dict(op) for op in OPS]
    assert sync.set_aside == 0 and not sync.outbox.rejected_path.exists()
    assert sync.health.ok is False and "refuses registry writes" in (sync.health.error or "")
    assert sync.to_dict()["refused"] is not None and "42P01" in sync.to_dict()["refused"]
    store.refuse_all = None  # an operator recreated it
    await sync.flush_once()
    assert store.applied == [to_dict(op) for op in OPS] and sync.to_dict()["refused"] is None
    assert sync.health.ok is True


async def test_the_version_floor_follows_each_baseline_read(tmp_path: Path) -> None:
    store = FakeStore(max_version=7, published=5)
    floors: list[int] = []
    sync = make(tmp_path, store, on_max_version=floors.append)
    store.down = True
    assert await sync.connect() is False and floors == []  # PostgreSQL away at the start
    store.down = False
    assert await sync.connect() is True and floors == [7]
    store.max_version_value = 12  # another writer went on while we were a standby
    sync.reset_baseline()
    assert await sync.connect() is True and floors == [7, 12]
