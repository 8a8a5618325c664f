"""A shop-traffic simulator with a hidden, drifting ground truth.

A catalogue of items (id, title, category, brand, price), users with tastes, search queries
for a target item, a shown list per request (impressions with positions), and the clicks,
add-to-carts and purchases that follow from a hidden click probability. The truth drifts: new
items launch during the run (they start hot), and category trends rise and fade.

Titles come in two kinds (``SimulatorConfig.titles``). ``words`` (the default) speaks English:
each category has a few product concepts (:data:`CONCEPTS`), each a set of synonymous phrases,
and a title is "<brand> <adjective> <phrase> [model]", e.g. "brand07 black running shoe 12".
Most queries name the target's concept by another phrase ("sneakers"), so exact word overlap
does not find what the shopper means; the truth's relevance is the meaning: the same concept,
less for the same category. ``tokens`` is the first generator, "<brand> <category>
<adjective> [model]" with queries of title words and relevance by word overlap; it reproduces
the earlier event streams exactly, seed for seed.

:class:`ShopSimulator` is pure and deterministic for a seed given the request times;
:func:`produce` paces it against the wall clock and writes the events to Kafka.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

CATEGORIES = (
    "phone",
    "laptop",
    "headphones",
    "shoes",
    "jacket",
    "watch",
    "camera",
    "tablet",
    "backpack",
    "lamp",
    "kettle",
    "chair",
    "desk",
    "blender",
    "speaker",
    "monitor",
    "keyboard",
    "mouse",
    "bottle",
    "tent",
)
ADJECTIVES = (
    "pro",
    "max",
    "mini",
    "ultra",
    "lite",
    "air",
    "plus",
    "classic",
    "sport",
    "eco",
    "red",
    "black",
    "white",
    "blue",
    "wireless",
    "smart",
    "gaming",
    "travel",
    "kids",
    "xl",
)
MODELS = tuple(str(n) for n in range(5, 16))
TITLES = ("words", "tokens")

# Word titles: per category, its product concepts; each concept, phrases that mean it. Every
# word is an English word the text tower knows; no adjective below is a word of a phrase.
CONCEPTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "phone": (
        ("smartphone", "mobile phone", "handset"),
        ("phone case", "protective cover"),
        ("charger", "charging cable", "power adapter"),
    ),
    "laptop": (
        ("laptop", "notebook computer"),
        ("laptop bag", "computer sleeve", "briefcase"),
        ("docking station", "usb hub", "port replicator"),
    ),
    "headphones": (
        ("wireless earbuds", "earphones", "in ear headphones"),
        ("headphones", "headset", "over ear headphones"),
    ),
    "shoes": (
        ("running shoe", "sneakers", "trainers"),
        ("hiking boot", "walking boots", "trekking boots"),
        ("sandals", "flip flops"),
        ("slippers", "house shoes", "moccasins"),
    ),
    "jacket": (
        ("rain jacket", "raincoat", "waterproof coat"),
        ("winter coat", "parka", "puffer jacket"),
        ("hoodie", "sweatshirt", "pullover"),
    ),
    "watch": (
        ("smartwatch", "fitness tracker", "pedometer"),
        ("wristwatch", "analog watch", "timepiece"),
        ("sports watch", "chronograph", "stopwatch"),
    ),
    "camera": (
        ("digital camera", "point and shoot", "compact"),
        ("camcorder", "video recorder", "action camera"),
        ("webcam", "web camera"),
        ("zoom lens", "telephoto", "camera optics"),
    ),
    "tablet": (
        ("tablet", "slate", "handheld computer"),
        ("drawing tablet", "graphics pad"),
        ("ebook reader", "electronic book"),
    ),
    "backpack": (
        ("backpack", "rucksack", "knapsack"),
        ("daypack", "hiking pack"),
        ("school bag", "satchel"),
    ),
    "lamp": (
        ("desk lamp", "reading light"),
        ("floor lamp", "standing light"),
        ("night light", "bedside lamp"),
        ("lantern", "camping light", "torch"),
    ),
    "kettle": (
        ("electric kettle", "water boiler"),
        ("teapot", "tea kettle", "samovar"),
        ("coffee maker", "espresso machine", "percolator"),
    ),
    "chair": (
        ("office chair", "swivel seat"),
        ("armchair", "recliner", "lounge chair"),
        ("stool", "footstool", "ottoman"),
        ("gaming chair", "racing seat"),
    ),
    "desk": (
        ("standing desk", "adjustable workstation"),
        ("writing desk", "computer table", "bureau"),
    ),
    "blender": (
        ("blender", "smoothie maker"),
        ("hand blender", "immersion mixer"),
        ("food processor", "vegetable chopper", "grinder"),
        ("juicer", "juice extractor", "citrus press"),
    ),
    "speaker": (
        ("portable speaker", "wireless loudspeaker", "jukebox"),
        ("soundbar", "sound bar", "home theater"),
        ("bookshelf speakers", "stereo system"),
    ),
    "monitor": (
        ("monitor", "computer screen", "display"),
        ("gaming monitor", "curved display"),
        ("monitor arm", "screen riser", "display mount"),
    ),
    "keyboard": (
        ("mechanical keyboard", "gaming keyboard", "typewriter"),
        ("wireless keyboard", "cordless keyboard"),
        ("digital piano", "synthesizer", "electronic organ"),
    ),
    "mouse": (
        ("wireless mouse", "computer mouse"),
        ("mouse pad", "desk mat"),
        ("trackpad", "touch pad"),
    ),
    "bottle": (
        ("water bottle", "drinking flask", "canteen"),
        ("thermos", "vacuum flask", "insulated jug"),
        ("baby bottle", "infant feeder"),
        ("travel mug", "coffee tumbler", "thermal cup"),
    ),
    "tent": (
        ("tent", "shelter", "bivouac"),
        ("sleeping bag", "bedroll", "camping quilt"),
        ("tarp", "tarpaulin", "canopy"),
    ),
}
WORD_ADJECTIVES = (
    "black",
    "white",
    "grey",
    "silver",
    "red",
    "blue",
    "green",
    "pink",
    "navy",
    "beige",
    "classic",
    "premium",
    "lightweight",
    "slim",
    "durable",
    "elegant",
    "modern",
    "vintage",
    "sturdy",
    "deluxe",
)
# A concept goes by its first phrase; every phrase names exactly one concept.
_PHRASES = {concept[0]: concept for concepts in CONCEPTS.values() for concept in concepts}
CONCEPT_OF = {phrase: name for name, phrases in _PHRASES.items() for phrase in phrases}
_LONGEST_PHRASE = max(len(phrase.split()) for phrase in CONCEPT_OF)
DEVICES = ("mobile", "desktop", "tablet")
COUNTRIES = ("DE", "FR", "GB", "US", "NL", "PL", "ES", "IT")
BAD_KINDS = ("not_json", "missing_field", "negative_price", "unknown_type", "orphan_click")


def query_concept(query: str) -> str | None:
    """The concept a query names: that of the longest phrase of :data:`CONCEPTS` in it."""
    words = query.lower().split()
    for n in range(min(len(words), _LONGEST_PHRASE), 0, -1):
        for i in range(len(words) - n + 1):
            concept = CONCEPT_OF.get(" ".join(words[i : i + n]))
            if concept is not None:
                return concept
    return None


@dataclass
class Item:
    item_id: str
    title: str
    category: str
    brand: str
    price: float
    quality: float
    launched_at_ms: int
    phrase: str | None = None  # word titles: the phrase of its concept that its title carries

    @property
    def words(self) -> list[str]:
        return self.title.split()

    @property
    def concept(self) -> str | None:
        return CONCEPT_OF[self.phrase] if self.phrase is not None else None


@dataclass(frozen=True)
class Query:
    """A search as typed, and (word titles) what it means: the truth's side of it."""

    text: str
    concept: str | None = None
    category: str | None = None
    brand: str | None = None

    @property
    def words(self) -> list[str]:
        return self.text.split()


