"""The trainer: test-then-train off a bounded queue, backpressure, and a failed step."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from rankcore.errors import TrainingFailed
from rankcore.features import Batch, Vocabularies, encode
from rankcore.metrics import logloss
from tests.unit.helpers import random_samples
from tests.unit.updater.fakes import TINY
from updater.learner import Learner
from updater.trainer import Impressions, Trainer


def batches(n: int, size: int = 16) -> list[Batch]:
    vocabs = Vocabularies(TINY)
    samples = random_samples(n * size, seed=3)
    return [encode(samples[i * size : (i + 1) * size], vocabs, TINY.max_tokens) for i in range(n)]


class Source:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


async def test_learns_every_batch_in_order_and_reports_each() -> None:
    learned: list[int] = []
    trainer = Trainer(Learner(TINY), queue_batches=2, on_learned=lambda b: learned.append(len(b)))
    task = trainer.start()
    for batch in batches(5):
        await trainer.put(batch)
    await trainer.drain()
    assert learned == [16] * 5 and trainer.learner.samples_trained == 80
    task.cancel()
    await asyncio.wait([task])


async def test_a_trainer_behind_pauses_the_source_then_resumes_it() -> None:
    learner = Learner(TINY)
    learn = learner.learn

    def slow(batch: Batch) -> Any:
        time.sleep(0.1)
        return learn(batch)

    learner.learn = slow  # type: ignore[method-assign]
    trainer = Trainer(learner, queue_batches=1, pause_after_s=0.02)
    task = trainer.start()
    source = Source()
    for batch in batches(4):
        await trainer.put(batch, source)
    await trainer.drain()
    assert trainer.pauses >= 1 and source.calls[:2] == ["pause", "resume"]
    assert source.calls.count("pause") == source.calls.count("resume") == trainer.pauses
    task.cancel()
    await asyncio.wait([task])


async def test_a_failed_step_is_not_counted_and_every_wait_raises() -> None:
    learner = Learner(TINY)
    learned: list[int] = []

    def broken(batch: Batch) -> Any:
        raise FloatingPointError("loss is NaN")

    learner.learn = broken  # type: ignore[method-assign]
    trainer = Trainer(learner, queue_batches=1, on_learned=lambda b: learned.append(len(b)))
    trainer.start()
    await trainer.put(batches(1)[0])
    with pytest.raises(TrainingFailed) as failed:
        await asyncio.wait_for(trainer.drain(), 2)
    assert isinstance(failed.value.__cause__, FloatingPointError)
    assert trainer.failed and learned == [] and learner.samples_trained == 0


async def test_impressions_are_scored_in_queue_order_before_their_samples_are_learned() -> None:
    vocabs = Vocabularies(TINY)
    samples = [dataclasses.replace(s, request_id=f"r{i}") for i, s in enumerate(random_samples(32, seed=5))]
    learner = Learner(TINY)
    trainer = Trainer(learner, queue_batches=1)
    task = trainer.start()
    batch = encode(samples, vocabs, TINY.max_tokens)
    expected = learner.score(batch)  # what the untrained model gives the impressions
    await trainer.put(Impressions(batch))
    for _ in range(3):  # other batches learned in between move the weights
        await trainer.put(batches(1)[0])
    await trainer.put(batch)
    await trainer.drain()
    assert learner.metrics.expected == 0 and trainer.queued_samples == 0
    # The metrics hold the impressions' scores, not the ones the drifted model gave at learning;
    # the batches learned in between were not scored on arrival, so they are learned, not measured.
    assert learner.metrics.logloss() == pytest.approx(logloss(expected, batch.label), rel=1e-6)
    assert learner.metrics.count == 32 + 48
    task.cancel()
    await asyncio.wait([task])
