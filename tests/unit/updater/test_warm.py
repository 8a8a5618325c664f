from __future__ import annotations

from pathlib import Path

import pytest

from freshrank.simulator import SimulatorConfig, generate, write_events
from rankcore.errors import ConfigError
from rankcore.features import Vocabularies
from rankcore.model import RankerConfig
from updater.learner import Learner
from updater.warm import READ_EVERY, learn_history, read_lines

START = 1_700_000_000_000


def test_history_written_by_the_simulator_is_read_back_and_learned(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    events = list(generate(SimulatorConfig(seed=3, bad_rate=0.01), rate=200, duration_s=20, start_ms=START))
    assert write_events(events, path) == len(events)
    lines = list(read_lines(path))
    assert len(lines) == len(events)
    config = RankerConfig(user_capacity=4096, token_capacity=512, item_capacity=4096)
    learner = Learner(config, seed=0)
    said: list[str] = []
    read: list[int] = []
    warm = learn_history(
        lines,
        learner,
        Vocabularies(config),
        source=str(path),
        batch_size=64,
        window_ms=10_000,
        holdout_every=10,
        progress=said.append,
        on_read=read.append,
    )
    assert warm.events == len(events)
    # The bar's measure: every byte of the file (each line with its end), in steps of READ_EVERY lines.
    assert sum(read) == path.stat().st_size and len(read) == -(-len(events) // READ_EVERY)
    assert warm.samples_trained == learner.samples_trained > 1000
    assert warm.held_out and warm.dead_letters_by_reason  # the simulator's invalid events, by reason
    assert "learned" in said[-1]
    # Held-out requests are not trained on; together they are every labelled sample.
    assert warm.to_dict()["held_out"] == len(warm.held_out)


def test_a_missing_history_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="warm-start"):
        list(read_lines(tmp_path / "missing.jsonl"))
