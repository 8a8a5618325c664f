"""Per-feature id vocabularies that grow as new ids appear, up to a fixed capacity.

Row 0 is padding and the empty string (its embedding is never trained); row 1 is shared by ids
never seen at serving time, and by new ids while the vocabulary is full. Once full, a new id
takes over the row of the id seen least recently if that id has been idle for the expiry
(Monolith's expire time, in TorchRec's managed-collision LRU order), so a shop that has seen
more users or items than there are rows keeps learning its new ones instead of folding them
all into one shared row. The rows new ids took over are handed to the trainer
(:meth:`Vocab.take_recycled`), which resets their weights and optimiser state before it learns
the batch that uses them. The exporter writes the same mapping into the ONNX graph, so weights
and ids always agree.
"""

from __future__ import annotations

from collections import OrderedDict

PAD = 0
OOV = 1
RESERVED = 2


class Vocab:
    """Maps raw string ids to embedding rows ``2 .. capacity-1``.

    Full, a new id takes the row of the least recently seen id if that one has not been seen
    for ``expire_ms`` (of the timestamps passed to :meth:`add`); otherwise, or with
    ``expire_ms=None``, the new id shares ``OOV`` for now. An id only a few seconds idle is not
    evicted: when more ids are active than there are rows, plain LRU would hand every row to a
    new id before its old one comes back, and nothing would be learned at all.
    """

    def __init__(self, name: str, capacity: int, expire_ms: int | None = None) -> None:
        if capacity <= RESERVED:
            raise ValueError(f"expected vocabulary capacity > {RESERVED} for {name!r}, got {capacity!r}")
        if expire_ms is not None and expire_ms < 0:
            raise ValueError(f"expected an expiry >= 0 ms or None for {name!r}, got {expire_ms!r}")
        self.name = name
        self.capacity = capacity
        self.expire_ms = expire_ms
        self._index: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._last_ms: dict[int, int] = {}  # row -> when its id was last seen
        self._keys: list[str] = []
        self._recycled: list[int] = []
        # With tracking on, each key's latest assignment since the last take_changes(): a new
        # id's row, or OOV for an id that gave its row up (what serving's copy of the mapping
        # must learn between snapshots). A dict: bounded by the keys, however long no one takes it.
        self.tracking = False
        self._changes: dict[str, int] = {}
        self.overflow = 0  # new ids that got OOV (full, nothing expired)
        self.evictions = 0  # ids that gave up their row to a new one

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def full(self) -> bool:
        return len(self._keys) + RESERVED >= self.capacity

    def add(self, key: str, now_ms: int = 0) -> int:
        """Row for ``key``, seen at ``now_ms``: a new key gets the next free row or, when full,
        the row of the least recently seen key if it has expired."""
        if not key:
            return PAD
        index = self._index
        row = index.get(key)
        if row is not None:
            index.move_to_end(key)
            if now_ms > self._last_ms[row]:
                self._last_ms[row] = now_ms
            return row
        if not self.full:
            row = len(self._keys) + RESERVED
            self._keys.append(key)
        else:
            oldest = next(iter(index.values()))
            if self.expire_ms is None or now_ms - self._last_ms[oldest] < self.expire_ms:
                self.overflow += 1
                return OOV
            old, row = index.popitem(last=False)
            if self.tracking:
                self._changes[old] = OOV
            self._keys[row - RESERVED] = key
            self._recycled.append(row)
            self.evictions += 1
        index[key] = row
        self._last_ms[row] = now_ms
        if self.tracking:
            self._changes[key] = row
        return row

    def get(self, key: str) -> int:
        """Row for ``key`` without growing the vocabulary or counting it as seen."""
        if not key:
            return PAD
        return self._index.get(key, OOV)

    def take_recycled(self) -> list[int]:
        """Rows that changed owner since the last call (their weights belong to the old id)."""
        out, self._recycled = self._recycled, []
        return out

    def take_changes(self) -> list[tuple[str, int]]:
        """Each key's latest assignment since the last call (OOV: the key lost its row)."""
        out, self._changes = list(self._changes.items()), {}
        return out

    def keys(self) -> list[str]:
        """Keys in row order: ``keys()[i]`` owns row ``i + RESERVED``."""
        return list(self._keys)

    def copy(self) -> Vocab:
        """An independent snapshot (cheap: the dict and list are copied, not rebuilt)."""
        other = Vocab(self.name, self.capacity, self.expire_ms)
        other._index = self._index.copy()
        other._last_ms = dict(self._last_ms)
        other._keys = list(self._keys)
        other.overflow = self.overflow
        other.evictions = self.evictions
        return other

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "capacity": self.capacity,
            "expire_ms": self.expire_ms,
            "keys": list(self._keys),
            "recency": list(self._index.values()),  # rows, least recently seen first
            "last_ms": [self._last_ms[row] for row in self._index.values()],
            "overflow": self.overflow,
            "evictions": self.evictions,
        }

    @classmethod
    def from_state(cls, state: dict[str, object], expire_ms: int | None = None) -> Vocab:
        """The vocabulary ``state`` holds, expiring after ``expire_ms`` from now on."""
        vocab = cls(str(state["name"]), int(state["capacity"]), expire_ms)  # type: ignore[call-overload]
        keys: list[str] = list(state["keys"])  # type: ignore[call-overload]
        vocab._keys = keys
        # Checkpoints before expiry kept no recency: row order is the order ids arrived in.
        rows: list[int] = list(state.get("recency") or range(RESERVED, len(keys) + RESERVED))  # type: ignore[call-overload]
        last: list[int] = list(state.get("last_ms") or [0] * len(rows))  # type: ignore[call-overload]
        vocab._index = OrderedDict((keys[row - RESERVED], row) for row in rows)
        vocab._last_ms = dict(zip(rows, last, strict=True))
        vocab.overflow = int(state["overflow"])  # type: ignore[call-overload]
        vocab.evictions = int(state.get("evictions", 0))  # type: ignore[call-overload]
        return vocab
