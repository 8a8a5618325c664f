"""What several unit test modules share: small model variants and sample builders."""

from __future__ import annotations

import random

from rankcore.model import RankerConfig
from rankcore.sample import Sample

VARIANTS = [
    RankerConfig(
        user_capacity=64,
        token_capacity=32,
        item_capacity=64,
        category_capacity=8,
        brand_capacity=8,
        dim=4,
        hidden=8,
        max_tokens=2,
        text_dim=0,
    ),
    RankerConfig(
        user_capacity=500,
        token_capacity=200,
        item_capacity=500,
        category_capacity=20,
        brand_capacity=20,
        dim=16,
        hidden=32,
        max_tokens=8,
    ),
]


def random_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    queries = ["red shoes", "iphone 12 pro max ultra", "", "tent"]
    titles = ["acme red running shoe", "phone pro max 256gb", "", "family camping tent"]
    return [
        Sample(
            f"u{rng.randint(0, 300)}",
            rng.choice(queries),
            f"i{rng.randint(0, 300)}",
            rng.choice(["c1", "c2", ""]),
            rng.choice(["b1", ""]),
            rng.random() * 100,
            rng.randint(0, 1),
            0,
            0,
            title=rng.choice(titles),
        )
        for _ in range(n)
    ]


def sample(i: int, label: int = 0, query: str = "red shoes") -> Sample:
    return Sample(f"u{i}", query, f"i{i}", "shoes", "acme", 10.0, label, i, i if label else 0)
