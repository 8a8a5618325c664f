"""The registry outbox: PostgreSQL writes that must survive a database outage.

Dead letters and version records are appended here first (one JSON line each, fsynced), and
a flusher applies them to PostgreSQL in order, then drops them. While the database is down
the file grows, up to ``max_bytes``; past that the updater stops consuming until it drains.
Every operation is idempotent, so a crash between applying and dropping repeats nothing
harmful.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
OUTBOX_FILE = "registry-outbox.jsonl"
REJECTED_FILE = "registry-rejected.jsonl"


def _default(value: object) -> object:
    if isinstance(value, bytes):
        return {"__b64__": base64.b64encode(value).decode()}
    raise TypeError(f"cannot store {type(value).__name__} in the outbox")


def _revive(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__b64__"}:
            return base64.b64decode(obj["__b64__"])
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_revive(v) for v in obj]
    return obj


class Outbox:
    """An append-only file of pending registry operations."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(directory) / OUTBOX_FILE
        self.rejected_path = Path(directory) / REJECTED_FILE
        self.max_bytes = max_bytes
        self._entries: list[dict[str, Any]] = []

    def open(self) -> None:
        """Read what an earlier run left (a crash mid-append can leave a partial last line,
        which was never acknowledged: it is dropped)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries = self._read()
        self._rewrite(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    @property
    def full(self) -> bool:
        return self.size_bytes >= self.max_bytes

    def append(self, op: dict[str, Any]) -> None:
        """Durably queue one operation."""
        line = orjson.dumps(op, default=_default, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with open(self.path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._entries.append(op)

    def pending(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def set_aside(self, op: dict[str, Any], error: str) -> None:
        """Keep an operation PostgreSQL refused for good, for a person to look at."""
        line = orjson.dumps({"error": error, "op": op}, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)
        with open(self.rejected_path, "ab") as fh:
            fh.write(line + b"\n")

    def drop(self, count: int) -> None:
        """Forget the first ``count`` operations (they are applied)."""
        self._entries = self._entries[count:]
        self._rewrite(self._entries)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_bytes().splitlines():
            try:
                entries.append(_revive(orjson.loads(line)))
            except orjson.JSONDecodeError:
                break  # the torn tail of an interrupted append
        return entries

    def _rewrite(self, entries: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for op in entries:
                fh.write(orjson.dumps(op, default=_default, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
