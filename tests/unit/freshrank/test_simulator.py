from __future__ import annotations

import hashlib
import statistics

import pytest

from freshrank.simulator import (
    CATEGORIES,
    CONCEPT_OF,
    CONCEPTS,
    MODELS,
    WORD_ADJECTIVES,
    ShopSimulator,
    SimulatorConfig,
    encode_event,
    generate,
    item_record,
    query_concept,
)
from rankcore.events import Event, parse_event
from rankcore.items import ItemUpdate, parse_item
from rankcore.text import load_table

START = 1_800_000_000_000


def run(sim: ShopSimulator, seconds: int, per_s: int = 20) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for k in range(seconds * per_s):
        now = START + k * 1000 // per_s
        out += sim.due(now) + sim.request(now)
    return out


@pytest.mark.parametrize("titles", ["words", "tokens"])
def test_same_seed_same_events(titles: str) -> None:
    a = run(ShopSimulator(SimulatorConfig(seed=3, titles=titles), START), 5)
    b = run(ShopSimulator(SimulatorConfig(seed=3, titles=titles), START), 5)
    c = run(ShopSimulator(SimulatorConfig(seed=4, titles=titles), START), 5)
    assert a == b
    assert a != c


def test_token_titles_reproduce_the_earlier_streams() -> None:
    # Recorded from the generator before word titles existed: events (with bad ones and two
    # launches), the truth of every impression and the catalogue, for seed 7.
    config = SimulatorConfig(seed=7, titles="tokens")
    truth: dict[tuple[str, str], float] = {}
    digest = hashlib.sha256()
    events = 0
    for event in generate(config, rate=1000, duration_s=10, start_ms=START, truth=truth):
        digest.update(encode_event(event)[1])
        events += 1
    for (request_id, item_id), p in truth.items():
        digest.update(f"{request_id} {item_id} {p:.9f}".encode())
    for row in ShopSimulator(config, START).catalogue_rows():
        digest.update(repr(sorted(row.items())).encode())
    assert (events, len(truth), digest.hexdigest()[:16]) == (10375, 9120, "5f93e0e2d07f2f75")


def test_titles_must_be_a_known_kind() -> None:
    with pytest.raises(ValueError, match=r"titles.*'words', 'tokens'.*'english'"):
        SimulatorConfig(titles="english")


def test_the_concept_table_names_each_concept_unambiguously() -> None:
    assert set(CONCEPTS) == set(CATEGORIES)
    assert all(2 <= len(concepts) <= 4 for concepts in CONCEPTS.values())
    phrases = [p for concepts in CONCEPTS.values() for concept in concepts for p in concept]
    assert len(phrases) == len(set(phrases)) == len(CONCEPT_OF)
    assert all(len(concept) >= 2 for concepts in CONCEPTS.values() for concept in concepts)
    assert not {w for p in phrases for w in p.split()} & set(WORD_ADJECTIVES)
    for concepts in CONCEPTS.values():
        for concept in concepts:
            for phrase in concept:
                assert query_concept(phrase) == concept[0]
                assert query_concept(f"brand07 Black {phrase}") == concept[0]
    assert query_concept("headphones") != query_concept("in ear headphones")
    assert query_concept("brand07 black") is None and query_concept("") is None


def test_word_titles_are_english_words_with_a_phrase_of_their_concept() -> None:
    sim = ShopSimulator(SimulatorConfig(seed=5, launch_every_s=1.0), START)
    run(sim, 10)
    assert len(sim.launched) == 9
    for item in sim.catalogue:
        brand, adjective, *rest = item.words
        if rest[-1] in MODELS:
            rest.pop()
        assert brand == item.brand and adjective in WORD_ADJECTIVES
        assert item.concept is not None and " ".join(rest) == item.phrase
        assert item.phrase in next(c for c in CONCEPTS[item.category] if c[0] == item.concept)
        assert all(w.isalpha() and w.islower() for w in [adjective, *rest])
    assert all("phrase" not in row for row in sim.catalogue_rows())
    assert {item.concept for item in sim.catalogue} == set(CONCEPT_OF.values())


def test_the_text_tower_knows_every_word_of_the_titles() -> None:
    known = set(load_table().words)  # shipped with the package: missing, the test fails
    words = {w for phrase in CONCEPT_OF for w in phrase.split()} | set(WORD_ADJECTIVES)
    assert sorted(words - known) == []


