"""Serving's live state: a snapshot's graph with its tables held live, and deltas applied to it
score as the learner does (the Triton backend's logic, run in process)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from exporter.check import feeds
from exporter.delta import Delta, DeltaLog, build_delta, guard
from exporter.onnx_export import build_onnx, write_onnx
from rankcore.features import Vocabularies, encode, score
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from tests.unit.helpers import VARIANTS, random_samples
from updater.learner import Learner

BACKEND = Path(__file__).resolve().parents[3] / "exporter" / "backend" / "onnxruntime" / "live.py"


def live_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("freshrank_live", BACKEND)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


live = live_module()


def fresh(n: int, seed: int, prefix: str) -> list[Sample]:
    """Samples whose users, items, tokens and titles the snapshot never saw."""
    return [
        dataclasses.replace(
            s,
            user_id=f"{prefix}{s.user_id}",
            item_id=f"{prefix}{s.item_id}",
            query=f"{prefix}new {s.query}",
            title=f"{s.title} camping" if s.title else "",
        )
        for s in random_samples(n, seed)
    ]


def version_1(config: RankerConfig, tmp_path: Path) -> tuple[Learner, Vocabularies]:
    """A learner after one batch, and its version 1 in ``tmp_path/1``."""
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    learner.learn(encode(random_samples(64), vocabs, config.max_tokens))
    write_onnx(build_onnx(learner.frozen_copy(), vocabs, version=1), tmp_path / "1")
    return learner, vocabs


def torch_scores(learner: Learner, vocabs: Vocabularies, samples: list[Sample]) -> np.ndarray:
    return score(learner.model, encode(samples, vocabs, learner.config.max_tokens, grow=False))


def live_scores(model: object, samples: list[Sample]) -> np.ndarray:
    scores, _ = model.run(feeds(samples))  # type: ignore[attr-defined]
    return np.asarray(scores)


@pytest.mark.parametrize("config", VARIANTS)
def test_snapshot_plus_deltas_scores_as_the_learner(config: RankerConfig, tmp_path: Path) -> None:
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    for i in range(4):
        learner.learn(encode(random_samples(128, i), vocabs, config.max_tokens))
    checked = random_samples(100, 50)
    titles = {s.item_id: s.title for s in checked if s.title}
    # Serving knows an item's title from the catalogue: the samples carry the same.
    checked = [dataclasses.replace(s, title=titles.get(s.item_id, "")) for s in checked]
    write_onnx(build_onnx(learner.frozen_copy(), vocabs, titles, version=7, delta_seq=3), tmp_path / "7")
    served = live.LiveModel(str(tmp_path / "7" / "model.onnx"))
    assert served.state.tolist() == [7, 3]
    assert np.abs(live_scores(served, checked) - torch_scores(learner, vocabs, checked)).max() < 1e-5

    # The learner goes on, with new users, items, tokens and titles; deltas 4 and 5 carry it.
    learner.tracking = True
    vocabs.track_changes()
    log = DeltaLog(tmp_path / "deltas")
    for seq, seed in ((4, 10), (5, 11)):
        batch = fresh(128, seed, f"s{seq}-")
        retitled = {s.item_id: s.title for s in batch if s.title}
        batch = [dataclasses.replace(s, title=retitled.get(s.item_id, "")) for s in batch]
        learner.learn(encode(batch, vocabs, config.max_tokens))
        vectors = {i: vocabs.text.title(t) for i, t in retitled.items()} if vocabs.text else {}
        titles.update(retitled)
        delta = build_delta(seq, learner.model, learner.take_touched(), vocabs.take_changes(), vectors)
        assert guard(delta) is None
        log.write(delta)
    follower = live.DeltaFollower(served, str(log.directory))
    assert follower.catch_up() == 2 and follower.failed is None
    assert served.state.tolist() == [7, 5]
    # New ids, tokens and titles (from the deltas) and the snapshot's, as the learner has them now.
    newer = [dataclasses.replace(s, title=titles.get(s.item_id, "")) for s in fresh(100, 11, "s5-")]
    newer += checked
    expected = torch_scores(learner, vocabs, newer)
    assert np.abs(live_scores(served, newer) - expected).max() < 1e-5
    # Applying a delta again changes nothing (absolute values, and it is not the next one).
    assert served.apply(log.path(5).read_bytes()) is False
    assert follower.catch_up() == 0


def test_a_delta_that_does_not_fit_is_refused_whole(tmp_path: Path) -> None:
    config = VARIANTS[1]
    version_1(config, tmp_path)
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    before = served.tables["emb_item"].copy()
    rows = np.array([2, 3], dtype=np.int64)
    bad = {
        "rows.emb_item": rows,
        "values.emb_item": np.full((2, config.dim), np.nan, dtype=np.float32),
    }
    with pytest.raises(live.DeltaError, match="non-finite"):
        served.apply(Delta(1, 0, bad).to_bytes())
    beyond = {"rows.emb_item": np.array([10**6]), "values.emb_item": np.zeros((1, config.dim), np.float32)}
    with pytest.raises(live.DeltaError, match="beyond"):
        served.apply(Delta(1, 0, beyond).to_bytes())
    assert np.array_equal(served.tables["emb_item"], before) and served.seq == 0
    # The updater's guard refuses the non-finite one before it is written.
    assert guard(Delta(1, 0, bad)) == "non-finite values in values.emb_item"
    assert "beyond the guard" in (guard(Delta(1, 0, {"dense.w1": np.full(3, 1e6, np.float32)})) or "")


def test_the_follower_waits_for_the_next_delta_and_honours_a_limit(tmp_path: Path) -> None:
    config = VARIANTS[0]
    learner, _ = version_1(config, tmp_path)
    log = DeltaLog(tmp_path / "deltas")
    for seq in (1, 2, 4):  # 3 is not there (yet)
        log.write(build_delta(seq, learner.model, {}, {}, {}))
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    follower = live.DeltaFollower(served, str(log.directory))
    assert follower.catch_up() == 2 and served.seq == 2
    log.write(build_delta(3, learner.model, {}, {}, {}))
    assert follower.catch_up() == 2 and served.seq == 4
    pinned = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    assert live.DeltaFollower(pinned, str(log.directory), limit=2).catch_up() == 2 and pinned.seq == 2
    assert log.prune(upto=2) == [1, 2] and log.seqs() == [3, 4]


def test_a_delta_not_readable_yet_is_retried_and_a_bad_one_stops_the_follower(tmp_path: Path) -> None:
    config = VARIANTS[0]
    learner, _ = version_1(config, tmp_path)
    log = DeltaLog(tmp_path / "deltas")
    log.directory.mkdir()
    log.path(1).mkdir()  # not a file: reading it fails as a transient error would
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    messages: list[str] = []
    follower = live.DeltaFollower(served, str(log.directory), log=messages.append)
    assert follower.catch_up() == 0 and follower.failed is None and "not read yet" in messages[-1]
    log.path(1).rmdir()
    log.write(build_delta(1, learner.model, {}, {}, {}))
    assert follower.catch_up() == 1 and served.seq == 1
    bad = {"rows.emb_item": np.array([1]), "values.emb_item": np.full((1, config.dim), np.inf, np.float32)}
    log.write(Delta(2, 0, bad))
    log.write(build_delta(3, learner.model, {}, {}, {}))
    assert follower.catch_up() == 0 and served.seq == 1  # stays on the last good state
    assert follower.failed is not None and "non-finite" in follower.failed


def test_a_hold_takes_serving_back_to_a_delta_without_a_reload_and_lifting_it_follows_again(
    tmp_path: Path,
) -> None:
    config = VARIANTS[1]
    learner, vocabs = version_1(config, tmp_path)
    learner.tracking = True
    vocabs.track_changes()
    log = DeltaLog(tmp_path / "deltas")
    # No titles: serving knows titles from the catalogue (none in these versions), not from requests.
    checked = [dataclasses.replace(s, title="") for s in random_samples(60, 77)]
    expected = {0: torch_scores(learner, vocabs, checked)}
    for seq in (1, 2, 3):
        batch = [dataclasses.replace(s, title="") for s in fresh(128, seq, f"h{seq}-")]
        learner.learn(encode(batch, vocabs, config.max_tokens))
        log.write(build_delta(seq, learner.model, learner.take_touched(), vocabs.take_changes(), {}))
        expected[seq] = torch_scores(learner, vocabs, checked)
    path = str(tmp_path / "1" / "model.onnx")
    reloads: list[int] = []

    def reload() -> object:
        reloads.append(1)
        return live.LiveModel(path)

    follower = live.DeltaFollower(live.LiveModel(path), str(log.directory), reload=reload)
    assert follower.catch_up() == 3 and follower.model.seq == 3
    first = follower.model
    assert np.abs(live_scores(first, checked) - expected[3]).max() < 1e-5

    log.hold(1, 1, "delta 3: worse")
    follower.catch_up()
    assert follower.model is not first and follower.model.state.tolist() == [1, 1] and reloads == [1]
    assert np.abs(live_scores(follower.model, checked) - expected[1]).max() < 1e-5
    assert follower.catch_up() == 0 and follower.model.seq == 1  # held: 2 and 3 wait
    log.write(build_delta(4, learner.model, learner.take_touched(), vocabs.take_changes(), {}))
    assert follower.catch_up() == 0 and follower.model.seq == 1 and follower.rebuilt == 1

    log.release()
    assert follower.catch_up() == 3 and follower.model.seq == 4
    assert np.abs(live_scores(follower.model, checked) - expected[3]).max() < 1e-5

    # Below the version's own cut there is nothing to go back to; another version's hold is not ours.
    log.hold(1, 0, "to the snapshot")
    follower.catch_up()
    assert follower.model.seq == 0
    assert np.abs(live_scores(follower.model, checked) - expected[0]).max() < 1e-5
    log.hold(2, 0, "another version")
    assert follower.catch_up() == 4 and follower.model.seq == 4
    (log.directory / "hold.json").write_text("{not json")
    messages: list[str] = []
    follower.log = messages.append
    assert follower.catch_up() == 0 and "unreadable" in messages[-1]


def test_pruning_keeps_the_newest_delta_and_deltas_carry_their_offsets(tmp_path: Path) -> None:
    learner, _ = version_1(VARIANTS[0], tmp_path)
    log = DeltaLog(tmp_path / "deltas")
    for seq in (1, 2, 3):
        log.write(build_delta(seq, learner.model, {}, {}, {}, samples_trained=seq * 10, offsets={"e:0": seq}))
    assert log.prune(upto=5) == [1, 2] and log.seqs() == [3]
    read = Delta.from_bytes(log.path(3).read_bytes())
    assert (read.seq, read.samples_trained, read.offsets) == (3, 30, {"e:0": 3})


def test_a_rebuild_that_fails_leaves_serving_as_it_is_and_is_retried(tmp_path: Path) -> None:
    learner, _ = version_1(VARIANTS[0], tmp_path)
    log = DeltaLog(tmp_path / "deltas")
    log.write(build_delta(1, learner.model, {}, {}, {}))
    path = str(tmp_path / "1" / "model.onnx")
    attempts: list[int] = []

    def reload() -> object:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("the version's files are not readable yet")
        return live.LiveModel(path)

    messages: list[str] = []
    follower = live.DeltaFollower(
        live.LiveModel(path), str(log.directory), log=messages.append, reload=reload
    )
    assert follower.catch_up() == 1
    log.hold(1, 0, "worse")
    assert follower.catch_up() == 0 and follower.model.seq == 1 and "could not rebuild" in messages[-1]
    follower.catch_up()
    assert follower.model.seq == 0 and len(attempts) == 2


def contract_columns(n: int = 3) -> dict[str, np.ndarray]:
    cols = {name: np.array([b"x"] * n, dtype=object).reshape(-1, 1) for name in live.STRING_INPUTS}
    cols["price"] = np.full((n, 1), 9.5, dtype=np.float32)
    return cols


def test_requests_that_break_the_serving_contract_are_named() -> None:
    assert live.request_error(contract_columns(), max_rows=4096) is None
    short = contract_columns()
    short["brand"] = short["brand"][:2]
    assert "brand 2" in live.request_error(short) and "item_id has 3" in live.request_error(short)
    assert "empty" in live.request_error(contract_columns(0))
    assert "more than the 4" in live.request_error(contract_columns(5), max_rows=4)
    for bad in (np.nan, np.inf, -np.inf):
        cols = contract_columns()
        cols["price"][2, 0] = bad
        assert live.request_error(cols) == f"input 'price' holds {bad} at row 2: prices must be finite"
    missing = contract_columns()
    del missing["query"]
    assert live.request_error(missing) == "missing input 'query'"
    wide = contract_columns()
    wide["user_id"] = np.array([[b"a", b"b"]] * 3, dtype=object)
    assert "'user_id' has shape [3, 2]" in live.request_error(wide)
    ints = contract_columns()
    ints["price"] = np.ones((3, 1), dtype=np.int32)
    assert "expected FP32" in live.request_error(ints)


def test_ids_are_looked_up_as_bytes_or_str_alike(tmp_path: Path) -> None:
    """Triton hands the backend bytes, the in-process checks str: both find the same rows, and a
    key a delta adds or removes is found (or not) either way."""
    _, vocabs = version_1(VARIANTS[0], tmp_path)
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    enc = served.encoders["vocab_item"]
    known = vocabs["item"].keys()[:5]
    as_str = np.array([*known, "never-seen"], dtype=object)
    as_bytes = np.array([k.encode() for k in as_str], dtype=object).reshape(-1, 1)
    assert enc.lookup(as_str).tolist() == enc.lookup(as_bytes).ravel().tolist()
    assert enc.lookup(as_str)[-1] == enc.default
    enc.set("never-seen", 7)
    enc.set(known[0], enc.default)
    rows = enc.lookup(as_bytes).ravel().tolist()
    assert rows[-1] == 7 and rows[0] == enc.default and enc.get("never-seen") == 7


def test_one_query_for_all_rows_scores_as_the_same_query_row_by_row(tmp_path: Path) -> None:
    version_1(VARIANTS[0], tmp_path)
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    samples = [dataclasses.replace(s, query="Red  shoes") for s in random_samples(20, 3)]
    same, _ = served.run(feeds(samples))
    mixed = [*samples[:-1], dataclasses.replace(samples[-1], query="blue hat")]
    scores, _ = served.run(feeds(mixed))  # not all the same: split row by row
    assert np.allclose(same[:-1], scores[:-1], atol=1e-6)
    one_by_one = np.concatenate([served.run(feeds([s]))[0] for s in samples])
    assert np.allclose(same, one_by_one, atol=1e-6)


def as_bytes(column: np.ndarray) -> np.ndarray:
    return np.array([x.encode() for x in column.ravel()], dtype=object).reshape(column.shape)


def test_merged_requests_score_as_each_request_alone(tmp_path: Path) -> None:
    """The dynamic batcher merges requests: a few queries over many rows, as bytes from Triton.
    Each distinct query is split once and spread to its rows; every row scores as it does alone."""
    version_1(VARIANTS[0], tmp_path)
    served = live.LiveModel(str(tmp_path / "1" / "model.onnx"))
    requests = [
        [dataclasses.replace(s, query=q) for s in random_samples(7, seed)]
        for seed, q in enumerate(["red shoes", "Blue  hat", "red shoes", ""])
    ]
    alone = np.concatenate([served.run(feeds(r))[0] for r in requests])
    merged = {
        k: (
            np.array([x.encode() for x in v.ravel()], dtype=object).reshape(v.shape)
            if v.dtype == object
            else v
        )
        for k, v in feeds([s for r in requests for s in r]).items()
    }
    scores, _ = served.run(merged)
    np.testing.assert_allclose(scores, alone, atol=1e-6)
    distinct, rows = live._distinct(merged["query"].reshape(-1))
    assert len(distinct) == 3 and rows is not None
    assert distinct[rows].tolist() == merged["query"].ravel().tolist()
