"""The model state a checkpoint holds, captured and restored in one place.

A checkpoint is taken with the training queue drained, so the weights, the optimisers, the
vocabularies, the join and dedup state, the ledger's offsets and the held-out window all
describe the same point in the stream. :class:`Checkpointer` writes it in a worker thread and
tracks that write, so a stop that gave up waiting can still make sure nothing writes the
state directory after the writer lease is released.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.records import Serving
from rankcore.features import Vocabularies
from rankcore.sample import Sample
from updater.checkpoint import CheckpointStore
from updater.learner import TABLES, Learner
from updater.ports import IngestStage

# A new base once the rows changed since the last one are this share of all rows: a patch
# then costs a quarter of a base, at most.
REBASE_FRACTION = 0.25


@dataclass
class ModelState:
    """The live objects a checkpoint covers."""

    learner: Learner
    vocabs: Vocabularies
    ingest: IngestStage
    holdout: deque[Sample]

    def capture(
        self,
        serving: Serving,
        counters: dict[str, int],
        ingest_state: Callable[[], dict[str, Any]],
        has_base: bool = False,
    ) -> dict[str, Any]:
        """Everything needed to resume exactly here (called with the queue drained): a patch on
        the checkpoint store's base (``has_base``) while few rows changed since, else a new base.
        ``ingest_state`` builds the ingest's part (:meth:`IngestStage.state_capture`)."""
        patch = has_base and self.learner.dirty_fraction() < REBASE_FRACTION
        learner = self.learner.state(patch=patch)
        tables = learner.pop(TABLES, None)
        return {
            **({TABLES: tables} if tables is not None else {}),
            "learner": learner,
            "vocabs": self.vocabs.state(),
            **ingest_state(),
            "counters": counters,
            "holdout": list(self.holdout),
            "serving": {
                "mode": serving.mode,
                "version": serving.version,
                "reason": serving.reason,
                "delta": serving.delta,
            },
        }

    def saved(self, state: dict[str, Any]) -> None:
        """``state`` is on disk: when it wrote a base, the next patch starts from it."""
        if TABLES in state:
            self.learner.base_written()

    def restore(self, saved: dict[str, Any]) -> tuple[Serving, dict[str, int]]:
        """Load a captured state; returns the serving decision and the counters it held."""
        learner = saved["learner"]
        if TABLES in saved:
            learner = {**learner, TABLES: saved[TABLES]}
        self.learner.restore(learner)
        self.vocabs.restore(saved["vocabs"])
        self.ingest.restore(saved)
        self.holdout.clear()
        self.holdout.extend(saved["holdout"])
        return Serving(**saved["serving"]), dict(saved.get("counters", {}))


class Checkpointer:
    """Atomic checkpoint writes in a worker thread, tracked until they end."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._writing: asyncio.Future[float] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.store.load()

    async def save(self, capture: Any, after: Any = None) -> float:
        """Run ``capture()`` and write the result, then ``after(state)``; return the seconds the
        write took.

        In a worker thread: nothing trains or consumes while it runs (the queue is drained and
        only the consumer fills it), and building the state of a large join takes seconds.
        """
        loop = asyncio.get_running_loop()

        def write() -> float:
            state = capture()
            seconds = self.store.save(state)
            if after is not None:
                after(state)
            return seconds

        self._writing = loop.run_in_executor(None, write)
        # Shielded: a cancelled caller leaves the write to finish (it is atomic either way);
        # wait_idle() then waits for it.
        return await asyncio.shield(self._writing)

    async def wait_idle(self) -> None:
        """Return once no checkpoint write is running (whatever became of its caller)."""
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait([writing])