@dataclass
class User:
    user_id: str
    likes: tuple[str, ...]
    price_sensitivity: float
    device: str
    country: str


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 7
    items: int = 1_500
    users: int = 3_000
    brands: int = 40
    list_size: int = 10
    launch_every_s: float = 4.0
    trend_period_s: float = 90.0
    novelty_s: float = 60.0
    bad_rate: float = 0.002
    # Poisoning: for poison_duration_s seconds from poison_start_s, every click decision is
    # inverted (shown items that would be clicked are not, and the others are).
    poison_start_s: float = 0.0
    poison_duration_s: float = 0.0
    titles: str = "words"  # "words" (English, synonym queries) or "tokens" (the first generator)

    def __post_init__(self) -> None:
        if self.titles not in TITLES:
            raise ValueError(f"expected SimulatorConfig.titles in {TITLES}, got {self.titles!r}")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class ShopSimulator:
    """Generates events of the freshrank contract for requests at given times."""

    def __init__(
        self, config: SimulatorConfig, start_ms: int, truth: dict[tuple[str, str], float] | None = None
    ) -> None:
        self.config = config
        # When given, the hidden click probability of every impression, by (request_id, item_id):
        # the benchmarks' oracle. It never travels with the events.
        self.truth = truth
        self.rng = random.Random(config.seed)
        self.start_ms = start_ms
        self.brands = [f"brand{b:02d}" for b in range(config.brands)]
        self.catalogue: list[Item] = []
        self.by_category: dict[str, list[Item]] = {}
        self.by_word: dict[str, list[Item]] = {}  # token titles: what a query word finds
        self.by_concept: dict[str, list[Item]] = {}  # word titles: what a query means
        for _ in range(config.items):
            self._add_item(start_ms, launch_boost=0.0)
        self.users = [
            User(
                f"u{n}",
                tuple(self.rng.sample(CATEGORIES, 2)),
                self.rng.uniform(0.0, 1.0),
                self.rng.choice(DEVICES),
                self.rng.choice(COUNTRIES),
            )
            for n in range(config.users)
        ]
        self._trend_phase = {c: self.rng.uniform(0, 2 * math.pi) for c in CATEGORIES}
        self._pending: list[tuple[int, int, dict[str, Any]]] = []  # (due_ms, seq, event) min-heap
        self._seq = 0
        self._requests = 0
        self._next_launch_ms = start_ms + int(config.launch_every_s * 1000)
        self.launched: list[str] = []

    # ------------------------------------------------------------ the hidden truth

    def _add_item(self, now_ms: int, launch_boost: float) -> Item:
        rng = self.rng
        category = rng.choice(CATEGORIES)
        brand = rng.choice(self.brands)
        phrase = None
        if self.config.titles == "tokens":
            words = [brand, category, rng.choice(ADJECTIVES)]
        else:
            phrase = rng.choice(rng.choice(CONCEPTS[category]))
            words = [brand, rng.choice(WORD_ADJECTIVES), phrase]
        if rng.random() < 0.5:
            words.append(rng.choice(MODELS))
        item = Item(
            item_id=f"i{len(self.catalogue)}",
            title=" ".join(words),
            category=category,
            brand=brand,
            price=round(math.exp(rng.gauss(3.5, 1.0)), 2),
            quality=rng.gauss(0.0, 1.0) + launch_boost,
            launched_at_ms=now_ms,
            phrase=phrase,
        )
        self.catalogue.append(item)
        self.by_category.setdefault(category, []).append(item)
        if item.concept is None:
            for w in set(item.words):
                self.by_word.setdefault(w, []).append(item)
        else:
            self.by_concept.setdefault(item.concept, []).append(item)
        return item

    def trend(self, category: str, now_ms: int) -> float:
        """A category's popularity swing: rises and fades with period ``trend_period_s``."""
        t = (now_ms - self.start_ms) / 1000.0
        return 1.2 * math.sin(2 * math.pi * t / self.config.trend_period_s + self._trend_phase[category])

    def relevance(self, query: Query, item: Item) -> float:
        """How much the item's match to the query lifts the click logit.

        Token titles: 1.5 times the share of query words in the title. Word titles: the
        meaning, 1.8 for the query's concept and 0.72 for only its category, plus 0.3 for the
        brand the query names.
        """
        if self.config.titles == "tokens":
            return 1.5 * (sum(w in item.words for w in query.words) / max(len(query.words), 1))
        meaning = 1.0 if item.concept == query.concept else 0.4 if item.category == query.category else 0.0
        return 1.8 * meaning + (0.3 if item.brand == query.brand else 0.0)

    def click_probability(self, user: User, query: Query, item: Item, position: int, now_ms: int) -> float:
        age_s = (now_ms - item.launched_at_ms) / 1000.0
        novelty = (
            1.5 * math.exp(-age_s / self.config.novelty_s) if item.launched_at_ms > self.start_ms else 0.0
        )
        logit = (
            -3.0
            + self.relevance(query, item)
            + (1.2 if item.category in user.likes else 0.0)
            + item.quality
            + self.trend(item.category, now_ms)
            + novelty
            - user.price_sensitivity * math.log1p(item.price) / 3.0
            - 0.12 * position
        )
        return _sigmoid(logit)

    # ------------------------------------------------------------ events

    def _event(
        self,
        etype: str,
        ts_ms: int,
        user: User,
        request_id: str,
        query: str,
        item: Item,
        position: int | None = None,
    ) -> dict[str, Any]:
        self._seq += 1
        event: dict[str, Any] = {
            "event_id": f"e{self.config.seed}-{self.start_ms}-{self._seq}",
            "type": etype,
            "ts": ts_ms,
            "user_id": user.user_id,
            "request_id": request_id,
            "query": query,
            "item_id": item.item_id,
            "item": {"category": item.category, "brand": item.brand, "price": item.price},
            "context": {"device": user.device, "country": user.country},
        }
        if position is not None:
            event["position"] = position
        return event

    def request(self, now_ms: int) -> list[dict[str, Any]]:
        """One search request at ``now_ms``: its impressions now; its actions are scheduled."""
        rng = self.rng
        while now_ms >= self._next_launch_ms:
            item = self._add_item(self._next_launch_ms, launch_boost=1.0)
            self.launched.append(item.item_id)
            self._next_launch_ms += int(self.config.launch_every_s * 1000)
        self._requests += 1
        user = rng.choice(self.users)
        # Users search for things they like more often than not; new items get searched for.
        if rng.random() < 0.6:
            category = rng.choice(user.likes)
            target = rng.choice(self.by_category[category])
        else:
            target = rng.choice(self.catalogue[-200:] if rng.random() < 0.3 else self.catalogue)
        if self.config.titles == "tokens":
            query = self._token_query(target)
            shown = self._token_list(query)
        else:
            query = self._word_query(target)
            shown = self._word_list(target)
        request_id = f"r{self.config.seed}-{self._requests}"
        events = []
        for position, item in enumerate(shown):
            events.append(self._event("impression", now_ms, user, request_id, query.text, item, position))
            p = self.click_probability(user, query, item, position, now_ms)
            if self.truth is not None:
                self.truth[(request_id, item.item_id)] = p
            clicked = rng.random() < p
            if self.poisoned(now_ms):
                clicked = not clicked
            if clicked:
                t = now_ms + int(rng.uniform(300, 4000))
                self._schedule(t, self._event("click", t, user, request_id, query.text, item))
                if rng.random() < 0.3:
                    t += int(rng.uniform(500, 5000))
                    self._schedule(t, self._event("add_to_cart", t, user, request_id, query.text, item))
                    if rng.random() < 0.4:
                        t += int(rng.uniform(500, 5000))
                        self._schedule(t, self._event("purchase", t, user, request_id, query.text, item))
        if rng.random() < self.config.bad_rate * len(events):
            events.append(self._bad_event(now_ms, user))
        return events

    def _token_query(self, target: Item) -> Query:
        """One or two of the target's title words after its brand, sometimes the brand first."""
        rng = self.rng
        words = target.words
        query_words = rng.sample(words[1:], k=min(len(words) - 1, rng.choice((1, 2))))
        if rng.random() < 0.3:
            query_words = [words[0], *query_words]
        return Query(" ".join(query_words))

    def _token_list(self, query: Query) -> list[Item]:
        """Items carrying a query word, then random ones (which may repeat) up to the list size."""
        k = self.config.list_size
        picked: dict[str, Item] = {}
        self._draw([self.by_word.get(w, []) for w in query.words], k, picked)
        shown = list(picked.values())
        if len(shown) < k:
            shown += self.rng.sample(self.catalogue, k - len(shown))
        return shown

    def _word_query(self, target: Item) -> Query:
        """The target's concept, mostly by another phrase than its title's; at times a brand
        or the title's adjective before it."""
        rng = self.rng
        assert target.phrase is not None  # every word title carries one
        concept = CONCEPT_OF[target.phrase]
        synonyms = [p for p in _PHRASES[concept] if f" {p} " not in f" {target.title} "]
        words = [rng.choice(synonyms) if rng.random() < 0.6 else target.phrase]
        if rng.random() < 0.1:
            words.insert(0, target.words[1])
        brand = target.brand if rng.random() < 0.1 else None
        if brand is not None:
            words.insert(0, brand)
        return Query(" ".join(words), concept, target.category, brand)

    def _word_list(self, target: Item) -> list[Item]:
        """Distinct items, shuffled: 40% of the target's concept, 30% of its category, the rest
        random (a small pool leaves its share to the next)."""
        k = self.config.list_size
        picked: dict[str, Item] = {}
        assert target.concept is not None
        self._draw([self.by_concept[target.concept]], 4 * k // 10, picked)
        self._draw([self.by_category[target.category]], 7 * k // 10 - len(picked), picked)
        self._draw([self.catalogue], k - len(picked), picked)
        shown = list(picked.values())
        self.rng.shuffle(shown)
        return shown

    def _draw(self, lists: list[list[Item]], k: int, picked: dict[str, Item]) -> None:
        """Add up to ``k`` distinct items from ``lists``, drawn at random, to ``picked``.

        Small pools are sampled whole; large ones by drawing from the lists, so a request
        costs the same with 1,500 items or 150,000.
        """
        if k <= 0:
            return
        rng = self.rng
        total = sum(len(x) for x in lists)
        if total <= 8 * k:
            pool = list({it.item_id: it for x in lists for it in x if it.item_id not in picked}.values())
            picked.update((it.item_id, it) for it in rng.sample(pool, min(len(pool), k)))
            return
        wanted = len(picked) + k
        for _ in range(8 * k):
            x = rng.choice(lists)
            if x:
                it = rng.choice(x)
                picked[it.item_id] = it
                if len(picked) == wanted:
                    break

    def poisoned(self, now_ms: int) -> bool:
        t = (now_ms - self.start_ms) / 1000.0
        c = self.config
        return c.poison_duration_s > 0 and c.poison_start_s <= t < c.poison_start_s + c.poison_duration_s

    def _bad_event(self, now_ms: int, user: User) -> dict[str, Any]:
        kind = self.rng.choice(BAD_KINDS)
        item = self.rng.choice(self.catalogue)
        event = self._event("click", now_ms, user, f"r{self.config.seed}-none-{self._seq}", "", item)
        if kind == "not_json":
            return {"__raw__": b"{not json"}
        if kind == "missing_field":
            del event["user_id"]
        elif kind == "negative_price":
            event["type"] = "impression"
            event["position"] = 0
            event["item"]["price"] = -1.0
        elif kind == "unknown_type":
            event["type"] = "wishlist"
        return event  # orphan_click: a click whose impression never came

    def _schedule(self, due_ms: int, event: dict[str, Any]) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (due_ms, self._seq, event))

    def due(self, now_ms: int) -> list[dict[str, Any]]:
        """Actions whose time has come."""
        out = []
        while self._pending and self._pending[0][0] <= now_ms:
            out.append(heapq.heappop(self._pending)[2])
        return out

    def catalogue_rows(self) -> list[dict[str, Any]]:
        # The title carries the phrase; the quality is the truth's own.
        return [
            {k: v for k, v in asdict(it).items() if k not in ("quality", "phrase")} for it in self.catalogue
        ]


def generate(
    config: SimulatorConfig,
    rate: float,
    duration_s: float,
    start_ms: int,
    step_ms: int = 20,
    truth: dict[tuple[str, str], float] | None = None,
    items: bool = False,
) -> Iterator[dict[str, Any]]:
    """The events ``produce`` would send, on a simulated clock: the same stream in no time.

    Benchmarks replay it to every model in the same order; it is deterministic for a seed.
    With ``truth``, the hidden click probability of each impression is recorded there. With
    ``items``, the updates ``produce`` sends on the items topic come in the same stream, as
    ``{"__item__": value, "ts": ts}`` (the catalogue first, each launch before the events
    that show it).
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"expected a positive rate and duration, got {rate!r} and {duration_s!r}")
    sim = ShopSimulator(config, start_ms, truth)
    emitted = 0
    announced = 0
    end_ms = start_ms + int(duration_s * 1000)
    for now_ms in range(start_ms, end_ms, step_ms):
        events = sim.due(now_ms)
        target = int(rate * (now_ms - start_ms) / 1000)
        while emitted + len(events) < target:
            events.extend(sim.request(now_ms))
        emitted += len(events)
        if items and announced < len(sim.catalogue):
            for item in sim.catalogue[announced:]:
                yield {"__item__": item_record(item, item.launched_at_ms)[1], "ts": item.launched_at_ms}
            announced = len(sim.catalogue)
        yield from events
    yield from sim.due(end_ms + 60_000)  # the actions of the last requests


def encode_event(event: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """Kafka key (the user id) and value for one event."""
    raw = event.get("__raw__")
    if isinstance(raw, bytes):
        return None, raw
    user = event.get("user_id")
    return (str(user).encode() if user is not None else None), orjson.dumps(event)


def item_record(item: Item, ts_ms: int) -> tuple[bytes, bytes]:
    """Kafka key (the item id) and value of ``item``'s update on the ``items`` topic."""
    body = {
        "item_id": item.item_id,
        "ts": ts_ms,
        "title": item.title,
        "category": item.category,
        "brand": item.brand,
        "price": item.price,
    }
    return item.item_id.encode(), orjson.dumps(body)


def write_events(events: Iterable[dict[str, Any]], path: Path) -> int:
    """Write events as JSON lines (the record values Kafka would carry), atomically; the count.

    What ``--warm-start`` reads: ``freshrank simulate --to-file`` and ``freshrank replay
    --to-file`` write history this way.
    """
    tmp = path.with_name(f"{path.name}.tmp")
    count = 0
    with open(tmp, "wb") as fh:
        for event in events:
            fh.write(encode_event(event)[1] + b"\n")
            count += 1
    tmp.replace(path)
    return count


def write_catalogue(sim: ShopSimulator, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"seed": sim.config.seed, "items": sim.catalogue_rows()}))
    tmp.replace(path)


