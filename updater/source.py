"""The Kafka source: a consumer group member with offsets handled by hand.

Offsets are never auto-committed. The updater's checkpoint is the source of truth: on
assignment the consumer seeks to the checkpointed position, and offsets are committed to
Kafka only after the checkpoint that covers them is on disk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "events"
DEFAULT_GROUP = "freshrank-updater"


def offset_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def parse_offset_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition(":")
    return TopicPartition(topic, int(partition))


async def ensure_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create ``topic`` unless it exists (for the embedded stack; production provisions topics)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


class _SeekToCheckpoint(ConsumerRebalanceListener):
    def __init__(self, source: EventSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: object) -> None:
        log.info("partitions revoked: %s", sorted(map(str, revoked)))  # type: ignore[call-overload]

    async def on_partitions_assigned(self, assigned: object) -> None:
        consumer = self.source.consumer
        for tp in assigned:  # type: ignore[attr-defined]
            offset = self.source.resume_offsets.get(offset_key(tp))
            if offset is not None:
                consumer.seek(tp, offset)
        log.info("partitions assigned: %s", sorted(map(str, assigned)))  # type: ignore[call-overload]


class EventSource:
    """``async with EventSource(...)``: fetch batches of records, commit what is durable."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        group: str = DEFAULT_GROUP,
        resume_offsets: Mapping[str, int] | None = None,
        max_partition_fetch_bytes: int = 1 << 20,
    ) -> None:
        self.topic = topic
        self.resume_offsets = dict(resume_offsets or {})
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=8 << 20,
            # A crashed member's partitions move on after 6 s instead of Kafka's default 45 s.
            session_timeout_ms=6_000,
            heartbeat_interval_ms=2_000,
        )
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        await self.consumer.start()
        self._started = True
        self.consumer.subscribe([self.topic], listener=_SeekToCheckpoint(self))

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.consumer.stop()

    async def __aenter__(self) -> EventSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def fetch(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    async def commit(self, offsets: Mapping[str, int]) -> None:
        """Commit ``offsets`` (next offset to read, per ``topic:partition``) for assigned partitions."""
        assigned = self.consumer.assignment()
        todo = {
            tp: OffsetAndMetadata(off, "")
            for tp, off in ((parse_offset_key(k), v) for k, v in offsets.items())
            if tp in assigned
        }
        if todo:
            await self.consumer.commit(todo)

    def lag(self, positions: Mapping[str, int]) -> int | None:
        """Records on the broker not yet consumed, from the last fetch's high watermarks."""
        total = 0
        known = False
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            known = True
            pos = positions.get(offset_key(tp), self.resume_offsets.get(offset_key(tp), 0))
            total += max(0, high - pos)
        return total if known else None
