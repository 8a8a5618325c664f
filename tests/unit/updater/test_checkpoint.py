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
