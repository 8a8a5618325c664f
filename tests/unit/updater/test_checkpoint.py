from __future__ import annotations

from pathlib import Path

from updater.checkpoint import CheckpointStore


def test_checkpoint_round_trip_and_orphans(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load() is None
    store.save({"offsets": {"events:0": 7}, "weights": [1, 2]})
    torn = store.path.with_name(f"{store.path.name}.tmp-999")  # what save() writes, cut short by a crash
    torn.write_bytes(b"torn")
    state = store.load()
    assert state is not None and state["offsets"] == {"events:0": 7}
    assert not list(tmp_path.glob("*.tmp-*"))
    store.save({"offsets": {"events:0": 9}})
    assert store.load()["offsets"] == {"events:0": 9}  # type: ignore[index]


def test_a_group_rank_keeps_the_checkpoint_before_its_last_with_its_base(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_previous=True)
    store.save({"step": 1, "_tables": {"t": [1]}})  # a base
    store.save({"step": 2, "_tables": {"t": [2]}})  # a new base: the previous one's stays
    assert len(list(tmp_path.glob("tables-*.pt"))) == 2
    store.save({"step": 3})  # a patch on base 2: base 1 is named by neither now
    assert len(list(tmp_path.glob("tables-*.pt"))) == 1
    assert store.peek()["step"] == 3 and store.peek(previous=True)["step"] == 2  # type: ignore[index]
    restarted = CheckpointStore(tmp_path, keep_previous=True)
    older = restarted.load(previous=True)
    assert older is not None and older["step"] == 2 and older["_tables"] == {"t": [2]}
    restarted.adopt_previous()  # the group resumes from step 2: step 3 goes
    assert restarted.peek()["step"] == 2 and restarted.peek(previous=True) is None  # type: ignore[index]
    restarted.save({"step": 3})
    again = CheckpointStore(tmp_path, keep_previous=True).load()
    assert again is not None and again["step"] == 3 and again["_tables"] == {"t": [2]}


def test_a_crash_between_moving_the_last_aside_and_the_next_write_loads_the_last(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_previous=True)
    store.save({"step": 1, "_tables": {"t": [1]}})
    store.save({"step": 2})
    store.path.unlink()  # as if the process died right after the rename
    state = CheckpointStore(tmp_path, keep_previous=True).load()
    assert state is not None and state["step"] == 1 and state["_tables"] == {"t": [1]}
