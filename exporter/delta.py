"""Deltas: what the learner changed since the last delta, for serving to apply in place.

Snapshots stay what they were (complete, gated version directories, the unit of rollback);
between them the updater writes a delta every ``--delta-interval-s``: the embedding rows its
steps moved, every dense tensor (a few kB), the id vocabularies' new assignments and the
title vectors of items whose title is new. Values are absolute, so a delta applied twice
changes nothing, and snapshot ``V`` (cut after delta ``s``, recorded in its graph) plus the
deltas after ``s`` is the learner's model as of the last of them.

On disk, beside the versions: ``<repository>/<model>/deltas/<seq>.npz`` (numpy arrays, no
pickles), written to a temporary name, fsynced and renamed, so a reader sees a delta whole or
not at all. The names inside are the serving graph's (:mod:`exporter.onnx_export`):

- ``meta``: JSON (``seq``, ``created_ms``, ``samples_trained``, ``offsets``: the consumer's
  positions when it was cut, so version + deltas up to ``seq`` traces to the events learned);
- ``rows.<table>`` int64 ``[k]`` and ``values.<table>`` float32 ``[k, d]`` for ``emb_user``,
  ``emb_token``, ``emb_item``, ``emb_category``, ``emb_brand`` and ``item_bias``;
- ``dense.<name>``: ``w1``, ``b1``, ``w2``, ``b2`` and, with the text tower, ``text_proj_t``,
  ``text_weight``;
- ``keys.<encoder>`` str ``[m]`` and ``keyrows.<encoder>`` int64 ``[m]``: assignments in order
  for ``vocab_user``, ``vocab_token``, ``vocab_item``, ``vocab_category``, ``vocab_brand`` (row
  1, OOV, for an id that gave its row up);
- ``titles.ids`` str ``[t]`` and ``titles.vectors`` float16 ``[t, D]``.

Serving's side is ``exporter/backend/onnxruntime/live.py``, which reads these names with numpy
alone (it runs inside Triton's Python stub).

A hold (``deltas/hold.json``: ``{"version": V, "upto": s, "reason": ...}``) tells serving to
answer with version ``V`` plus the deltas up to ``s`` and no further: the gate's way back to a
state that passed (:meth:`DeltaLog.hold`). Serving that has applied more rebuilds that state
from the version's files and the log, without a reload; a version other than ``V`` ignores it.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.onnx_export import dense_weights
from rankcore.model import FEATURES, Ranker

DELTA_DIR = "deltas"
SUFFIX = ".npz"
HOLD_FILE = "hold.json"
# A row or dense value beyond this in magnitude is no model freshrank trains: refuse the delta.
DEFAULT_MAX_ABS = 1e4


@dataclass(frozen=True)
class Delta:
    seq: int
    created_ms: int
    arrays: dict[str, np.ndarray]
    samples_trained: int = 0
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Embedding rows carried (all tables)."""
        return sum(len(a) for name, a in self.arrays.items() if name.startswith("rows."))

    @property
    def keys(self) -> int:
        return sum(len(a) for name, a in self.arrays.items() if name.startswith("keys."))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        meta = {
            "seq": self.seq,
            "created_ms": self.created_ms,
            "samples_trained": self.samples_trained,
            "offsets": self.offsets,
        }
        np.savez(buffer, meta=np.array(json.dumps(meta)), **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Delta:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        return cls(
            int(meta["seq"]),
            int(meta["created_ms"]),
            arrays,
            int(meta.get("samples_trained", 0)),
            {k: int(v) for k, v in meta.get("offsets", {}).items()},
        )


def build_delta(
    seq: int,
    model: Ranker,
    touched: Mapping[str, np.ndarray],
    keys: Mapping[str, list[tuple[str, int]]],
    titles: Mapping[str, np.ndarray],
    *,
    samples_trained: int = 0,
    offsets: Mapping[str, int] | None = None,
) -> Delta:
    """Delta ``seq`` of ``model`` as it is now: the rows in ``touched`` (per feature), every dense
    tensor, the vocabularies' assignments ``keys`` (per feature) and title vectors (per item);
    ``offsets`` are the consumer positions the model has learned up to."""
    arrays: dict[str, np.ndarray] = {}
    for feature in FEATURES:
        rows = touched.get(feature)
        if rows is None or not len(rows):
            continue
        index = np.asarray(rows, dtype=np.int64)
        weight = model.table(feature).weight.detach()
        arrays[f"rows.emb_{feature}"] = index
        arrays[f"values.emb_{feature}"] = weight[index].cpu().numpy()
        if feature == "item":
            arrays["rows.item_bias"] = index
            arrays["values.item_bias"] = model.item_bias.weight.detach()[index].cpu().numpy()
    for name, value in dense_weights(model).items():
        arrays[f"dense.{name}"] = value
    for feature, changes in keys.items():
        if changes:
            arrays[f"keys.vocab_{feature}"] = np.array([k for k, _ in changes], dtype=str)
            arrays[f"keyrows.vocab_{feature}"] = np.array([r for _, r in changes], dtype=np.int64)
    if titles:
        arrays["titles.ids"] = np.array(list(titles), dtype=str)
        arrays["titles.vectors"] = np.stack(list(titles.values())).astype(np.float16)
    return Delta(seq, int(time.time() * 1000), arrays, samples_trained, dict(offsets or {}))


def guard(delta: Delta, max_abs: float = DEFAULT_MAX_ABS) -> str | None:
    """Why ``delta`` must not be served (non-finite or out-of-range values), or None."""
    for name, array in delta.arrays.items():
        if not (name.startswith(("values.", "dense.", "titles.vectors"))) or not array.size:
            continue
        values = array.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            return f"non-finite values in {name}"
        largest = float(np.abs(values).max())
        if largest > max_abs:
            return f"{name} holds {largest:.3g}, beyond the guard's {max_abs:g}"
    return None


class DeltaLog:
    """The directory of deltas beside a model's versions: ``<seq>.npz``, whole or absent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def seqs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())

    def last(self) -> int:
        seqs = self.seqs()
        return seqs[-1] if seqs else 0

    def path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{SUFFIX}"

    def write(self, delta: Delta) -> Path:
        """Write ``delta`` atomically (temporary name, fsync, rename, fsync of the directory)."""
        final = self.path(delta.seq)
        self._write_atomic(final, delta.to_bytes())
        return final

    def hold(self, version: int, upto: int, reason: str) -> None:
        """Serving of ``version`` stops at delta ``upto`` (and goes back to it) until :meth:`release`."""
        body = json.dumps({"version": version, "upto": upto, "reason": reason}).encode()
        self._write_atomic(self.directory / HOLD_FILE, body)

    def release(self) -> None:
        """Serving follows the log again."""
        (self.directory / HOLD_FILE).unlink(missing_ok=True)

    def held(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.directory / HOLD_FILE).read_bytes())
        except FileNotFoundError:
            return None
        return data

    def _write_atomic(self, final: Path, body: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{final.name}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, upto: int) -> list[int]:
        """Remove the deltas with ``seq <= upto`` (every kept version was cut after them) and
        temporary files a crash left. The newest delta stays: a restarted writer numbers on
        from it, never again from one a version has already passed."""
        seqs = self.seqs()
        removed = [s for s in seqs[:-1] if s <= upto]
        for seq in removed:
            self.path(seq).unlink(missing_ok=True)
        for tmp in self.directory.glob(f".*{SUFFIX}.tmp") if self.directory.is_dir() else ():
            tmp.unlink(missing_ok=True)
        return removed
