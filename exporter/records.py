"""What the release side writes to the registry: typed operations, and the sink that takes them.

The release manager never talks to PostgreSQL itself. It hands each operation to a
:class:`RegistrySink`: in the updater that is the fsynced outbox (applied by the registry
flusher, in order, when PostgreSQL is reachable), in the CLI a list applied at the end.
Every operation is idempotent, so applying one twice after a crash does no harm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

SERVING_MODES = ("latest", "rolled_back", "pinned")


@dataclass(frozen=True)
class Serving:
    """What the server should serve: the newest version, or one held by a rollback or a pin."""

    mode: str = "latest"  # latest | rolled_back | pinned
    version: int | None = None
    reason: str | None = None
    # With a held version: the deltas up to this one applied on it (None: the version as cut).
    delta: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in SERVING_MODES:
            raise ValueError(f"expected serving mode in {SERVING_MODES}, got {self.mode!r}")
        if (self.mode == "latest") != (self.version is None):
            raise ValueError(
                f"expected a version exactly when holding one, got {self.mode!r} {self.version!r}"
            )
        if self.delta is not None and (self.version is None or self.delta < 0):
            raise ValueError(f"expected a delta only with a held version, got {self.delta!r}")

    @property
    def held(self) -> int | None:
        return self.version if self.mode != "latest" else None


@dataclass(frozen=True)
class AddVersion:
    """A candidate was judged: ``published`` (a version directory exists) or ``rejected``."""

    KIND: ClassVar[str] = "add_version"
    version: int
    status: str
    offsets: dict[str, int]
    samples_seen: int
    metrics: dict[str, Any]
    path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class MarkLive:
    """``version`` is what the server answers with now; the previous live one is retired."""

    KIND: ClassVar[str] = "mark_live"
    version: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetStatus:
    KIND: ClassVar[str] = "set_status"
    version: int
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class SetServing:
    """A serving decision. The operator's (the CLI's) always applies. The updater's own
    (a rollback, a candidate that ends one) carries the decision it replaces in ``over_mode`` /
    ``over_version`` and applies only while the registry still holds that one: a pin made in
    the meantime is never overwritten by an older automatic decision."""

    KIND: ClassVar[str] = "set_serving"
    mode: str
    version: int | None
    reason: str | None
    delta: int | None = None
    over_mode: str | None = None  # None: unconditional
    over_version: int | None = None

    @classmethod
    def of(cls, serving: Serving, over: Serving | None = None) -> SetServing:
        if over is None:
            return cls(serving.mode, serving.version, serving.reason, serving.delta)
        return cls(serving.mode, serving.version, serving.reason, serving.delta, over.mode, over.version)


@dataclass(frozen=True)
class AddDelta:
    """Delta ``seq`` is in the log: what it learned up to (consumer positions) and its size."""

    KIND: ClassVar[str] = "add_delta"
    seq: int
    offsets: dict[str, int]
    samples_seen: int
    rows: int
    keys: int
    size_bytes: int
    created_ms: int


RegistryOp = AddVersion | MarkLive | SetStatus | SetServing | AddDelta
_KINDS: dict[str, type[RegistryOp]] = {
    c.KIND: c for c in (AddVersion, MarkLive, SetStatus, SetServing, AddDelta)
}


def to_dict(op: RegistryOp) -> dict[str, Any]:
    """The JSON-ready form the outbox stores."""
    return {"op": op.KIND, **asdict(op)}


def from_dict(data: dict[str, Any]) -> RegistryOp:
    """The typed operation of :func:`to_dict`'s output; ValueError for anything else."""
    kind = data.get("op")
    cls = _KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"expected a registry operation ({', '.join(_KINDS)}), got {kind!r}")
    return cls(**{k: v for k, v in data.items() if k != "op"})


class RegistrySink(Protocol):
    """Takes registry operations durably (or at least in order); never blocks on PostgreSQL."""

    def record(self, op: RegistryOp) -> None: ...


class ListSink:
    """Collects operations in memory, for a caller that applies them itself (the CLI)."""

    def __init__(self) -> None:
        self.ops: list[RegistryOp] = []

    def record(self, op: RegistryOp) -> None:
        self.ops.append(op)
