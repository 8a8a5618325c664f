"""The Kafka source: a consumer group member with offsets handled by hand.

Offsets are never auto-committed. The updater's checkpoint is the source of truth: on
assignment the consumer seeks to the checkpointed position, and offsets are committed to
Kafka only after the checkpoint that covers them is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from rankcore.errors import DependencyError

log = logging.getLogger(__name__)

DEFAULT_COMMIT_TIMEOUT_S = 10.0
# A crashed member's partitions move on after 6 s instead of Kafka's default 45 s.
DEFAULT_SESSION_TIMEOUT_S = 6.0


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


class _SeekToState(ConsumerRebalanceListener):
    """On every assignment, seek to where the updater's state says it is.

    At start that is the checkpoint; after a rebalance mid-run (a broker that was paused
    and evicted us, say) it is the in-memory ledger, which covers everything consumed.
    """

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: object) -> None:
        log.info("partitions revoked: %s", sorted(map(str, revoked)))  # type: ignore[call-overload]

    async def on_partitions_assigned(self, assigned: object) -> None:
        consumer = self.source.consumer
        positions = self.source.positions()
        for tp in assigned:  # type: ignore[attr-defined]
            offset = positions.get(offset_key(tp))
            self.source._fetched.pop(offset_key(tp), None)
            if offset is not None:
                consumer.seek(tp, offset)
        log.info("partitions assigned: %s", sorted(map(str, assigned)))  # type: ignore[call-overload]


class KafkaSource:
    """``async with KafkaSource(...)``: fetch batches of records, commit what is durable.

    ``positions`` returns the next offset to read per ``topic:partition`` as the caller's
    state knows it; the source seeks there whenever partitions are assigned. Broker failures
    raise :class:`DependencyError` (retrying may help).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group: str,
        positions: Callable[[], Mapping[str, int]] = dict,
        max_partition_fetch_bytes: int = 4 << 20,
        commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        share: tuple[int, int] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("expected at least one topic to consume")
        self.topics = tuple(topics)
        # A training group's rank (rank, world size): partitions are assigned by hand, p of the
        # first topic when p mod world size = rank, and every partition of the others (the
        # catalogue every rank joins with), committed by rank 0 alone.
        self.share = share
        self.bootstrap = bootstrap
        self.commit_timeout_s = commit_timeout_s
        self.positions = positions
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=16 << 20,
            session_timeout_ms=round(session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, round(session_timeout_s * 1000 / 3)),
        )
        self._started = False
        self.paused = False
        self._fetched: dict[str, int] = {}  # topic:partition -> the offset after the last fetched

    async def start(self) -> None:
        if self._started:
            return
        try:
            await self.consumer.start()
        except KafkaError as exc:
            raise DependencyError(f"Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}") from exc
        self._started = True
        if self.share is None:
            self.consumer.subscribe(list(self.topics), listener=_SeekToState(self))
            return
        rank, world = self.share
        try:
            await self.consumer.topics()  # the partitions' metadata
        except KafkaError as exc:
            raise DependencyError(f"Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}") from exc
        assigned = []
        for k, topic in enumerate(self.topics):
            partitions = sorted(self.consumer.partitions_for_topic(topic) or ())
            if not partitions and not k:
                raise DependencyError(f"Kafka topic {topic!r} has no partitions (does it exist?)")
            if not partitions:
                log.warning("Kafka topic %r does not exist: none of it is read until a restart", topic)
            assigned += [TopicPartition(topic, p) for p in partitions if k or p % world == rank]
        self.consumer.assign(assigned)
        positions = self.positions()
        for tp in assigned:
            offset = positions.get(offset_key(tp))
            if offset is not None:
                self.consumer.seek(tp, offset)
        log.info("partitions assigned to rank %d of %d: %s", rank, world, sorted(map(str, assigned)))

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.consumer.stop()

    async def __aenter__(self) -> KafkaSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def fetch(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        try:
            batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            topics = ", ".join(self.topics)
            raise DependencyError(f"Kafka fetch from {topics}: {type(exc).__name__}: {exc}") from exc
        for tp, records in batches.items():
            if records:
                self._fetched[offset_key(tp)] = records[-1].offset + 1
        return [record for records in batches.values() for record in records]

    def behind(self) -> frozenset[str] | None:
        """The assigned ``topic:partition`` keys with records on the broker past the last one
        fetched (from the last fetch's high watermarks): partitions whose turn has not come.
        None while that is not known: no partitions assigned (the group is joining after a
        start or a rebalance) or one not fetched from since its assignment."""
        assigned = self.consumer.assignment()
        if not assigned:
            return None
        positions = self.positions()
        out = set()
        for tp in assigned:
            high, key = self.consumer.highwater(tp), offset_key(tp)
            if high is None:
                return None
            if high > self._fetched.get(key, positions.get(key, 0)):
                out.add(key)
        return frozenset(out)

    def pause(self) -> None:
        """Stop fetching (backpressure). aiokafka drops what it had buffered for the paused
        partitions and fetches it again after :meth:`resume`; positions do not move."""
        if not self.paused:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.consumer.resume(*self.consumer.assignment())
            self.paused = False

    async def commit(self, offsets: Mapping[str, int]) -> None:
        """Commit ``offsets`` for assigned partitions; :class:`DependencyError` when the broker refused.

        A failed commit loses nothing: the checkpoint holds the offsets, the next checkpoint
        commits again, and a restart seeks to the checkpoint, not to the committed offsets.
        """
        assigned = self.consumer.assignment()
        if self.share is not None and self.share[0] != 0:
            assigned = {tp for tp in assigned if tp.topic == self.topics[0]}  # rank 0 commits the rest
        todo = {
            tp: OffsetAndMetadata(off, "")
            for tp, off in ((parse_offset_key(k), v) for k, v in offsets.items())
            if tp in assigned
        }
        if not todo:
            return
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                await self.consumer.commit(todo)
        except (KafkaError, TimeoutError) as exc:
            raise DependencyError(f"Kafka offset commit: {type(exc).__name__}: {exc}") from exc

    def lags(self) -> dict[str, int]:
        """Records on the broker not yet consumed, by ``topic:partition``, from the last fetch's
        high watermarks (a partition not fetched from since its assignment is left out)."""
        positions = self.positions()
        out = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                out[offset_key(tp)] = max(0, high - positions.get(offset_key(tp), 0))
        return out

    def lag(self) -> int | None:
        """The sum of :meth:`lags`; None while no partition's is known."""
        lags = self.lags()
        return sum(lags.values()) if lags else None
