"""The frozen text encoder: how texts become vectors, and that the shipped table understands words."""

from __future__ import annotations

import numpy as np
import pytest

from rankcore.model import RankerConfig
from rankcore.text import TITLE_WORDS, TextEncoder, WordTable, load_table


def _encoder() -> TextEncoder:
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2]], dtype=np.float16)
    return TextEncoder(WordTable.from_words(["red", "shoe", "tent"], vectors, {}))


def test_a_text_is_the_normalised_sum_of_its_known_words() -> None:
    enc = _encoder()
    np.testing.assert_allclose(
        enc.query("Red  SHOE unknownword", 8), [0.70710677, 0.70710677, 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(enc.query("tent", 8), [0.0, 0.0, 1.0])


def test_no_known_word_is_the_zero_vector() -> None:
    enc = _encoder()
    assert not enc.query("", 8).any() and not enc.title("nothing known here").any()
    assert enc.queries([], 8).shape == (0, 3)


def test_queries_read_max_words_and_titles_their_own_limit() -> None:
    enc = _encoder()
    np.testing.assert_allclose(enc.query("x x x tent", 3), [0.0, 0.0, 0.0])
    long_title = " ".join(["x"] * (TITLE_WORDS - 1) + ["tent"])
    np.testing.assert_allclose(enc.title(long_title), [0.0, 0.0, 1.0])
    assert not enc.title("x " + long_title).any()


def test_titles_are_rounded_to_the_float16_serving_keeps() -> None:
    vector = _encoder().title("red shoe tent")
    np.testing.assert_array_equal(vector, vector.astype(np.float16).astype(np.float32))


def test_each_distinct_text_is_encoded_once() -> None:
    enc = _encoder()
    enc.queries(["red shoe", "red shoe", "tent"], 8)
    enc.query("red shoe", 8)
    assert enc.encoded == 2


def test_a_table_needs_a_zero_row_and_half_floats() -> None:
    with pytest.raises(ValueError, match="float16"):
        WordTable(("a",), np.zeros((2, 3), dtype=np.float32), {})
    with pytest.raises(ValueError, match="zero row"):
        WordTable(("a",), np.ones((2, 3), dtype=np.float16), {})


def _cos(enc: TextEncoder, a: str, b: str) -> float:
    return float(enc.query(a, 8) @ enc.query(b, 8))


def test_the_shipped_table_knows_related_words_from_unrelated_ones() -> None:
    table = load_table()
    assert table.dim == RankerConfig().text_dim
    assert "minilm" in str(table.meta).lower()
    enc = TextEncoder(table)
    related = [("sneakers", "running shoe"), ("laptop", "notebook computer"), ("earbuds", "headphones")]
    for a, b in related:
        for _, unrelated in related:
            if unrelated != b:
                assert _cos(enc, a, b) > _cos(enc, a, unrelated), (a, b, unrelated)
