"""The trainer: a bounded queue of encoded batches and the one task that learns them.

Each batch is scored before it is learned (test-then-train, :meth:`updater.learner.Learner.learn`),
in a worker thread so the event loop keeps consuming. New impressions go through the same queue
to be scored as they arrive (:meth:`Trainer.expect`), so the prequential metrics compare every
sample under the model its impression met. A full queue is backpressure: the
consumer waits, and when the trainer stays behind it pauses the partitions. A step that
raises ends the task without ``task_done()``: that batch is not counted as learned, so no
checkpoint can claim it, and every wait on the trainer raises :class:`TrainingFailed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rankcore.errors import TrainingFailed
from rankcore.features import Batch
from rankcore.sample import Sample
from updater.learner import Learner

DEFAULT_PAUSE_AFTER_S = 0.5


class Pausable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Impressions:
    """Impressions to score, not learn (their samples are learned when their labels come)."""

    batch: Batch


# An encoded batch; or, for a rank of a training group (updater/group.py), its samples, encoded
# in the round that learns them; or impressions to score.
Job = Batch | list[Sample] | Impressions


class Trainer:
    def __init__(
        self,
        learner: Learner,
        queue_batches: int,
        on_learned: Callable[[Batch], None] = lambda batch: None,
        pause_after_s: float = DEFAULT_PAUSE_AFTER_S,
    ) -> None:
        self.learner = learner
        self.on_learned = on_learned
        self.pause_after_s = pause_after_s
        self.pauses = 0
        self.queued_samples = 0  # in batches waiting to be learned
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_batches)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="train")
        return self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def failed(self) -> bool:
        t = self._task
        return t is not None and t.done() and not t.cancelled() and t.exception() is not None

    def qsize(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if isinstance(job, Impressions):
                await asyncio.to_thread(self.learner.expect, job.batch)
            elif not isinstance(job, Batch):
                raise TypeError(f"expected an encoded batch, got {type(job).__name__}")
            else:
                await asyncio.to_thread(self.learner.learn, job)
                self.queued_samples -= len(job)
                self.on_learned(job)
            self._queue.task_done()

    async def put(self, batch: Job, source: Pausable | None = None) -> None:
        """Queue ``batch``; while the trainer is behind, wait, and past ``pause_after_s`` pause ``source``."""
        samples = 0 if isinstance(batch, Impressions) else len(batch)
        if not self._queue.full():
            self._queue.put_nowait(batch)
            self.queued_samples += samples
            return
        put = asyncio.ensure_future(self._queue.put(batch))
        paused = False
        try:
            if source is not None and not await self.while_training(put, self.pause_after_s):
                self.pauses += 1
                source.pause()
                paused = True
            await self.while_training(put)
            self.queued_samples += samples
        finally:
            put.cancel()  # a no-op once it is done
            if paused and source is not None:
                source.resume()

    async def drain(self) -> None:
        """Return once every queued batch is learned; :class:`TrainingFailed` if the trainer died."""
        await self.while_training(self._queue.join())

    async def while_training(self, waiting: Awaitable[Any], timeout_s: float | None = None) -> bool:
        """Await ``waiting`` unless the trainer dies first (then nothing may be checkpointed).

        False when ``timeout_s`` passed first; ``waiting`` then goes on and can be awaited again.
        """
        task = asyncio.ensure_future(waiting)
        train = self._task
        if train is None:
            raise RuntimeError("the trainer is not started")
        done, _ = await asyncio.wait({task, train}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return True
        if train in done:
            task.cancel()
            cause = train.exception() if not train.cancelled() else None
            raise TrainingFailed("the training task failed; the last checkpoint stands") from cause
        return False
