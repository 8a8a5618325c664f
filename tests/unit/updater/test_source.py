"""Which partitions still have records on the broker, from the consumer's high watermarks."""

from __future__ import annotations

from aiokafka import TopicPartition

from updater.source import KafkaSource

P0, P1 = TopicPartition("events", 0), TopicPartition("events", 1)


async def behind(
    highwater: dict[TopicPartition, int | None], positions: dict[str, int]
) -> frozenset[str] | None:
    """``KafkaSource.behind()`` with a consumer (never started) that reports ``highwater``."""
    source = KafkaSource("127.0.0.1:9", ["events"], "g", positions=lambda: positions)
    consumer = source.consumer
    consumer.assignment = lambda: set(highwater)  # type: ignore[method-assign]
    consumer.highwater = highwater.__getitem__  # type: ignore[method-assign,assignment]
    try:
        return source.behind()
    finally:
        await consumer.stop()


async def test_partitions_with_records_past_the_position_are_behind() -> None:
    assert await behind({P0: 10, P1: 7}, {"events:0": 10, "events:1": 3}) == {"events:1"}


async def test_not_known_while_joining_or_before_a_partitions_first_fetch() -> None:
    assert await behind({}, {}) is None
    assert await behind({P0: 10, P1: None}, {"events:0": 10}) is None
