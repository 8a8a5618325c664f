"""Publish a version directory atomically and keep the repository tidy.

A version is written under ``<model>/.tmp-<version>`` (Triton ignores non-numeric
directories), flushed to disk, then renamed to ``<model>/<version>``: a numbered directory
only ever exists complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "ranker"
DEFAULT_KEEP_VERSIONS = 5
TMP_PREFIX = ".tmp-"
ROLLED_BACK_PREFIX = ".rolled-back-"
_NAME_LINE = re.compile(rf'^name: "{MODEL_NAME}"$', re.MULTILINE)


@dataclass(frozen=True)
class Published:
    version: int
    path: Path
    size_bytes: int
    sha256: str


def default_config(model: str = MODEL_NAME) -> str:
    """The ``config.pbtxt`` shipped with freshrank, named ``model``.

    Triton requires a config's ``name`` to match its directory, so for any other model the
    shipped ``name: "ranker"`` line is rewritten; for ``ranker`` the text is the file as shipped.
    """
    path = Path(__file__).resolve().parent.parent / "model_repository" / MODEL_NAME / "config.pbtxt"
    if not path.exists():
        raise FileNotFoundError(
            f"expected {path} (install freshrank from its source tree with 'pip install -e .'), "
            "or put config.pbtxt into the model repository yourself"
        )
    text = path.read_text()
    if model == MODEL_NAME:
        return text
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
        raise ValueError(f"expected a model name of letters, digits, '_', '.' or '-', got {model!r}")
    renamed, count = _NAME_LINE.subn(f'name: "{model}"', text)
    if count != 1:
        raise ValueError(f'expected exactly one top-level name: "{MODEL_NAME}" line in {path}, found {count}')
    return renamed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Publisher:
    """Writes numbered versions of one model into a Triton model repository."""

    def __init__(self, repository: Path, model: str = MODEL_NAME, keep: int = DEFAULT_KEEP_VERSIONS) -> None:
        if keep < 1:
            raise ValueError(f"expected to keep at least 1 version, got {keep!r}")
        self.model_dir = Path(repository) / model
        self.keep = keep
        self.model_dir.mkdir(parents=True, exist_ok=True)
        config = self.model_dir / "config.pbtxt"
        if not config.exists():
            config.write_text(default_config(model))

    def config_text(self) -> str:
        return (self.model_dir / "config.pbtxt").read_text()

    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def next_version(self, floor: int = 0) -> int:
        rolled_back = [int(p.name.rsplit("-", 1)[1]) for p in self.model_dir.glob(f"{ROLLED_BACK_PREFIX}*")]
        return max([floor, *self.versions(), *rolled_back]) + 1

    def publish(self, version: int, write: Callable[[Path], list[Path]]) -> Published:
        """Run ``write(tmp_dir)`` and move its result into place as ``version``."""
        final = self.model_dir / str(version)
        if final.exists():
            raise FileExistsError(f"version {version} already exists in {self.model_dir}")
        tmp = self.model_dir / f"{TMP_PREFIX}{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            files = write(tmp)
            digest = hashlib.sha256()
            size = 0
            for f in sorted(files):
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Published(version, final, size, digest.hexdigest())

    def quarantine(self, versions: list[int]) -> None:
        """Move rolled-back versions out of Triton's sight (non-numeric names are ignored), so that
        "the newest version" is never one of them again."""
        for v in versions:
            path = self.model_dir / str(v)
            if path.is_dir():
                os.rename(path, self.model_dir / f"{ROLLED_BACK_PREFIX}{v}")

    def prune(self, protect: set[int] | None = None) -> list[int]:
        """Delete all but the newest ``keep`` versions (and any in ``protect``)."""
        protect = protect or set()
        versions = self.versions()
        doomed = [v for v in versions[: -self.keep] if v not in protect]
        for v in doomed:
            shutil.rmtree(self.model_dir / str(v), ignore_errors=True)
        rolled_back = sorted(
            self.model_dir.glob(f"{ROLLED_BACK_PREFIX}*"), key=lambda p: int(p.name.rsplit("-", 1)[1])
        )
        for path in rolled_back[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        return doomed

    def remove_orphans(self) -> None:
        """Delete half-written versions an interrupted writer left (only the writer may call this)."""
        for p in list(self.model_dir.iterdir()):
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
