"""What a checkpoint holds: captured and restored as one, and written by a tracked thread."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

from exporter.records import Serving
from rankcore.features import Vocabularies, encode
from tests.unit.helpers import random_samples
from tests.unit.updater.fakes import TINY, traffic
from updater.checkpoint import CheckpointStore
from updater.ingest import Ingest, Record
from updater.learner import Learner
from updater.state import Checkpointer, ModelState


def model_state() -> ModelState:
    return ModelState(Learner(TINY), Vocabularies(TINY), Ingest(window_ms=1_000), deque(maxlen=100))


def test_capture_and_restore_resume_exactly_here() -> None:
    state = model_state()
    values, _ = traffic(20, 1_800_000_000_000)
    state.ingest.process([Record("events", 0, i, None, v) for i, v in enumerate(values)], 1_800_000_000_000)
    samples = random_samples(64, seed=1)
    state.learner.learn(encode(samples, state.vocabs, TINY.max_tokens))
    state.holdout.extend(samples[:5])
    saved = state.capture(
        Serving("pinned", 3, "by hand"), {"checkpoints": 4, "rollbacks": 1}, state.ingest.state
    )

    again = model_state()
    serving, counters = again.restore(saved)
    assert serving == Serving("pinned", 3, "by hand") and counters == {"checkpoints": 4, "rollbacks": 1}
    assert again.learner.samples_trained == 64
    assert again.vocabs.sizes() == state.vocabs.sizes()
    assert again.ingest.positions == state.ingest.positions == {"events:0": len(values)}
    assert again.ingest.counts == state.ingest.counts
    assert list(again.holdout) == samples[:5]
    # The same next step from both: weights, optimisers and vocabularies came back whole.
    nxt = random_samples(32, seed=2)
    a = state.learner.learn(encode(nxt, state.vocabs, TINY.max_tokens))
    b = again.learner.learn(encode(nxt, again.vocabs, TINY.max_tokens))
    assert (a == b).all()


def test_a_checkpoint_from_before_the_ingest_split_restores() -> None:
    state = model_state()
    saved = state.capture(Serving(), {}, state.ingest.state)
    # Earlier checkpoints kept the ingest counts among the service's counters.
    counts = saved.pop("ingest_counts")
    saved["counters"] = {**counts, "events_consumed": 9, "checkpoints": 2}
    again = model_state()
    _, counters = again.restore(saved)
    assert again.ingest.counts.events_consumed == 9 and counters["checkpoints"] == 2


async def test_wait_idle_waits_for_a_write_whose_caller_was_cancelled(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    save = store.save
    written: list[float] = []

    def slow_save(state: dict[str, Any]) -> float:
        time.sleep(0.3)
        seconds = save(state)
        written.append(time.monotonic())
        return seconds

    store.save = slow_save  # type: ignore[method-assign]
    checkpointer = Checkpointer(store)
    caller = asyncio.create_task(checkpointer.save(lambda: {"x": 1}))
    await asyncio.sleep(0.05)
    caller.cancel()
    await asyncio.wait([caller])
    assert written == []
    await checkpointer.wait_idle()
    assert len(written) == 1 and store.load() is not None
