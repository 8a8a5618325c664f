"""The ledger: which Kafka records the model state has consumed, per partition.

It is saved in every checkpoint and in every registry row, so that anyone can trace which
records a model state (or a published version) learned from, and compare its record count
with the stream's. A record at an offset below ``next`` was already consumed by this state
(a redelivery after a rebalance or restart) and must not be processed again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PartitionRange:
    first: int
    next: int
    records: int = 0
    gaps: int = 0  # offsets skipped by the broker (compaction, transaction markers)


class Ledger:
    """Offset ranges consumed per ``topic:partition``."""

    def __init__(self) -> None:
        self.ranges: dict[str, PartitionRange] = {}
        self.redelivered = 0

    def accept(self, key: str, offset: int) -> bool:
        """Record ``offset``; False when this state already consumed it."""
        entry = self.ranges.get(key)
        if entry is None:
            self.ranges[key] = PartitionRange(first=offset, next=offset + 1, records=1)
            return True
        if offset < entry.next:
            self.redelivered += 1
            return False
        if offset > entry.next:
            entry.gaps += offset - entry.next
        entry.next = offset + 1
        entry.records += 1
        return True

    def positions(self) -> dict[str, int]:
        """Next offset to read per partition: what a checkpoint resumes from."""
        return {k: r.next for k, r in self.ranges.items()}

    def total_records(self) -> int:
        return sum(r.records for r in self.ranges.values())

    def state(self) -> dict[str, object]:
        return {"ranges": {k: asdict(r) for k, r in self.ranges.items()}, "redelivered": self.redelivered}

    def restore(self, state: dict[str, object]) -> None:
        self.ranges = {k: PartitionRange(**r) for k, r in state["ranges"].items()}  # type: ignore[attr-defined]
        self.redelivered = int(state["redelivered"])  # type: ignore[call-overload]
