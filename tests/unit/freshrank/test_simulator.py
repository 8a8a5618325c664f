from __future__ import annotations

from freshrank.simulator import ShopSimulator, SimulatorConfig, encode_event, generate, item_record
from rankcore.events import Event, parse_event
from rankcore.items import ItemUpdate, parse_item

START = 1_800_000_000_000


def run(sim: ShopSimulator, seconds: int, per_s: int = 20) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for k in range(seconds * per_s):
        now = START + k * 1000 // per_s
        out += sim.due(now) + sim.request(now)
    return out


def test_same_seed_same_events() -> None:
    a = run(ShopSimulator(SimulatorConfig(seed=3), START), 5)
    b = run(ShopSimulator(SimulatorConfig(seed=3), START), 5)
    c = run(ShopSimulator(SimulatorConfig(seed=4), START), 5)
    assert a == b
    assert a != c


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
