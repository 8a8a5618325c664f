"""Checkpoints: weights, optimisers, vocabularies, join state and offsets in one file.

Written to a temporary file, flushed, then renamed over the previous checkpoint, so a crash
leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointStore:
    """One checkpoint file in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_FILE

    def save(self, state: dict[str, Any]) -> float:
        """Write ``state`` atomically; return the seconds it took."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT_VERSION, "saved_at": time.time(), **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - started

    def load(self) -> dict[str, Any] | None:
        """The last complete checkpoint, or None when there is none."""
        for orphan in self.directory.glob(f"{CHECKPOINT_FILE}.tmp-*") if self.directory.exists() else []:
            orphan.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"expected checkpoint format {FORMAT_VERSION}, got {state.get('format')!r} in {self.path}"
            )
        return state
