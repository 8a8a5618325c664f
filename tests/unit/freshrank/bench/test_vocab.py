from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import freshrank.bench.vocab as vocab_bench
from freshrank.bench.common import Progress
from freshrank.bench.report import rows
from rankcore.sample import Sample


def stream(n: int, users: int, items: int) -> list[Sample]:
    """Impressions 100 ms apart, each user liking the items of their own parity."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        user, item = rng.randrange(users), rng.randrange(items)
        label = int(rng.random() < (0.6 if user % 2 == item % 2 else 0.1))
        ts = 1_000_000 + 100 * i
        out.append(
            Sample(f"u{user}", "q", f"i{item}", "c", "b", 10.0, label, ts, ts + 50 if label else 0, f"r{i}")
        )
    return out


def test_expiry_decides_whether_a_full_vocabulary_recycles_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(vocab_bench.CAPACITIES, "simulator", {"user_capacity": 10, "item_capacity": 10})
    monkeypatch.setattr(vocab_bench, "EXPIRIES_S", (None, 0.0, 3600.0))
    out = vocab_bench.stream_result(
        "simulator", stream(3_000, 40, 40), 60_000, 30_000, Progress("vocab", quiet=True)
    )
    assert out["expiry"]["never"]["evictions"]["user"] == 0
    assert out["expiry"]["0s"]["evictions"]["user"] > 100  # 40 users through 8 rows
    assert out["expiry"]["3600s"]["evictions"]["user"] == 0  # nobody idles an hour in 5 min
    assert out["full_capacity"]["vocab_sizes"]["user"] == 40
    assert all(0 <= r["auc_after_drift"] <= 1 for r in out["expiry"].values())


def test_the_report_shows_each_expiry(tmp_path: Path) -> None:
    r = {"auc_after_drift": 0.7, "auc_overall": 0.7, "vocab_sizes": {}, "evictions": {}}
    result = {
        "streams": {
            "simulator": {
                "capacities": {"user_capacity": 1500, "item_capacity": 850},
                "expiry": {"never": r, "3600s": {**r, "auc_after_drift": 0.71}},
                "full_capacity": {**r, "auc_after_drift": 0.75},
            },
            "diginetica": {"skipped": "no data"},
        }
    }
    (tmp_path / "vocab.json").write_text(json.dumps(result))
    got = [row for row in rows(tmp_path) if row[0] == "vocab"]
    assert got[0][2] == "expiry never 0.700 · expiry 3600s 0.710 · full capacity 0.750"
    assert got[1] == ("vocab", "diginetica", "skipped: no data", "")
