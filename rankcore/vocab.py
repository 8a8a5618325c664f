"""Per-feature id vocabularies that grow as new ids appear, up to a fixed capacity.

Row 0 is padding and the empty string (its embedding is never trained); row 1 is shared by
every id that arrives after the vocabulary is full, and by ids never seen at serving time.
The exporter writes the same mapping into the ONNX graph, so weights and ids always agree.
"""

from __future__ import annotations

PAD = 0
OOV = 1
RESERVED = 2


class Vocab:
    """Maps raw string ids to embedding rows ``2 .. capacity-1``."""

    def __init__(self, name: str, capacity: int) -> None:
        if capacity <= RESERVED:
            raise ValueError(f"expected vocabulary capacity > {RESERVED} for {name!r}, got {capacity!r}")
        self.name = name
        self.capacity = capacity
        self._index: dict[str, int] = {}
        self._keys: list[str] = []
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def full(self) -> bool:
        return len(self._keys) + RESERVED >= self.capacity

    def add(self, key: str) -> int:
        """Row for ``key``, assigning the next free row to a new key while there is room."""
        if not key:
            return PAD
        row = self._index.get(key)
        if row is not None:
            return row
        if self.full:
            self.overflow += 1
            return OOV
        row = len(self._keys) + RESERVED
        self._index[key] = row
        self._keys.append(key)
        return row

    def get(self, key: str) -> int:
        """Row for ``key`` without growing the vocabulary."""
        if not key:
            return PAD
        return self._index.get(key, OOV)

    def keys(self) -> list[str]:
        """Keys in row order: ``keys()[i]`` owns row ``i + RESERVED``."""
        return list(self._keys)

    def copy(self) -> Vocab:
        """An independent snapshot (cheap: the dict and list are copied, not rebuilt)."""
        other = Vocab(self.name, self.capacity)
        other._index = dict(self._index)
        other._keys = list(self._keys)
        other.overflow = self.overflow
        return other

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "capacity": self.capacity,
            "keys": list(self._keys),
            "overflow": self.overflow,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> Vocab:
        vocab = cls(str(state["name"]), int(state["capacity"]))  # type: ignore[call-overload]
        for key in state["keys"]:  # type: ignore[attr-defined]
            vocab.add(key)
        vocab.overflow = int(state["overflow"])  # type: ignore[call-overload]
        return vocab
