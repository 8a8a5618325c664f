"""Warm start: learn a historical log before the updater goes live.

A shop that turns freshrank on has history. ``--warm-start FILE`` (JSON lines, one event of the
contract per line: what ``freshrank replay --to-file`` and ``freshrank simulate --to-file``
write, or an export of the shop's own logs) is read, cleaned and joined by the updater's own
consumer path, each event judged at its own timestamp, and learned in the updater's batches
before the first Kafka fetch. It runs only when the state directory holds no checkpoint, so a
restart never learns the file twice; the first version the updater publishes carries the
model it produced, and its registry row says so (``metrics.warm_start``).

The file's offsets are not Kafka offsets: a separate :class:`updater.ingest.Ingest` reads it,
and the live one starts empty. Lines that are not valid events are counted by reason and
reported, as the live path counts its dead letters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from rankcore.errors import ConfigError
from rankcore.features import Vocabularies, encode
from rankcore.sample import Sample
from updater.batcher import Batcher
from updater.ingest import Ingest, Record
from updater.learner import Learner

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000
READ_EVERY = 1_000  # lines between two calls of on_read


class ReadMeter(Protocol):
    """Told how much of the file was read (a progress bar's ``advance``), closed at the end."""

    def advance(self, n: float) -> None: ...
    def close(self) -> None: ...


# Given the file's size in bytes, a meter for it (``freshrank updater`` draws a bar on a terminal).
WarmProgress = Callable[[int], ReadMeter]


@dataclass
class WarmStart:
    """What a warm start learned."""

    source: str
    events: int = 0
    samples_trained: int = 0
    held_out: list[Sample] = field(default_factory=list)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "events": self.events,
            "samples_trained": self.samples_trained,
            "held_out": len(self.held_out),
            "dead_letters_by_reason": dict(self.dead_letters_by_reason),
            "seconds": round(self.seconds, 1),
        }


def read_lines(path: Path) -> Iterable[bytes]:
    """The lines of ``path`` (blank ones skipped); a clear error when it cannot be read."""
    if not path.is_file():
        raise ConfigError(f"expected --warm-start to name a file of JSON-lines events, got {str(path)!r}")
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip(b"\r\n")


def learn_history(
    lines: Iterable[bytes],
    learner: Learner,
    vocabs: Vocabularies,
    *,
    source: str,
    batch_size: int,
    window_ms: int,
    holdout_every: int,
    progress: Callable[[str], None] = log.info,
    on_read: Callable[[int], None] | None = None,
) -> WarmStart:
    """Clean, join and learn ``lines`` (raw event values) in order; see the module docstring.

    Each event is judged at its own ``ts`` (a line without a usable one, at the last good
    time), so the join closes its windows as it would have live; the open windows are
    drained at the end. ``on_read`` gets the bytes read (with their line ends) every
    :data:`READ_EVERY` lines and at the end.
    """
    started = time.perf_counter()
    ingest = Ingest(window_ms=window_ms, holdout_every=holdout_every)
    batcher = Batcher(batch_size)
    out = WarmStart(source)
    now_ms = 0
    unread = 0

    def learn(samples: list[Sample]) -> None:
        for batch in batcher.add(samples, 0.0):
            learner.learn(encode(batch, vocabs, learner.config.max_tokens))

    for offset, value in enumerate(lines):
        now_ms = max(now_ms, _timestamp(value))
        ingested = ingest.process([Record("warm-start", 0, offset, None, value)], now_ms)
        out.held_out.extend(ingested.held_out)
        learn(ingested.trained)
        out.events = offset + 1
        unread += len(value) + 1
        if on_read is not None and out.events % READ_EVERY == 0:
            on_read(unread)
            unread = 0
        if out.events % PROGRESS_EVERY == 0:
            progress(f"warm start: {out.events:,} events, {learner.samples_trained:,} samples learned")
    if on_read is not None and unread:
        on_read(unread)
    rest = ingest.drain()
    out.held_out.extend(rest.held_out)
    learn(rest.trained)
    last = batcher.flush()
    if last:
        learner.learn(encode(last, vocabs, learner.config.max_tokens))
    out.samples_trained = learner.samples_trained
    out.dead_letters_by_reason = dict(ingest.counts.dead_letters_by_reason)
    out.seconds = time.perf_counter() - started
    progress(
        f"warm start: learned {out.samples_trained:,} samples of {out.events:,} events from {source} "
        f"in {out.seconds:.1f} s ({sum(out.dead_letters_by_reason.values())} invalid)"
    )
    return out


def _timestamp(value: bytes) -> int:
    """The event's ``ts`` when the line has one that parses, else 0 (the caller keeps the last)."""
    try:
        ts = orjson.loads(value).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
