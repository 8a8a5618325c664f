"""Checks before publishing: the ONNX file loads in onnxruntime and scores like torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rankcore.errors import CheckFailed
from rankcore.events import normalise_query
from rankcore.features import Vocabularies, encode, score
from rankcore.model import Ranker
from rankcore.sample import Sample

DEFAULT_ATOL = 1e-4


def feeds(samples: list[Sample]) -> dict[str, np.ndarray]:
    """Serving-contract inputs for ``samples`` (raw ids, as a client would send them): one
    batch row per sample, each input ``[n, 1]``."""
    columns = {
        "user_id": np.array([s.user_id for s in samples], dtype=object),
        "query": np.array([s.query for s in samples], dtype=object),
        "item_id": np.array([s.item_id for s in samples], dtype=object),
        "category": np.array([s.category for s in samples], dtype=object),
        "brand": np.array([s.brand for s in samples], dtype=object),
        "price": np.array([s.price for s in samples], dtype=np.float32),
    }
    return {name: values.reshape(-1, 1) for name, values in columns.items()}


def open_session(onnx_path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def check_parity(
    onnx_path: Path,
    model: Ranker,
    vocabs: Vocabularies,
    samples: list[Sample],
    atol: float = DEFAULT_ATOL,
    titles: Mapping[str, str] | None = None,
) -> float:
    """Largest |onnxruntime - torch| score difference on ``samples``; raise when above ``atol``.

    Serving knows an item's title from the ``titles`` exported with the version, so torch is
    given those titles too (the samples' own may be older)."""
    if not samples:
        raise CheckFailed("parity check needs at least one sample")
    try:
        session = open_session(onnx_path)
        (onnx_scores,) = session.run(["score"], feeds(samples))
        onnx_scores = onnx_scores.reshape(-1)
    except Exception as exc:
        raise CheckFailed(f"onnxruntime could not run {onnx_path}: {exc}") from exc
    # The graph lower-cases and splits raw queries itself; torch sees them as the cleaner leaves them.
    titles = titles or {}
    cleaned = [replace(s, query=normalise_query(s.query), title=titles.get(s.item_id, "")) for s in samples]
    batch = encode(cleaned, vocabs, model.config.max_tokens, grow=False)
    torch_scores = score(model, batch)
    if not np.all(np.isfinite(onnx_scores)):
        raise CheckFailed(f"onnxruntime produced non-finite scores for {onnx_path}")
    diff = float(np.max(np.abs(onnx_scores - torch_scores)))
    if diff > atol:
        raise CheckFailed(f"expected onnxruntime to match torch within {atol}, got max difference {diff:.3g}")
    return diff
