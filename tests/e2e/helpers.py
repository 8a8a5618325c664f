"""Helpers the end-to-end tests share: known traffic, a producer, polling, status files."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from freshrank.stack import EmbeddedStack

TOPIC = "events"
ITEMS_TOPIC = "items"

Record = tuple[bytes | None, bytes | None]


@dataclass
class Lane:
    """One test's isolated slice of the shared stack: its own topic, PostgreSQL database, state
    directory, consumer group and model name (one directory of the shared model repository, one
    model in the shared Triton)."""

    stack: EmbeddedStack
    topic: str
    items_topic: str
    pg_dsn: str
    state_dir: Path
    group: str
    model_name: str

    @property
    def bootstrap(self) -> str:
        return self.stack.addresses.bootstrap

    @property
    def triton_grpc(self) -> str:
        return self.stack.addresses.triton_grpc

    @property
    def triton_http(self) -> str:
        return self.stack.addresses.triton_http

    @property
    def repository(self) -> str:
        return self.stack.addresses.repository

    async def send(self, records: list[Record]) -> None:
        await send(self.bootstrap, records, self.topic)

    async def send_items(self, records: list[Record]) -> None:
        await send(self.bootstrap, records, self.items_topic)


async def wait_for(
    predicate: Callable[[], bool], limit_s: float, what: str, state: Callable[[], object] | None = None
) -> None:
    """Poll ``predicate`` every 0.2 s; past ``limit_s`` fail, with ``state()`` in the message."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            seen = f"; state: {state()}" if state is not None else ""
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}{seen}")
        await asyncio.sleep(0.2)


def updater_command(target: EmbeddedStack | Lane, state_dir: Path, *extra: str) -> list[str]:
    """``freshrank updater`` against a stack of its own or a lane, as a separate process
    (nothing held out)."""
    if isinstance(target, Lane):
        a = target.stack.addresses
        lane_args = ["--topic", target.topic, "--items-topic", target.items_topic, "--group", target.group]
        lane_args += ["--model-name", target.model_name]
        dsn = target.pg_dsn
    else:
        a = target.addresses
        lane_args = []
        dsn = a.pg_dsn
    return [
        sys.executable, "-m", "freshrank.cli", "updater",
        "--bootstrap", a.bootstrap, "--pg-dsn", dsn, "--model-repository", a.repository,
        "--triton-grpc", a.triton_grpc, "--state-dir", str(state_dir), "--holdout-every", "0",
        "--metrics-port", "0", *lane_args, *extra,
    ]  # fmt: skip


async def send(bootstrap: str, records: list[Record], topic: str = TOPIC) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        await producer.start()
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
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


def chunked_traffic(chunks: int, start_ms: int, prefix: str) -> tuple[list[list[Any]], int, Any]:
    """``chunks`` rounds of :func:`traffic` (400 requests each, 10 s of event time apart), the
    labelled samples they make, and a closer: an impression far past them, whose partition's
    watermark then closes every window (the others' once they are quiet)."""
    rounds, samples = [], 0
    for c in range(chunks):
        records, n = traffic(400, start_ms + c * 10_000, seed=c, prefix=f"{prefix}{c}-")
        rounds.append(records)
        samples += n
    return rounds, samples, event("impression", start_ms + 200_000, "u0", "closer", "x", "closer")


async def trickle(lane: Lane, records: list[Any], pause_s: float) -> None:
    """``records`` in ten sends ``pause_s`` apart: the stream goes on while a run works."""
    step = len(records) // 10 + 1
    for i in range(0, len(records), step):
        await lane.send(records[i : i + step])
        await asyncio.sleep(pause_s)


def shop(requests: int, start_ms: int, seed: int, prefix: str, flipped: bool) -> list[Any]:
    """Requests showing "hot" (clicked), "cold" (not) and fillers; ``flipped`` swaps the labels (poison)."""
    rng = random.Random(seed)
    records: list[Any] = []
    for r in range(requests):
        ts = start_ms + r * 10
        user, request = f"u{rng.randint(0, 40)}", f"{prefix}r{r}"
        shown = list(dict.fromkeys(["hot", "cold", *(f"f{rng.randint(0, 30)}" for _ in range(3))]))
        for pos, item in enumerate(shown):
            records.append(
                event("impression", ts, user, request, item, f"{prefix}{r}-{item}-i", position=pos)
            )
            clicked = (item == "hot") != flipped if item in ("hot", "cold") else rng.random() < 0.2
            if clicked:
                records.append(event("click", ts + 5, user, request, item, f"{prefix}{r}-{item}-c"))
    return records


class ShopTraffic:
    """:func:`shop` requests sent to ``lane`` in phases, 60 a round every 0.3 s, each round one
    second of event time after the last."""

    def __init__(self, lane: Lane, start_ms: int) -> None:
        self.lane = lane
        self.t = start_ms
        self.chunk = 0

    async def phase(self, seconds: float, flipped: bool, until: asyncio.Event | None = None) -> None:
        """Rounds for ``seconds``, or until ``until`` is set. (Set it rather than cancel the task:
        a producer cancelled while it starts leaves its connection open.)"""
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end and not (until is not None and until.is_set()):
            await self.lane.send(shop(60, self.t, self.chunk, f"p{self.chunk}-", flipped))
            self.t += 1_000
            self.chunk += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await (until or asyncio.Event()).wait()
