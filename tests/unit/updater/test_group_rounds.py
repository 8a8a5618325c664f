"""The group's rounds and barriers, with every rank in one process (a thread-backed group)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rankcore.features import Batch, Vocabularies, encode
from rankcore.model import Ranker
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.group import Encoder, GroupTrainer, step_batch
from updater.learner import Learner
from updater.trainer import Impressions

CONFIG = VARIANTS[0]


class ThreadGroup:
    """N ranks in one process: ``gather`` and ``sync`` meet on a barrier, as the collectives do."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list[Any] = [None] * world
        self.barrier = threading.Barrier(world, timeout=20)
        self.entered = [0] * world

    def member(self, rank: int) -> Member:
        return Member(self, rank)


class Member:
    def __init__(self, shared: ThreadGroup, rank: int) -> None:
        self.shared, self.rank, self.world_size = shared, rank, shared.world

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def enter(self, round_number: int) -> None:
        self.shared.entered[self.rank] = round_number

    def late(self, round_number: int) -> list[int]:
        return [r for r, n in enumerate(self.shared.entered) if r != self.rank and n < round_number]

    def gather(self, obj: Any) -> list[Any]:
        s = self.shared
        s.barrier.wait()
        s.slots[self.rank] = obj
        s.barrier.wait()
        out = list(s.slots)
        s.barrier.wait()
        return out

    def sync(self, model: Ranker) -> None:
        params = list(model.parameters())
        mine = [None if p.grad is None else p.grad.to_dense().clone() for p in params]
        every = self.gather(mine)
        for k, p in enumerate(params):
            parts = [g[k] for g in every if g[k] is not None]
            if not parts:
                continue
            total = torch.stack(parts).sum(0)
            p.grad = total.to_sparse() if any(p is q for q in model.sparse_parameters()) else total


def encoder(vocabs: Vocabularies) -> Encoder:
    def encode_step(parts: list[list[Sample]], rank: int) -> tuple[Batch, slice] | None:
        return step_batch(parts, rank, vocabs, CONFIG.max_tokens)

    return encode_step


GROUPS: list[ThreadGroup] = []


@pytest.fixture(autouse=True)
def release_threads() -> Iterator[None]:
    """Threads still in a gather when a test cancels its trainers are let go (not left to time out)."""
    yield
    while GROUPS:
        GROUPS.pop().barrier.abort()


def make(world: int) -> list[tuple[GroupTrainer, Vocabularies]]:
    shared = ThreadGroup(world)
    GROUPS.append(shared)
    out = []
    for rank in range(world):
        vocabs = Vocabularies(CONFIG, expire_ms=0)
        trainer = GroupTrainer(
            Learner(CONFIG, device="cpu", seed=0),
            shared.member(rank),  # type: ignore[arg-type]
            encoder(vocabs),
            queue_batches=4,
            tick_s=0.005,
        )
        out.append((trainer, vocabs))
    return out


async def at_barrier(trainer: GroupTrainer, note: Any) -> list[Any]:
    """What a rank's consumer does: come to the leader's barrier once a round has brought it."""
    for _ in range(5000):
        if trainer.barrier is not None and trainer.barrier.number > trainer.passed:
            return await trainer.arrive(note)
        await asyncio.sleep(0.002)
    raise AssertionError("the leader's barrier never reached this rank")


async def test_ranks_learn_their_own_samples_in_rounds_and_meet_at_barriers() -> None:
    ranks = make(2)
    tasks = [t.start() for t, _ in ranks]
    pool = random_samples(90, seed=3)
    await ranks[0][0].put(pool[:30])
    await ranks[1][0].put(pool[30:40])
    await ranks[0][0].put(pool[40:90])
    leader, other = ranks[0][0], ranks[1][0]
    barrier = leader.request(checkpoint=True)
    notes = await asyncio.gather(leader.arrive("zero"), at_barrier(other, "one"))
    # Held at the barrier: every queued sample learned, by its own rank, once.
    assert notes == [["zero", "one"], ["zero", "one"]]
    assert leader.passed == other.passed == barrier.number
    assert leader.learner.samples_trained == 80 and other.learner.samples_trained == 10
    assert leader.learner.steps == other.learner.steps
    for a, b in zip(leader.learner.model.parameters(), other.learner.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ranks[0][1]["user"].keys() == ranks[1][1]["user"].keys()
    steps = leader.learner.steps
    await asyncio.sleep(0.05)
    assert leader.learner.steps == steps  # nothing learns while a rank holds the barrier
    for t, _ in ranks:
        t.release()
    await other.put(pool[:5])
    second = leader.request()
    await asyncio.gather(leader.arrive(), at_barrier(other, None))
    assert other.learner.samples_trained == 15 and second.number == barrier.number + 1
    for t, _ in ranks:
        t.release()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_idle_rounds_learn_nothing_and_impressions_are_scored_locally() -> None:
    ranks = make(2)
    tasks = [t.start() for t, _ in ranks]
    await asyncio.sleep(0.1)
    assert all(t.rounds > 0 and t.learner.steps == 0 for t, _ in ranks)
    opened = random_samples(4, seed=5)
    keyed = [dataclasses.replace(s, request_id=f"r{i}") for i, s in enumerate(opened)]
    impressions = encode(keyed, ranks[1][1], CONFIG.max_tokens, grow=False)
    await ranks[1][0].put(Impressions(impressions))
    await ranks[1][0].drain()
    assert ranks[0][0].learner.steps == 0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_rank_asking_to_stop_brings_the_group_to_a_last_checkpoint_barrier() -> None:
    ranks = make(3)
    tasks = [t.start() for t, _ in ranks]
    pool = random_samples(30, seed=7)
    for k, (t, _) in enumerate(ranks):
        await t.put(pool[10 * k : 10 * k + 10])
    ranks[2][0].ask_stop()
    notes = await asyncio.gather(*(at_barrier(t, t.group.rank) for t, _ in ranks))
    assert notes == [[0, 1, 2]] * 3
    assert all(t.barrier is not None and t.barrier.stop and t.barrier.checkpoint for t, _ in ranks)
    assert [t.learner.samples_trained for t, _ in ranks] == [10, 10, 10]
    for t, _ in ranks:
        t.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)  # the rounds end


async def test_only_the_leader_asks_for_barriers() -> None:
    ranks = make(2)
    with pytest.raises(RuntimeError, match="only the leader"):
        ranks[1][0].request()
    with pytest.raises(RuntimeError, match="no barrier"):
        await ranks[1][0].arrive()