@dataclass
class ProduceStats:
    events: int = 0
    requests: int = 0
    item_updates: int = 0
    started_at: float = 0.0


async def produce(
    bootstrap: str,
    topic: str,
    rate: float,
    duration_s: float,
    config: SimulatorConfig,
    stop: asyncio.Event | None = None,
    catalogue_path: Path | None = None,
    stats: ProduceStats | None = None,
    on_start: Callable[[ShopSimulator], None] | None = None,
    items_topic: str | None = None,
) -> ProduceStats:
    """Produce about ``rate`` events/s for ``duration_s`` seconds (0: until ``stop``); with
    ``items_topic``, the catalogue first and each launch as it happens go there."""
    from aiokafka import AIOKafkaProducer

    if rate <= 0:
        raise ValueError(f"expected a positive rate, got {rate!r}")
    stats = stats or ProduceStats()
    stop = stop or asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    try:
        await producer.start()
        start_ms = int(time.time() * 1000)
        sim = ShopSimulator(config, start_ms)  # 1.2 s for 150k items and users
        if on_start is not None:
            on_start(sim)
        # The stream's clock is the wall clock from start_ms on: the time the simulator took to
        # build counts as elapsed, so events are stamped when they are sent, not that much earlier.
        stats.started_at = time.monotonic() - (time.time() - start_ms / 1000)
        last_catalogue = 0.0
        announced = 0
        while not stop.is_set():
            elapsed = time.monotonic() - stats.started_at
            if duration_s and elapsed >= duration_s:
                break
            now_ms = start_ms + int(elapsed * 1000)
            events = sim.due(now_ms)
            target = int(rate * elapsed)
            while stats.events + len(events) < target:
                events.extend(sim.request(now_ms))
                stats.requests += 1
            if items_topic and announced < len(sim.catalogue):
                # Before any event that shows them: the catalogue, then each launch.
                updates = [item_record(item, item.launched_at_ms) for item in sim.catalogue[announced:]]
                announced = len(sim.catalogue)
                sent = [await producer.send(items_topic, value=v, key=k) for k, v in updates]
                await asyncio.gather(*sent)
                stats.item_updates += len(updates)
            futures = [await producer.send(topic, value=v, key=k) for k, v in map(encode_event, events)]
            if futures:
                await asyncio.gather(*futures)
            stats.events += len(events)
            if catalogue_path is not None and time.monotonic() - last_catalogue > 5.0:
                write_catalogue(sim, catalogue_path)
                last_catalogue = time.monotonic()
            await asyncio.sleep(0.02)
        if catalogue_path is not None:
            write_catalogue(sim, catalogue_path)
    finally:
        await producer.stop()
    return stats
