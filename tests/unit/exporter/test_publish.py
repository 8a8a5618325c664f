from __future__ import annotations

from pathlib import Path

import pytest

from exporter.publish import Publisher


def write_files(directory: Path) -> list[Path]:
    (directory / "model.onnx").write_bytes(b"graph")
    return [directory / "model.onnx"]


def test_publish_is_atomic_and_numbered(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=2)
    assert (tmp_path / "ranker" / "config.pbtxt").exists()
    first = pub.publish(pub.next_version(), write_files)
    assert first.version == 1 and first.size_bytes == 5 and len(first.sha256) == 64
    assert pub.next_version(floor=10) == 11

    def broken(directory: Path) -> list[Path]:
        (directory / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pub.publish(2, broken)
    assert pub.versions() == [1]
    assert [p.name for p in (tmp_path / "ranker").iterdir() if p.name.startswith(".tmp")] == []
    with pytest.raises(FileExistsError):
        pub.publish(1, write_files)


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=2)
    for v in range(1, 6):
        pub.publish(v, write_files)
    assert pub.prune(protect={1}) == [2, 3]
    assert pub.versions() == [1, 4, 5]


def test_orphaned_temp_dirs_are_removed_by_the_writer(tmp_path: Path) -> None:
    (tmp_path / "ranker" / ".tmp-3").mkdir(parents=True)
    publisher = Publisher(tmp_path)
    assert (tmp_path / "ranker" / ".tmp-3").exists()  # not the business of whoever opens the repository
    publisher.remove_orphans()  # the writer's, once it holds the lease
    assert not (tmp_path / "ranker" / ".tmp-3").exists()


def test_quarantined_versions_are_out_of_sight(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=2)
    for v in range(1, 5):
        pub.publish(v, write_files)
    pub.quarantine([3, 4])
    assert pub.versions() == [1, 2]
    assert pub.next_version() == 5  # a number once used is never used again
    assert (tmp_path / "ranker" / ".rolled-back-4").is_dir()
