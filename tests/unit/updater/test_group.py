"""A data-parallel group of two real processes (torch.distributed, gloo) against one process."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rankcore.features import Vocabularies, encode
from rankcore.model import FEATURES, RankerConfig
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.group import TrainingGroup, step_batch
from updater.learner import Learner

WORLD = 2
# Per step, how many samples each rank has: uneven, and each rank has none once.
SIZES = [(16, 9), (0, 12), (20, 20), (7, 0), (5, 31), (12, 12)]


def plan(seed: int) -> list[list[list[Sample]]]:
    """``plan[step][rank]``: the samples each rank learns at each step."""
    pool = random_samples(sum(a + b for a, b in SIZES), seed)
    out, at = [], 0
    for sizes in SIZES:
        step = []
        for n in sizes:
            step.append(pool[at : at + n])
            at += n
        out.append(step)
    return out


def snapshot(learner: Learner, vocabs: Vocabularies) -> dict[str, Any]:
    return {
        "weights": {k: v.detach().clone().numpy() for k, v in learner.model.state_dict().items()},
        "keys": {f: vocabs[f].keys() for f in FEATURES},
        "samples_trained": learner.samples_trained,
        "steps": learner.steps,
    }


def rank_main(rank: int, rendezvous: str, configs: list[RankerConfig], answers: Any) -> None:
    group = TrainingGroup(rank, WORLD, rendezvous, timeout_s=60)
    group.start()
    try:
        out = []
        for k, config in enumerate(configs):
            learner = Learner(config, device="cpu", seed=0)
            vocabs = Vocabularies(config, expire_ms=0)  # small tables: ids recycle rows
            for step in plan(seed=k):
                got = step_batch(group.gather(step[rank]), rank, vocabs, config.max_tokens)
                if got is not None:
                    batch, share = got
                    learner.learn(batch, share=share, sync=group.sync)
            out.append(snapshot(learner, vocabs))
        answers.put((rank, out))
    finally:
        group.close()


def alone(config: RankerConfig, seed: int) -> dict[str, Any]:
    """One process learning each step's samples of every rank as one batch."""
    learner = Learner(config, device="cpu", seed=0)
    vocabs = Vocabularies(config, expire_ms=0)
    for step in plan(seed):
        union = [s for part in step for s in part]
        learner.learn(encode(union, vocabs, config.max_tokens))
    return snapshot(learner, vocabs)


@pytest.fixture(scope="module")
def group_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    rendezvous = f"file://{Path(tmp_path_factory.mktemp('group')) / 'rendezvous'}"
    configs = [dataclasses.replace(v, item_dropout=0.0) for v in VARIANTS] + [VARIANTS[1]]
    ctx = multiprocessing.get_context("spawn")
    answers = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, rendezvous, configs, answers)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        results = dict(answers.get(timeout=180) for _ in range(WORLD))
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return results


def test_every_rank_holds_the_same_model_and_vocabularies(group_results: dict[int, Any]) -> None:
    for zero, one in zip(group_results[0], group_results[1], strict=True):
        assert zero["keys"] == one["keys"]
        assert zero["steps"] == one["steps"] == len(SIZES)
        for name, weight in zero["weights"].items():
            np.testing.assert_array_equal(weight, one["weights"][name], err_msg=name)


def test_each_rank_learns_its_own_samples_once(group_results: dict[int, Any]) -> None:
    for rank in range(WORLD):
        for result in group_results[rank]:
            assert result["samples_trained"] == sum(sizes[rank] for sizes in SIZES)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_two_ranks_learn_what_one_process_learns_from_the_whole_steps(
    group_results: dict[int, Any], variant: int
) -> None:
    config = dataclasses.replace(VARIANTS[variant], item_dropout=0.0)
    one = alone(config, seed=variant)
    ranked = group_results[0][variant]
    assert ranked["keys"] == one["keys"]  # the same rows for the same ids, recycled alike
    for name, weight in one["weights"].items():
        np.testing.assert_allclose(ranked["weights"][name], weight, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_rank_out_of_range_is_refused() -> None:
    from rankcore.errors import ConfigError

    with pytest.raises(ConfigError, match="rank 2 of 2"):
        TrainingGroup(2, 2, "file:///nowhere")