def test_word_queries_mostly_name_the_target_by_a_synonym() -> None:
    sim = ShopSimulator(SimulatorConfig(seed=7), START)
    targets = sim.catalogue[:3000] * 2
    queries = [sim._word_query(target) for target in targets]
    assert all(query_concept(q.text) == t.concept == q.concept for q, t in zip(queries, targets, strict=True))
    synonyms = sum(not set(q.words) & set(t.words) for q, t in zip(queries, targets, strict=True))
    assert synonyms / len(queries) >= 0.4


def test_word_truth_follows_the_meaning_of_the_query() -> None:
    truth: dict[tuple[str, str], float] = {}
    sim = ShopSimulator(SimulatorConfig(seed=7, bad_rate=0.0), START, truth)
    queries: dict[str, str] = {}
    for k in range(3000):
        events = sim.request(START + k * 20)
        assert len({e["item_id"] for e in events}) == len(events) == sim.config.list_size
        queries.update((str(e["request_id"]), str(e["query"])) for e in events)
    items = {item.item_id: item for item in sim.catalogue}
    category_of = {concept[0]: c for c, concepts in CONCEPTS.items() for concept in concepts}
    by_match: dict[str, list[float]] = {"concept": [], "category": [], "other": []}
    for (request_id, item_id), p in truth.items():
        concept, item = query_concept(queries[request_id]), items[item_id]
        assert concept is not None
        match = (
            "concept"
            if item.concept == concept
            else "category"
            if item.category == category_of[concept]
            else "other"
        )
        by_match[match].append(p)
    assert all(len(ps) > 3000 for ps in by_match.values())  # every shown list mixes all three
    mean = {match: statistics.mean(ps) for match, ps in by_match.items()}
    assert mean["concept"] > mean["category"] > mean["other"]
    assert mean["concept"] > 2 * mean["other"]


def test_events_follow_the_contract_and_truth_drifts() -> None:
    sim = ShopSimulator(SimulatorConfig(seed=1, bad_rate=0.0, launch_every_s=2.0), START)
    events = run(sim, 30)
    parsed = [parse_event(encode_event(e)[1], START + 60_000) for e in events]
    assert all(isinstance(p, Event) for p in parsed)
    types = {p.type for p in parsed if isinstance(p, Event)}
    assert types == {"impression", "click", "add_to_cart", "purchase"}
    assert len(sim.launched) == 14  # one every 2 s after the start, up to 29.95 s
    assert any(isinstance(p, Event) and p.item_id in sim.launched for p in parsed)
    assert sim.trend("phone", START) != sim.trend("phone", START + 45_000)


def test_bad_events_are_mixed_in_when_asked() -> None:
    events = run(ShopSimulator(SimulatorConfig(seed=1, bad_rate=0.05), START), 10)
    bad = [e for e in events if not isinstance(parse_event(encode_event(e)[1], START + 60_000), Event)]
    assert bad


def test_poisoning_inverts_clicks_only_inside_its_window() -> None:
    sim = ShopSimulator(SimulatorConfig(seed=2, bad_rate=0.0, poison_start_s=10, poison_duration_s=5), START)
    assert (
        not sim.poisoned(START + 9_999) and sim.poisoned(START + 10_000) and not sim.poisoned(START + 15_000)
    )

    def click_rate(first_s: int, last_s: int) -> float:
        impressions = clicks = 0
        for k in range(first_s * 20, last_s * 20):
            now = START + k * 50
            events = sim.request(now)
            impressions += sum(e["type"] == "impression" for e in events)
            clicks += sum(e["type"] == "click" for e in sim.due(now + 20_000))  # what this request caused
        return clicks / impressions

    assert click_rate(0, 9) < 0.4 < click_rate(10, 15)


def test_the_truth_is_recorded_beside_the_stream_without_changing_it() -> None:
    config = SimulatorConfig(seed=3, items=200, users=50)
    plain = list(generate(config, rate=200, duration_s=5, start_ms=1_700_000_000_000))
    truth: dict[tuple[str, str], float] = {}
    told = list(generate(config, rate=200, duration_s=5, start_ms=1_700_000_000_000, truth=truth))
    assert told == plain  # the same events; the truth never travels with them
    impressions = [e for e in plain if e.get("type") == "impression"]
    assert len(truth) == len(impressions) > 0
    assert all(0.0 < truth[(e["request_id"], e["item_id"])] < 1.0 for e in impressions)


def test_item_records_follow_the_items_contract() -> None:
    sim = ShopSimulator(SimulatorConfig(seed=3, items=20), start_ms=1_800_000_000_000)
    key, value = item_record(sim.catalogue[0], 1_800_000_000_000)
    update = parse_item(value, 1_800_000_000_000)
    assert isinstance(update, ItemUpdate) and key == update.item_id.encode()
    assert update.title == sim.catalogue[0].title and update.price == sim.catalogue[0].price
