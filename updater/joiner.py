"""The label join: impressions + later actions -> labelled samples.

An impression waits in the join state for its attribution window. The first click,
add-to-cart or purchase with the same ``request_id`` and ``item_id`` inside the window makes
it a positive sample at once (fresh positives are what the model needs most); when the
window closes without one, it becomes a negative. Time is event time: the window closes
when its source's watermark passes ``impression.ts + window``. Each source (a Kafka partition)
has its own watermark, its largest timestamp: events are keyed by user, so an impression's
actions arrive on its own partition, and a partition read ahead of the others (a backlog is read
one partition fetch at a time) closes only its own windows, never those of impressions whose
clicks still wait unread in a partition behind it. A source is *active* while it was heard from
in the last ``idle_ms`` of the caller's clock or has records on the broker not yet read (the
caller says which, ``behind``); the windows of a source gone quiet close by the others' progress
instead, the smallest watermark among the active sources (``watermark_ms``), so a quiet
partition's impressions still become negatives.

Pure: no I/O; the whole state round-trips through :meth:`Joiner.state`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import fields

from rankcore.events import ACTION_TYPES, Event, Rejection
from rankcore.sample import Sample

DEFAULT_WINDOW_MS = 10_000
DEFAULT_MAX_PENDING = 500_000
# Labelled keys remembered so that a cart after a click is not an orphan.
DEFAULT_LABELLED_MEMORY = 200_000
MAX_SKEW_MS = 60_000
# A source that has sent nothing for this long (of the caller's clock) stops holding the
# watermark back.
DEFAULT_IDLE_MS = 2_000


_EVENT_FIELDS = tuple(f.name for f in fields(Event))


class Joiner:
    """Joins impressions with the actions that follow them."""

    def __init__(
        self,
        window_ms: int = DEFAULT_WINDOW_MS,
        max_pending: int = DEFAULT_MAX_PENDING,
        labelled_memory: int = DEFAULT_LABELLED_MEMORY,
        idle_ms: int = DEFAULT_IDLE_MS,
    ) -> None:
        if window_ms <= 0:
            raise ValueError(f"expected a positive attribution window, got {window_ms!r} ms")
        self.window_ms = window_ms
        self.max_pending = max_pending
        self.labelled_memory = labelled_memory
        self.idle_ms = idle_ms
        self._source_ts: dict[str, int] = {}  # source -> its largest timestamp
        self._source_at: dict[str, int] = {}  # source -> when (caller's clock) it was last heard
        self._pending: dict[tuple[str, str], Event] = {}
        self._source_of: dict[tuple[str, str], str] = {}  # pending key -> the source it came from
        # Per source, (ts, request_id, item_id) of its impressions, a min-heap (entries of keys
        # labelled since stay until their deadline and are skipped then).
        self._deadlines: dict[str, list[tuple[int, str, str]]] = {}
        self._labelled: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.watermark_ms = 0
        self.repeated_impressions = 0
        self.extra_actions = 0
        self.forced_negatives = 0
        self._opened: list[Event] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_opened(self) -> list[Event]:
        """The impressions that began to wait for their labels since the last call."""
        out, self._opened = self._opened, []
        return out

    def add(self, event: Event, now_ms: int | None = None, source: str = "") -> list[Sample] | Rejection:
        """Take one event from ``source``; return the samples it completes (possibly none) or a
        rejection.

        With ``now_ms``, a timestamp ahead of the clock moves the watermark no further than
        ``now_ms + MAX_SKEW_MS``, so one event from a wrong clock cannot close every window.
        """
        ts = event.ts_ms if now_ms is None else min(event.ts_ms, now_ms + MAX_SKEW_MS)
        if ts > self._source_ts.get(source, -1):
            self._source_ts[source] = ts
        if now_ms is not None:
            self._source_at[source] = now_ms
        key = (event.request_id, event.item_id)
        if event.type in ACTION_TYPES:
            impression = self._pending.get(key)
            if impression is not None:
                late_ms = event.ts_ms - impression.ts_ms
                if late_ms > self.window_ms:
                    # Its window has closed in event time, whether or not expire() ran since: the
                    # label must not depend on how records were batched (a replay decides alike).
                    return Rejection(
                        "orphan_action",
                        f"{late_ms} ms after its impression, past the {self.window_ms} ms attribution window",
                    )
                del self._pending[key]
                del self._source_of[key]
                self._remember_labelled(key)
                return [sample_of(impression, 1, event.ts_ms)]
            if key in self._labelled:
                self.extra_actions += 1
                return []
            return Rejection("orphan_action", "no impression with this request_id and item_id")
        if key in self._pending or key in self._labelled:
            self.repeated_impressions += 1
            return []
        self._pending[key] = event
        self._source_of[key] = source
        self._opened.append(event)
        deadline = (event.ts_ms, event.request_id, event.item_id)
        heapq.heappush(self._deadlines.setdefault(source, []), deadline)
        if len(self._pending) > self.max_pending:
            # Memory is bounded: close the oldest impressions early, as negatives.
            return self._pop_oldest(len(self._pending) - self.max_pending)
        return []

    def _active(
        self, source: str, now_ms: int | None, behind: Collection[str] | None, at: int | None = None
    ) -> bool:
        """Heard from in the last ``idle_ms`` of the caller's clock (at ``at``, else as this
        joiner last heard it), or with records unread (``behind`` None: not known, so any
        source may have)."""
        if now_ms is None or behind is None or source in behind:
            return True
        last = self._source_at.get(source, now_ms) if at is None else at
        return now_ms - last <= self.idle_ms

    def sources(self) -> dict[str, tuple[int, int | None]]:
        """Each source's watermark and when it was last heard: what another joiner of the same
        stream (an ingest worker's) passes to :meth:`expire` as ``elsewhere``."""
        return {s: (ts, self._source_at.get(s)) for s, ts in self._source_ts.items()}

    def expire(
        self,
        now_ms: int | None = None,
        behind: Collection[str] | None = (),
        elsewhere: Mapping[str, tuple[int, int | None]] | None = None,
    ) -> list[Sample]:
        """Close every impression whose window ended before its source's watermark (as of
        ``now_ms`` on the caller's clock; ``behind``: the sources with records not yet read,
        None when that is not known): negatives, oldest first per source. ``elsewhere``: the
        sources other joiners of the stream hold (see :meth:`sources`); active, they hold
        the watermark back for this one's quiet sources as its own active ones do."""
        heard = self._source_ts
        if not heard:
            return []
        lately = [ts for s, ts in heard.items() if self._active(s, now_ms, behind)]
        farthest = max(heard.values())
        for s, (ts, at) in (elsewhere or {}).items():
            if s in heard:
                continue
            farthest = max(farthest, ts)
            if self._active(s, now_ms, behind, now_ms if at is None else at):
                lately.append(ts)
        # With every source quiet, the farthest any got closes the windows.
        self.watermark_ms = watermark = max(self.watermark_ms, min(lately) if lately else farthest)
        out: list[Sample] = []
        pending, source_of, window = self._pending, self._source_of, self.window_ms
        for source, deadlines in self._deadlines.items():
            own = heard.get(source, 0)
            if not deadlines or deadlines[0][0] >= max(own, watermark) - window:
                continue  # nothing of it can close (the test most calls end at)
            if source in heard and self._active(source, now_ms, behind):
                limit = own - window
            else:  # quiet, or restored without one: the others' progress closes its windows
                limit = max(watermark, own) - window
            while deadlines and deadlines[0][0] < limit:
                _, request_id, item_id = heapq.heappop(deadlines)
                impression = pending.pop((request_id, item_id), None)
                if impression is not None:
                    del source_of[(request_id, item_id)]
                    out.append(sample_of(impression, 0, 0))
        return out

    def open_impressions(self) -> Iterable[Event]:
        """The impressions whose window is still open: none has an action yet (arrival order).
        A view: iterate it before the joiner changes again."""
        return self._pending.values()

    def drain(self) -> list[Sample]:
        """Close every open window now, as negatives: the end of a finite stream."""
        return self._pop_oldest(len(self._pending))

    def _pop_oldest(self, count: int) -> list[Sample]:
        """The ``count`` oldest open impressions of every source, closed as negatives."""
        out: list[Sample] = []
        heaps = [h for h in self._deadlines.values() if h]
        while len(out) < count and heaps:
            deadlines = min(heaps, key=lambda h: h[0])
            _, request_id, item_id = heapq.heappop(deadlines)
            if not deadlines:
                heaps.remove(deadlines)
            impression = self._pending.pop((request_id, item_id), None)
            if impression is not None:
                del self._source_of[(request_id, item_id)]
                out.append(sample_of(impression, 0, 0))
                self.forced_negatives += 1
        return out

    def _remember_labelled(self, key: tuple[str, str]) -> None:
        self._labelled[key] = None
        if len(self._labelled) > self.labelled_memory:
            self._labelled.popitem(last=False)

    def state(self) -> dict[str, object]:
        return {
            "window_ms": self.window_ms,
            "watermark_ms": self.watermark_ms,
            "pending": [tuple(getattr(e, f) for f in _EVENT_FIELDS) for e in self._pending.values()],
            "pending_sources": [self._source_of[key] for key in self._pending],
            "labelled": list(self._labelled),
            "counters": [self.repeated_impressions, self.extra_actions, self.forced_negatives],
            "sources": [[k, ts, self._source_at.get(k)] for k, ts in self._source_ts.items()],
        }

    def restore(self, state: dict[str, object]) -> None:
        self.watermark_ms = int(state["watermark_ms"])  # type: ignore[call-overload]
        pending = [Event(*row) for row in state["pending"]]  # type: ignore[attr-defined]
        # Checkpoints before per-source windows had no sources: "" closes by the watermark.
        sources = state.get("pending_sources") or [""] * len(pending)
        self._pending = {(e.request_id, e.item_id): e for e in pending}
        self._source_of, self._deadlines = {}, {}
        for e, source in zip(pending, sources, strict=True):  # type: ignore[call-overload]
            self._source_of[(e.request_id, e.item_id)] = source
            self._deadlines.setdefault(source, []).append((e.ts_ms, e.request_id, e.item_id))
        for deadlines in self._deadlines.values():
            heapq.heapify(deadlines)
        self._labelled = OrderedDict.fromkeys(tuple(k) for k in state["labelled"])  # type: ignore[attr-defined]
        self.repeated_impressions, self.extra_actions, self.forced_negatives = state["counters"]  # type: ignore[misc]
        # Checkpoints before per-source watermarks had none: the restored watermark stands.
        heard = state.get("sources", [])
        self._source_ts = {k: int(ts) for k, ts, _ in heard}  # type: ignore[attr-defined]
        self._source_at = {k: int(at) for k, _, at in heard if at is not None}  # type: ignore[attr-defined]


def sample_of(impression: Event, label: int, action_ts_ms: int) -> Sample:
    """The sample ``impression`` makes with ``label`` (an action at ``action_ts_ms``, 0 for none)."""
    return Sample(
        user_id=impression.user_id,
        query=impression.query,
        item_id=impression.item_id,
        category=impression.category,
        brand=impression.brand,
        price=impression.price,
        label=label,
        impression_ts_ms=impression.ts_ms,
        action_ts_ms=action_ts_ms,
        request_id=impression.request_id,
        title=impression.title,
    )
