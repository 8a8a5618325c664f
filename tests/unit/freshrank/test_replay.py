from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from freshrank.replay import (
    CATALOGUE_SHARE,
    DAY_MS,
    POPULARITY_WINDOW,
    UNKNOWN_PRICE,
    complete_journey_events,
    diginetica_events,
    fit_speedup,
)
from rankcore.errors import ConfigError
from rankcore.events import Event, parse_event
from updater.joiner import DEFAULT_WINDOW_MS, Joiner

START = 1_800_000_000_000
Events = list[dict[str, Any]]


def write_diginetica(
    directory: Path,
    views: list[tuple[int, str, str, int, str]],
    purchases: Sequence[tuple[int, str, int, str, str]] = (),
    categories: dict[str, int] | None = None,
    views_file: str = "sample_train-item-views.csv",
) -> Path:
    """Tiny Diginetica files: views (session, user, item, timeframe, day), purchases
    (session, user, timeframe, day, item), item -> category."""
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    lines += [f"{s};{u};{i};{t};{d}" for s, u, i, t, d in views]
    (directory / views_file).write_text("\n".join(lines) + "\n")
    lines = ["sessionId;userId;timeframe;eventdate;ordernumber;itemId"]
    lines += [f"{s};{u};{t};{d};{n};{i}" for n, (s, u, t, d, i) in enumerate(purchases)]
    (directory / "train-purchases.csv").write_text("\n".join(lines) + "\n")
    lines = ["itemId;categoryId"] + [f"{i};{c}" for i, c in (categories or {}).items()]
    (directory / "product-categories.csv").write_text("\n".join(lines) + "\n")
    return directory


SMALL_VIEWS = [
    (1, "NA", "10", 0, "2016-05-01"),
    (1, "NA", "11", 60_000, "2016-05-01"),
    (1, "NA", "12", 120_000, "2016-05-01"),
    (2, "77", "10", 30_000, "2016-05-01"),
    (2, "77", "13", 90_000, "2016-05-01"),
    (3, "NA", "11", 5_000, "2016-05-02"),
    (3, "NA", "10", 50_000, "2016-05-02"),
]
SMALL_PURCHASES = [
    (2, "77", 200_000, "2016-05-01", "13"),  # viewed in session 2: joins that request
    (3, "NA", 80_000, "2016-05-02", "14"),  # never viewed: a request of its own
    (9, "NA", 1_000, "2016-05-01", "10"),  # session 9 is not in the views file: skipped
]


def small(tmp_path: Path, **kwargs: Any) -> Events:
    write_diginetica(tmp_path, SMALL_VIEWS, SMALL_PURCHASES, {"10": 5, "11": 5, "12": 6})
    return list(diginetica_events(tmp_path, start_ms=START, **kwargs))


def join(events: Events) -> tuple[Joiner, list[Any]]:
    """Every event through the parser and the updater's joiner; fails on any rejection."""
    now = max(e["ts"] for e in events)
    joiner, samples = Joiner(), []
    for e in events:
        parsed = parse_event(orjson.dumps(e), now)
        assert isinstance(parsed, Event), (parsed, e)
        joined = joiner.add(parsed, now)
        assert isinstance(joined, list), (joined, e)
        samples += joined + joiner.expire()
    return joiner, samples + joiner.drain()


def requests(events: Events) -> dict[str, Events]:
    out: dict[str, Events] = {}
    for e in events:
        out.setdefault(e["request_id"], []).append(e)
    return out


def test_diginetica_events_are_in_time_order_and_follow_the_contract(tmp_path: Path) -> None:
    events = small(tmp_path, negatives=2)
    assert events[0]["ts"] == START
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    assert Counter(e["type"] for e in events)["click"] == len(SMALL_VIEWS)
    by_request = requests(events)
    assert len(by_request) == len(SMALL_VIEWS) + 1  # + the purchase of an item never viewed
    for shown in by_request.values():
        positions = sorted(e["position"] for e in shown if e["type"] == "impression")
        assert positions == list(range(len(positions)))
    users = {e["user_id"] for e in events}
    assert users == {"s1", "77", "s3"}  # NA users are their session
    items = {e["item_id"]: e["item"] for e in events}
    assert items["10"] == {"category": "c5", "brand": "", "price": UNKNOWN_PRICE}
    assert items["13"]["category"] == ""  # not in product-categories
    assert all(e["query"] == "" for e in events)
    join(events)  # every event parses and joins


