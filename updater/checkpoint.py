"""Checkpoints: weights, optimisers, vocabularies, join state and offsets.

Two files: ``checkpoint.pt`` (everything but the embedding tables, plus the table rows
changed since the base) and the *base* it names, ``tables-<n>.pt`` (the tables and their
optimiser moments, whole). A state that carries :data:`TABLES` writes a new base first; one
that does not is a patch on the current base. Each file is written to a temporary name,
fsynced, then renamed, and a base is removed only once no checkpoint names it, so a crash
leaves either the old checkpoint or the new one, each with its base, never a torn file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
# A training group's rank keeps the checkpoint before its last too: the ranks write theirs one
# by one, and a crash between two writes leaves some a checkpoint ahead of the others'.
PREVIOUS_FILE = "checkpoint.previous.pt"
FORMAT_VERSION = 1
TABLES = "_tables"  # a state's key for the base's tensors (updater.learner.TABLES)
TABLES_FILE = "tables_file"


class CheckpointStore:
    """One checkpoint file in ``directory`` (and, with ``keep_previous``, the one before it)."""

    def __init__(self, directory: Path, keep_previous: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_FILE
        self.previous = self.directory / PREVIOUS_FILE
        self.keep_previous = keep_previous
        self.tables_file: str | None = None  # the base the last checkpoint written or read names
        self.previous_tables_file: str | None = None  # the base the previous one names
        self.last_base_bytes = 0
        self.last_bytes = 0
        self.last_kind = ""  # "base" (tables written whole) or "patch" (rows changed since)

    @property
    def has_base(self) -> bool:
        return self.tables_file is not None

    def save(self, state: dict[str, Any]) -> float:
        """Write ``state`` atomically (its base first, when it carries one); return the seconds."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in state.items() if k != TABLES}
        if TABLES in state:
            name = f"tables-{time.time_ns()}.pt"
            base = {"format": FORMAT_VERSION, **state[TABLES]}
            self.last_base_bytes = self._write(self.directory / name, base)
            body[TABLES_FILE] = name
            self.last_kind = "base"
        elif self.tables_file is not None:
            self.last_kind = "patch"
            body[TABLES_FILE] = self.tables_file
        if self.keep_previous and self.path.exists():
            os.replace(self.path, self.previous)  # a crash now leaves the previous one to load
            self.previous_tables_file = self.tables_file
        self.last_bytes = self._write(self.path, {"format": FORMAT_VERSION, "saved_at": time.time(), **body})
        self.tables_file = body.get(TABLES_FILE)
        self._remove_unnamed_bases()
        return time.perf_counter() - started

    def _remove_unnamed_bases(self) -> None:
        named = {self.tables_file, self.previous_tables_file if self.keep_previous else None}
        for old in self.directory.glob("tables-*.pt"):
            if old.name not in named:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every checkpoint and base: the next start is a first one."""
        for path in (self.path, self.previous, *self.directory.glob("tables-*.pt")):
            path.unlink(missing_ok=True)
        self.tables_file = self.previous_tables_file = None

    def adopt_previous(self) -> None:
        """The previous checkpoint is the one resumed from: the newer one goes (a restart
        after this resumes from the same point)."""
        name = (self.peek(previous=True) or {}).get(TABLES_FILE)
        os.replace(self.previous, self.path)
        self.tables_file, self.previous_tables_file = name, None
        self._remove_unnamed_bases()

    def _write(self, path: Path, state: dict[str, Any]) -> int:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return size

    def load(self, previous: bool = False) -> dict[str, Any] | None:
        """The last complete checkpoint (or, with ``previous``, the one before it), or None."""
        for orphan in self.directory.glob("*.tmp-*") if self.directory.exists() else []:
            orphan.unlink(missing_ok=True)
        if self.keep_previous and not self.path.exists() and self.previous.exists():
            self.adopt_previous()  # a crash between moving the last one aside and the next write
        state = self.peek(previous)
        if state is None:
            return None
        name = state.pop(TABLES_FILE, None)
        if name is not None:
            tables: dict[str, Any] = torch.load(self.directory / name, map_location="cpu", weights_only=False)
            tables.pop("format", None)
            state[TABLES] = tables
        # (The previous one's base needs no name here: the next save moves this one into its
        # place, and adopt_previous() reads it from the file.)
        if previous:
            self.previous_tables_file = name
        else:
            self.tables_file = name
        return state

    def peek(self, previous: bool = False) -> dict[str, Any] | None:
        """A checkpoint without its base's tables (what it says of itself), or None."""
        path = self.previous if previous else self.path
        if not path.exists():
            return None
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"expected checkpoint format {FORMAT_VERSION}, got {state.get('format')!r} in {path}"
            )
        return state
