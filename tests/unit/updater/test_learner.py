"""The learner: its state round-trips and it learns the way the labels push."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rankcore.errors import ConfigError
from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.checkpoint import CheckpointStore
from updater.learner import TABLES, Learner


@pytest.mark.parametrize("config", VARIANTS)
def test_state_round_trip(config: RankerConfig) -> None:
    a, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    for i in range(3):
        a.learn(encode(random_samples(64, i), vocabs, config.max_tokens))
    b = Learner(config, device="cpu", seed=99)
    b.restore(a.state())
    probe = encode(random_samples(32, 7), vocabs, config.max_tokens, grow=False)
    np.testing.assert_array_equal(a.score(probe), b.score(probe))
    assert b.samples_trained == 192


def test_learning_moves_scores_the_way_clicks_push() -> None:
    config = VARIANTS[1]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    rng = random.Random(3)
    for _ in range(40):
        batch = []
        for _ in range(32):
            user = f"u{rng.randint(0, 50)}"
            batch.append(Sample(user, "red shoes", "hot", "shoes", "b1", 20.0, 1, 0, 0))
            batch.append(Sample(user, "red shoes", "cold", "shoes", "b1", 20.0, 0, 0, 0))
        learner.learn(encode(batch, vocabs, config.max_tokens))
    probe = [Sample("u1", "red shoes", item, "shoes", "b1", 20.0, 0, 0, 0) for item in ("hot", "cold")]
    hot, cold = learner.score(encode(probe, vocabs, config.max_tokens, grow=False))
    assert hot > 0.8 > 0.2 > cold
    assert learner.metrics.auc() > 0.7  # prequential: includes the first, untrained batches


def test_a_row_a_new_id_takes_over_starts_from_zero_without_the_old_ids_moments() -> None:
    config = dataclasses.replace(VARIANTS[1], item_capacity=4)  # rows 2 and 3
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config, expire_ms=0)

    def batch_of(item: str, label: int) -> list[Sample]:
        return [Sample(f"u{i}", "red shoes", item, "shoes", "b1", 20.0, label, 0, 0) for i in range(16)]

    for _ in range(30):
        learner.learn(encode(batch_of("hot", 1) + batch_of("cold", 0), vocabs, config.max_tokens))
    row = vocabs["item"].get("hot")
    learner.learn(encode(batch_of("cold", 0), vocabs, config.max_tokens))  # "hot" is now the oldest
    table, bias = learner.model.embeddings["item"].weight.detach(), learner.model.item_bias.weight.detach()
    assert float(bias[row]) > 0.1  # what "hot" learned
    takeover = encode(batch_of("new", 0), vocabs, config.max_tokens)
    assert vocabs["item"].get("new") == row and takeover.recycled == {"item": [row]}
    learner._reset_rows(takeover.recycled)
    assert float(table[row].abs().sum()) == 0.0 and float(bias[row]) == 0.0
    moments = learner.sparse_opt.state[learner.model.embeddings["item"].weight]
    assert float(moments["exp_avg"][row].abs().sum()) == 0.0
    assert float(moments["exp_avg_sq"][row].abs().sum()) == 0.0
    learner.learn(takeover)  # and it learns from there
    assert float(bias[row]) < 0.0


CONCEPTS = [
    (["sneakers", "trainers"], ["running shoe", "jogging shoes"]),
    (["laptop", "notebook computer"], ["ultrabook", "portable computer"]),
    (["earbuds", "earphones"], ["wireless headphones", "headset"]),
    (["tent", "camping shelter"], ["backpacking tent", "dome tent"]),
    (["kettle", "tea kettle"], ["electric kettle", "water boiler"]),
]


@pytest.mark.parametrize("text_dim", [RankerConfig().text_dim, 0])
def test_the_text_tower_ranks_a_never_seen_item_by_what_its_title_means(text_dim: int) -> None:
    """Every item is new (its id never repeats), so only the text can tell a match; queries and
    titles never share a word, so only what the pretrained vectors know about words can."""
    config = dataclasses.replace(VARIANTS[1], text_dim=text_dim)
    learner, vocabs = Learner(config, device="cpu", dense_lr=0.01), Vocabularies(config)
    rng = random.Random(5)
    n = 0

    def sample(query: int, title: int, label: int, phrase: int, user: str = "") -> Sample:
        nonlocal n
        n += 1
        words = CONCEPTS[query][0][phrase % 2]
        title_words = f"acme {rng.choice(['red', 'blue'])} {CONCEPTS[title][1][phrase % 2]}"
        user = user or f"u{rng.randrange(40)}"
        return Sample(user, words, f"i{n}", "c", "b", 20.0, label, 0, 0, title=title_words)

    for _ in range(60):
        batch = []
        for _ in range(32):
            q = rng.randrange(4)  # the last concept stays out of training
            other = rng.choice([c for c in range(4) if c != q])
            phrase = rng.randrange(2)
            batch += [sample(q, q, 1, phrase), sample(q, other, 0, phrase)]
        learner.learn(encode(batch, vocabs, config.max_tokens))
    probes = [
        (sample(q, q, 0, p, "u0"), sample(q, o, 0, p, "u0"))
        for q in range(5)
        for o in range(5)
        if o != q
        for p in (0, 1)
    ]
    match = learner.score(encode([m for m, _ in probes], vocabs, config.max_tokens, grow=False))
    other = learner.score(encode([o for _, o in probes], vocabs, config.max_tokens, grow=False))
    if text_dim:
        assert float(np.mean(match > other)) > 0.9
        held_out = [i for i, (m, _) in enumerate(probes) if m.query in CONCEPTS[4][0]]
        assert (
            float(np.mean(match[held_out] > other[held_out])) >= 0.75
        )  # a concept it never saw (chance: 0.5)
    else:
        np.testing.assert_allclose(match, other, atol=1e-6)  # ids alone cannot tell new items apart


def test_a_checkpoint_from_before_the_text_tower_restores_without_it() -> None:
    config = dataclasses.replace(VARIANTS[1], text_dim=0, item_dropout=0.0)
    old, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    old.learn(encode(random_samples(64), vocabs, config.max_tokens))
    state = old.state()
    for name in ("text_dim", "item_dropout"):
        del state["config"][name]
    del state["dropout_rng"]
    restored = Learner(config, device="cpu", seed=3)
    restored.restore(state)
    probe = encode(random_samples(16, 4), vocabs, config.max_tokens, grow=False)
    np.testing.assert_array_equal(old.score(probe), restored.score(probe))
    with pytest.raises(ConfigError, match="--model-\\* flags"):
        Learner(VARIANTS[1], device="cpu").restore(state)  # the default has the text tower


def test_tracked_rows_are_every_row_a_step_moved_once_each() -> None:
    config = VARIANTS[0]
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    first = encode(random_samples(64, 1), vocabs, config.max_tokens)
    learner.learn(first)
    assert learner.take_touched() == {}  # not tracking
    learner.tracking = True
    batches = [encode(random_samples(64, s), vocabs, config.max_tokens) for s in (2, 3)]
    before = learner.model.table("item").weight.detach().clone()
    for batch in batches:
        learner.learn(batch)
    touched = learner.take_touched()
    expected = np.unique(np.concatenate([b.item for b in batches]))
    assert np.array_equal(touched["item"], expected)
    assert np.array_equal(touched["token"], np.unique(np.concatenate([b.tokens.ravel() for b in batches])))
    # Every row that moved is among them.
    moved = (learner.model.table("item").weight.detach() != before).any(dim=1).nonzero().squeeze(1).numpy()
    assert set(moved.tolist()) <= set(expected.tolist())
    assert learner.take_touched() == {}


def _same_learners(a: Learner, b: Learner) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    sa, sb = a.sparse_opt.state_dict()["state"], b.sparse_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][moment], sb[i][moment]), (i, moment)


@pytest.mark.parametrize("config", VARIANTS)
def test_a_patch_on_a_base_restores_exactly_and_learns_on_as_the_original(
    config: RankerConfig, tmp_path: Path
) -> None:
    store = CheckpointStore(tmp_path)
    a, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    a.learn(encode(random_samples(64, 0), vocabs, config.max_tokens))
    base = a.state()
    store.save({"learner": {k: v for k, v in base.items() if k != TABLES}, TABLES: base[TABLES]})
    a.base_written()
    for i in (1, 2):  # rows of the base change, new rows join
        a.learn(encode(random_samples(64, i), vocabs, config.max_tokens))
    patch = a.state(patch=True)
    assert TABLES not in patch and 0 < a.dirty_fraction() < 0.5
    store.save({"learner": patch})
    assert store.last_kind == "patch"
    # Its tables part holds the changed rows only: a fraction of the base's tensors.
    held = sum(t.numel() * t.element_size() for e in patch["patch"].values() for t in e.values())
    whole = sum(t.numel() * t.element_size() for t in base[TABLES].values())
    assert held < 0.6 * whole
    assert [p.name for p in tmp_path.glob("tables-*.pt")] == [store.tables_file]

    loaded = CheckpointStore(tmp_path).load()
    assert loaded is not None
    b = Learner(config, device="cpu", seed=99)
    b.restore({**loaded["learner"], TABLES: loaded[TABLES]})
    _same_learners(a, b)
    batch = random_samples(64, 3)
    a.learn(encode(batch, vocabs, config.max_tokens))
    b.learn(encode(batch, vocabs, config.max_tokens))
    _same_learners(a, b)
    # The restored learner's next patch still holds every row changed since that base.
    assert b.dirty_fraction() == a.dirty_fraction()


def test_a_checkpoint_with_the_tables_inline_still_restores() -> None:
    config = VARIANTS[0]
    a, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    a.learn(encode(random_samples(64), vocabs, config.max_tokens))
    legacy = {k: v for k, v in a.state().items() if k not in (TABLES, "sparse_steps", "sparse_groups")}
    legacy["model"] = a.model.state_dict()
    legacy["sparse_opt"] = a.sparse_opt.state_dict()
    b = Learner(config, device="cpu", seed=5)
    b.restore(legacy)
    _same_learners(a, b)
