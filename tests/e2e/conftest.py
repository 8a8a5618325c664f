"""End-to-end fixtures: a real broker, PostgreSQL and Triton per test, on free ports."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from freshrank.stack import EmbeddedStack, free_port
from rankcore.model import RankerConfig
from updater.settings import UpdaterSettings
from updater.source import ensure_topic

pytestmark = pytest.mark.e2e

TOPIC = "events"
SMALL_MODEL = RankerConfig(
    user_capacity=2_000,
    token_capacity=500,
    item_capacity=2_000,
    category_capacity=50,
    brand_capacity=50,
    dim=8,
    hidden=16,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(tmp_path / "stack", free_port(), free_port(), free_port()) as s:
        await ensure_topic(s.addresses.bootstrap, TOPIC, partitions=3)
        yield s


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., UpdaterSettings]:
    def make(stack: EmbeddedStack, **overrides: Any) -> UpdaterSettings:
        a = stack.addresses
        values: dict[str, Any] = dict(
            bootstrap=a.bootstrap,
            pg_dsn=a.pg_dsn,
            repository=Path(a.repository),
            state_dir=tmp_path / "updater",
            triton_grpc=a.triton_grpc,
            topic=TOPIC,
            batch_size=64,
            max_wait_s=0.2,
            publish_interval_s=0.5,
            checkpoint_interval_s=1.0,
            window_ms=2_000,
            model=SMALL_MODEL,
            holdout_every=0,  # exact sample counts: nothing held out unless a test asks
        )
        values.update(overrides)
        return UpdaterSettings(**values)

    return make


def read_status(path: Path) -> dict[str, object]:
    """An updater's status file, or {} while there is none (or it is being replaced)."""
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def updater_command(stack: EmbeddedStack, state_dir: Path, *extra: str) -> list[str]:
    """``freshrank updater`` against ``stack``, as a separate process (nothing held out)."""
    a = stack.addresses
    return [
        sys.executable, "-m", "freshrank.cli", "updater",
        "--bootstrap", a.bootstrap, "--pg-dsn", a.pg_dsn, "--model-repository", a.repository,
        "--triton-grpc", a.triton_grpc, "--state-dir", str(state_dir), "--holdout-every", "0",
        *extra,
    ]  # fmt: skip


async def send(bootstrap: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, key=k, value=v) for k, v in records]
        for f in futures:
            await f
    finally:
        await producer.stop()


def event(
    etype: str,
    ts: int,
    user: str,
    request: str,
    item: str,
    eid: str,
    query: str = "red shoes",
    position: int = 0,
    category: str = "shoes",
) -> tuple[bytes, bytes]:
    body: dict[str, Any] = {
        "event_id": eid,
        "type": etype,
        "ts": ts,
        "user_id": user,
        "request_id": request,
        "query": query,
        "item_id": item,
        "item": {"category": category, "brand": "acme", "price": 49.0},
    }
    if etype == "impression":
        body["position"] = position
    return user.encode(), orjson.dumps(body)


def now_ms() -> int:
    return int(time.time() * 1000)


def traffic(requests: int, start_ms: int, seed: int = 0, prefix: str = "a") -> tuple[list[Any], int]:
    """Each request shows "hot" (always clicked), "cold" (never) and three fillers (sometimes).

    Returns the records and the number of labelled samples they make.
    """
    rng = random.Random(seed)
    records: list[Any] = []
    samples = 0
    for r in range(requests):
        ts = start_ms + r * 20
        user, request = f"u{rng.randint(0, 40)}", f"{prefix}r{r}"
        shown = ["hot", "cold", *(f"f{rng.randint(0, 30)}" for _ in range(3))]
        shown = list(dict.fromkeys(shown))
        rng.shuffle(shown)
        for pos, item in enumerate(shown):
            records.append(
                event("impression", ts, user, request, item, f"{prefix}{r}-{item}-imp", position=pos)
            )
            samples += 1
            if item == "hot" or (item.startswith("f") and rng.random() < 0.2):
                records.append(event("click", ts + 5, user, request, item, f"{prefix}{r}-{item}-clk"))
    return records, samples
