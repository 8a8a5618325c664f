"""Pretrained text understanding, frozen: word vectors distilled from all-MiniLM-L6-v2.

The table (``rankcore/data/minilm_words.npz``, made by ``python -m freshrank.distill``) holds one
vector per word, each the static (model2vec) encoding of that word by the sentence transformer.
A text's vector is the sum of the vectors of its known words, L2-normalised (zero when no word
is known): lower-cased and split on spaces exactly as the ONNX graph splits queries, so a
query encoded inside Triton and the same query encoded here agree to float rounding. The
transformer costs milliseconds per text on a CPU; a table lookup costs microseconds, which is
what lets the query be encoded inside the serving graph on every request.

Titles are encoded once per distinct title (cached) and stored rounded to float16, the
precision the serving graph keeps them in, so training and serving see the same vectors.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankcore.errors import ConfigError
from rankcore.events import normalise_query, query_tokens

TABLE_PATH = Path(__file__).with_name("data") / "minilm_words.npz"
# Words of a title that count (titles are at most 512 characters); queries read max_tokens.
TITLE_WORDS = 32
# Norms below this are "no known word": the vector stays zero (the graph uses the same floor).
NORM_FLOOR = 1e-6
DEFAULT_CACHE_SIZE = 200_000


@dataclass(frozen=True)
class WordTable:
    """``words[i]`` -> ``vectors[i + 1]``; row 0 is the zero vector that unknown words map to."""

    words: tuple[str, ...]
    vectors: np.ndarray  # float16, [len(words) + 1, dim]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if self.vectors.dtype != np.float16 or self.vectors.ndim != 2:
            raise ValueError(f"expected a float16 matrix of word vectors, got {self.vectors.dtype}")
        if len(self.vectors) != len(self.words) + 1 or np.any(self.vectors[0]):
            raise ValueError("expected a zero row 0 and one row per word after it")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @functools.cached_property
    def rows(self) -> dict[str, int]:
        return {w: i + 1 for i, w in enumerate(self.words)}

    @functools.cached_property
    def vectors32(self) -> np.ndarray:
        return self.vectors.astype(np.float32)

    @classmethod
    def from_words(cls, words: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]) -> WordTable:
        table = np.zeros((len(words) + 1, vectors.shape[1]), dtype=np.float16)
        table[1:] = vectors
        return cls(tuple(words), table, meta)


@functools.cache
def load_table(path: Path = TABLE_PATH) -> WordTable:
    """The word table shipped with freshrank (loaded once per process)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            words, vectors, meta = data["words"], data["vectors"], str(data["meta"])
    except FileNotFoundError:
        raise ConfigError(
            f"expected the word table at {path} (it ships with freshrank; rebuild it with"
            " `python -m freshrank.distill`), or run with --model-text-dim 0"
        ) from None
    return WordTable.from_words([str(w) for w in words], vectors.astype(np.float16), json.loads(meta))


class TextEncoder:
    """Texts -> unit vectors through a :class:`WordTable`, each distinct text encoded once."""

    def __init__(self, table: WordTable, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.table = table
        self.cache_size = cache_size
        self._queries: dict[int, dict[str, np.ndarray]] = {}
        self._titles: dict[str, np.ndarray] = {}
        self.encoded = 0

    @property
    def dim(self) -> int:
        return self.table.dim

    def _encode(self, words: list[str]) -> np.ndarray:
        self.encoded += 1
        rows = self.table.rows
        known = [r for w in words if (r := rows.get(w, 0))]
        total = self.table.vectors32[known].sum(axis=0) if known else np.zeros(self.dim, np.float32)
        return (total / max(float(np.linalg.norm(total)), NORM_FLOOR)).astype(np.float32)

    def _cached(self, cache: dict[str, np.ndarray], text: str, words: int, half: bool) -> np.ndarray:
        vector = cache.get(text)
        if vector is None:
            vector = self._encode(query_tokens(normalise_query(text))[:words])
            if half:
                vector = vector.astype(np.float16).astype(np.float32)
            if len(cache) >= self.cache_size:
                cache.clear()  # a plain bound: re-encoding is cheap, and no order to keep
            cache[text] = vector
        return vector

    def query(self, text: str, max_words: int) -> np.ndarray:
        """A query's vector, as the serving graph computes it from the raw query."""
        return self._cached(self._queries.setdefault(max_words, {}), text, max_words, half=False).copy()

    def queries(self, texts: Iterable[str], max_words: int) -> np.ndarray:
        cache = self._queries.setdefault(max_words, {})
        return self._stack([self._cached(cache, t, max_words, False) for t in texts])

    def title(self, text: str) -> np.ndarray:
        """A title's vector, rounded to the float16 the serving graph stores it in."""
        return self._cached(self._titles, text, TITLE_WORDS, half=True).copy()

    def titles(self, texts: Iterable[str]) -> np.ndarray:
        cache = self._titles
        return self._stack([self._cached(cache, t, TITLE_WORDS, True) for t in texts])

    def _stack(self, vectors: list[np.ndarray]) -> np.ndarray:
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)


@functools.cache
def default_encoder() -> TextEncoder:
    """One encoder per process over the shipped table (its cache is shared by every user)."""
    return TextEncoder(load_table())