def test_original_time_is_rebased_and_compressed(tmp_path: Path) -> None:
    events = small(tmp_path, negatives=0, speedup=1000.0)
    impressions = {e["item_id"] + e["user_id"]: e["ts"] for e in events if e["type"] == "impression"}
    # Session 1 viewed item 11 one minute after item 10; it is the first of two sessions on its
    # day, so it starts at a quarter of the day (6:00) and session 2 at three quarters (18:00).
    assert impressions["10s1"] == START
    assert impressions["11s1"] - impressions["10s1"] == 60
    assert impressions["1077"] - START == (DAY_MS // 2 + 30_000) // 1000
    # Session 3 is alone on the next day (from noon), 5 s after its start.
    assert impressions["11s3"] - START == (DAY_MS + DAY_MS // 2 - DAY_MS // 4 + 5_000) // 1000


def test_sessions_of_a_day_get_distinct_ordered_starts(tmp_path: Path) -> None:
    # Sessions in file order 10, 3, 5 on one day (numeric, not text, order: 3, 5, 10), each
    # with views at 0 and 1 s after its start, and session 7 alone on the next day.
    day = [(s, "NA", f"i{s}", t, "2016-05-01") for s in (10, 3, 5) for t in (0, 1_000)]
    views = [*day, (7, "NA", "i7", 0, "2016-05-02")]
    events = list(
        diginetica_events(write_diginetica(tmp_path, views), start_ms=START, speedup=1.0, negatives=0)
    )
    starts: dict[str, int] = {}
    for e in events:
        if e["type"] == "impression":
            starts.setdefault(e["user_id"], e["ts"])
    assert list(starts) == ["s3", "s5", "s10", "s7"]  # session-id order within the day
    assert starts["s5"] - starts["s3"] == starts["s10"] - starts["s5"] == DAY_MS // 3  # evenly
    assert starts["s7"] - starts["s3"] == DAY_MS + DAY_MS // 2 - DAY_MS // 6  # 00:00 + 1/6 → next noon
    # Views keep their timeframe after the synthetic start, so sessions no longer interleave.
    sessions = [e["user_id"] for e in events if e["type"] == "impression"]
    assert sessions == ["s3", "s3", "s5", "s5", "s10", "s10", "s7"]


def test_purchases_join_the_impression_they_follow(tmp_path: Path) -> None:
    events = small(tmp_path, negatives=3)
    purchases = [e for e in events if e["type"] == "purchase"]
    assert [(p["item_id"], p["user_id"]) for p in purchases] == [("13", "77"), ("14", "s3")]
    viewed = requests(events)[purchases[0]["request_id"]]
    assert [e["type"] for e in viewed if e["item_id"] == "13"] == ["impression", "click", "purchase"]
    alone = requests(events)[purchases[1]["request_id"]]
    assert [e["type"] for e in alone if e["item_id"] == "14"] == ["impression", "purchase"]

    joiner, samples = join(events)
    acted = {(e["request_id"], e["item_id"]) for e in events if e["type"] != "impression"}
    positives = [s for s in samples if s.label]
    assert {(s.request_id, s.item_id) for s in positives} == acted
    assert len(positives) == len(acted)
    assert joiner.extra_actions == 1  # the purchase after the click of the same impression
    assert all(0 < s.action_ts_ms - s.impression_ts_ms < DEFAULT_WINDOW_MS / 2 for s in positives)


def test_the_same_seed_gives_the_same_events(tmp_path: Path) -> None:
    a, b, c = (small(tmp_path, negatives=2, seed=s) for s in (1, 1, 2))
    assert a == b
    assert a != c


def test_limit_caps_requests(tmp_path: Path) -> None:
    events = small(tmp_path, negatives=1, limit=3)
    assert len(requests(events)) == 3
    assert sum(e["type"] == "impression" and e["position"] == 0 for e in events) == 3


def test_without_a_catalogue_negatives_are_recently_popular_and_never_the_positive(tmp_path: Path) -> None:
    # No product-categories rows: every negative comes from the popularity window.
    rng = random.Random(5)
    # An early fashion (a*), then a later one (b*) that fills the window; "hot" stays popular.
    items = [rng.choice(["hot"] * 5 + [f"a{k}" for k in range(20)]) for _ in range(POPULARITY_WINDOW)]
    items += [rng.choice(["hot"] * 5 + [f"b{k}" for k in range(20)]) for _ in range(POPULARITY_WINDOW + 300)]
    views = [(1, "NA", item, n * 1000, "2016-05-01") for n, item in enumerate(items)]
    events = list(diginetica_events(write_diginetica(tmp_path, views), start_ms=START, negatives=4))

    counts: Counter[str] = Counter()
    for n, shown in enumerate(requests(events).values()):
        positive = items[n]
        assert [e["item_id"] for e in shown if e["type"] == "click"] == [positive]
        negatives = [e["item_id"] for e in shown if e["type"] == "impression" and e["item_id"] != positive]
        assert len(negatives) == len(set(negatives)) <= 4
        window = set(items[max(0, n - POPULARITY_WINDOW) : n])
        assert set(negatives) <= window
        if n >= 10:
            assert len(negatives) == 4
        counts.update(negatives)
    assert counts.most_common(1)[0][0] == "hot"  # drawn by count
    late = [e["item_id"] for e in events[-1500:] if e["type"] == "impression"]
    assert not any(i.startswith("a") for i in late)  # the early fashion left the window


def catalogue_run(tmp_path: Path, seed: int = 0) -> tuple[list[str], set[str], Events]:
    """A stream of 600 views of 20 items, with 200 more items in the catalogue never viewed."""
    rng = random.Random(11)
    viewed = [f"p{k}" for k in range(20)]
    items = [rng.choice(viewed) for _ in range(600)]
    views = [(1 + n // 10, "NA", item, n * 1000, "2016-05-01") for n, item in enumerate(items)]
    catalogue = {i: 1 for i in viewed + [f"x{k}" for k in range(200)]}
    write_diginetica(tmp_path, views, categories=catalogue)
    return items, set(catalogue), list(diginetica_events(tmp_path, start_ms=START, negatives=4, seed=seed))


def test_catalogue_negatives_come_from_the_catalogue(tmp_path: Path) -> None:
    items, catalogue, events = catalogue_run(tmp_path)
    uniform = int(4 * CATALOGUE_SHARE + 0.5)
    assert uniform == 2
    never_viewed: Counter[str] = Counter()
    for n, shown in enumerate(requests(events).values()):
        positive = items[n]
        negatives = [e["item_id"] for e in shown if e["type"] == "impression" and e["item_id"] != positive]
        assert len(negatives) == len(set(negatives)) == 4  # the catalogue fills in from the start
        assert positive not in negatives
        window = set(items[max(0, n - POPULARITY_WINDOW) : n])
        outside = [i for i in negatives if i not in window]
        assert set(outside) <= catalogue
        if len(window) >= 10:  # the window can give its share: at most the catalogue's are outside
            assert len(outside) <= uniform
        never_viewed.update(i for i in negatives if i.startswith("x"))
    # Uniform over the catalogue: about 2 of 4 negatives, 200/220 of them never viewed, all spread.
    assert 0.8 * 600 * uniform * 200 / 220 < never_viewed.total() < 1.2 * 600 * uniform * 200 / 220
    assert len(never_viewed) > 190
    assert max(never_viewed.values()) < 20


def test_first_appearances_can_be_negatives(tmp_path: Path) -> None:
    items, _, events = catalogue_run(tmp_path)
    first: dict[str, bool] = {}  # item -> whether its first impression was a positive
    for shown in requests(events).values():
        clicked = {e["item_id"] for e in shown if e["type"] == "click"}
        for e in shown:
            if e["type"] == "impression":
                first.setdefault(e["item_id"], e["item_id"] in clicked)
    # The first request already has negatives, which nobody had acted on, and most items
    # shown never get a positive at all.
    assert sum(not positive for positive in first.values()) > 150
    first_request = next(iter(requests(events).values()))
    assert sum(e["type"] == "impression" for e in first_request) == 1 + 4
    # Some items later viewed were shown as negatives first: a new id is no sign of a positive.
    assert any(not first[i] for i in set(items))


def test_catalogue_draws_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, b, c = (catalogue_run(tmp_path, seed)[2] for seed in (4, 4, 5))
    assert a == b
    assert a != c


def test_diginetica_files_are_checked_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sample_train-item-views\.csv"):
        diginetica_events(tmp_path, start_ms=START)
    write_diginetica(tmp_path, SMALL_VIEWS, views_file="train-item-views.csv")
    (tmp_path / "product-categories.csv").unlink()
    with pytest.raises(ConfigError, match=r"product-categories\.csv"):
        diginetica_events(tmp_path, start_ms=START)
    (tmp_path / "product-categories.csv").write_text("item;category\n1;2\n")
    with pytest.raises(ConfigError, match="expected columns itemId;categoryId"):
        diginetica_events(tmp_path, start_ms=START)
    bad = [(1, "NA", "10", 0, "2016-05-01"), (1, "NA", "11", "soon", "2016-05-01")]
    write_diginetica(tmp_path, bad, views_file="train-item-views.csv")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"train-item-views\.csv:3: expected a number"):
        diginetica_events(tmp_path, start_ms=START)
    with pytest.raises(ConfigError, match="negatives"):
        diginetica_events(tmp_path, start_ms=START, negatives=-1)
    with pytest.raises(ConfigError, match="speedup"):
        complete_journey_events([], [], start_ms=START, speedup=0)


# --------------------------------------------------------------------------- Complete Journey

T0 = datetime(2017, 3, 1, 10, 0, 0)
PRODUCTS: list[dict[str, Any]] = [
    {"product_id": 1, "department": "PRODUCE", "brand": "National", "product_category": "APPLES"},
    {"product_id": 2, "department": "PRODUCE", "brand": "Private", "product_category": "PEARS"},
    {"product_id": 3, "department": "PRODUCE", "brand": "National", "product_category": "GRAPES"},
    {"product_id": 4, "department": "MEAT", "brand": "National", "product_category": "BEEF"},
    {"product_id": 5, "department": "MEAT", "brand": "Private", "product_category": None},
    {"product_id": 6, "department": "MEAT", "brand": "National", "product_category": "PORK"},
]


def tx(
    household: int, basket: int, product: int, minutes: int, sales: float = 2.0, qty: int = 1
) -> dict[str, Any]:
    return {
        "household_id": household,
        "basket_id": basket,
        "product_id": product,
        "quantity": qty,
        "sales_value": sales,
        "transaction_timestamp": T0 + timedelta(minutes=minutes),
    }


def test_complete_journey_baskets_become_requests_with_aisle_negatives() -> None:
    rows = [tx(7, 100, 1, 0, 3.0, 2), tx(7, 100, 4, 0, 5.0)]
    rows += [tx(8, 100 + n, p, 10 * n) for n in range(1, 6) for p in (2, 3, 5, 6)]
    rows += [tx(7, 200, 1, 100, 0.0, 0), tx(7, 200, 4, 100)]
    events = list(
        complete_journey_events(list(reversed(rows)), PRODUCTS, negatives=2, seed=3, start_ms=START)
    )

    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    by_request = requests(events)
    assert len(by_request) == 7  # one per basket, in time order although the rows were not
    first = next(iter(by_request.values()))
    assert {e["user_id"] for e in first} == {"h7"}
    assert Counter((e["item_id"], e["type"]) for e in first if e["item_id"] in {"1", "4"}) == Counter(
        {(i, t): 1 for i in ("1", "4") for t in ("impression", "click", "purchase")}
    )
    # The first basket: nothing bought before, so the catalogue gives every negative.
    assert sorted(e["item_id"] for e in first if e["item_id"] not in {"1", "4"}) == ["2", "3", "5", "6"]
    apple = next(e for e in first if e["item_id"] == "1")
    assert apple["query"] == "produce"
    assert apple["item"] == {"category": "APPLES", "brand": "National", "price": 1.5}
    assert next(e for e in events if e["item_id"] == "5")["item"]["category"] == ""

    departments = {str(p["product_id"]): p["department"].lower() for p in PRODUCTS}
    for shown in by_request.values():
        bought = {e["item_id"] for e in shown if e["type"] == "click"}
        negatives = [e for e in shown if e["type"] == "impression" and e["item_id"] not in bought]
        assert len({e["item_id"] for e in negatives}) == len(negatives)
        for e in negatives:
            assert e["query"] == departments[e["item_id"]]  # the aisle of a positive
            assert e["query"] in {departments[b] for b in bought}
    last = list(by_request.values())[-1]
    # Apple bought for 0: the price seen before; both aisles now have negatives to show.
    assert next(e for e in last if e["item_id"] == "1" and e["type"] == "click")["item"]["price"] == 1.5
    assert len([e for e in last if e["type"] == "impression"]) == 2 + 2 * 2

    joiner, samples = join(events)
    positives = [s for s in samples if s.label]
    assert len(positives) == len({(r["basket_id"], r["product_id"]) for r in rows})
    assert joiner.extra_actions == len(positives)  # each purchase follows its click


def test_complete_journey_catalogue_negatives_come_from_the_positive_department() -> None:
    # 40 products in each of two departments, of which only the first 3 are ever bought.
    products = [
        {"product_id": 100 * d + k, "department": dept, "brand": "B", "product_category": "C"}
        for d, dept in ((1, "PRODUCE"), (2, "MEAT"))
        for k in range(40)
    ]
    department = {str(p["product_id"]): p["department"] for p in products}
    rows = [tx(n % 5, n, 100 * (1 + n % 2) + n % 3, n) for n in range(300)]  # one product a basket

    def run(seed: int) -> Events:
        return list(complete_journey_events(rows, products, negatives=4, seed=seed, start_ms=START))

    events = run(1)
    never_bought: Counter[str] = Counter()
    for shown in requests(events).values():
        (positive,) = {e["item_id"] for e in shown if e["type"] == "click"}
        negatives = [e["item_id"] for e in shown if e["type"] == "impression" and e["item_id"] != positive]
        assert len(negatives) == len(set(negatives)) == 4
        assert {department[i] for i in negatives} == {department[positive]}  # the positive's aisle
        never_bought.update(i for i in negatives if int(i) % 100 >= 3)
    # Half of the negatives from the department's 40 products: about 2 * 37/40 a basket.
    assert 0.8 * 300 * 2 * 37 / 40 < never_bought.total() < 1.2 * 300 * 2 * 37 / 40
    assert len(never_bought) > 60
    assert run(1) == events
    assert run(2) != events


def test_complete_journey_is_deterministic_and_limited() -> None:
    rows = [tx(n % 3, n, 1 + n % 6, n) for n in range(40)]

    def run(seed: int, limit: int | None = None) -> Events:
        return list(
            complete_journey_events(rows, PRODUCTS, negatives=2, seed=seed, start_ms=START, limit=limit)
        )

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert len(requests(run(1, limit=5))) == 5
    assert all(isinstance(parse_event(orjson.dumps(e), START + 10**8), Event) for e in run(1))


def test_fit_speedup_paces_the_log_at_the_rate() -> None:
    events = [{"ts": START + n * 10_000} for n in range(101)]  # 101 events over 1,000 s
    assert fit_speedup(events, rate=10.1) == pytest.approx(100.0)
    assert fit_speedup(events[:1], rate=5.0) == 1.0
    with pytest.raises(ConfigError, match="rate"):
        fit_speedup(events, rate=0)
