"""Ingest in worker processes, by partition: the consumer path's Python off the trainer's core.

Per sample the consumer path (decode, validate, dedup, join) costs the updater several times
what training it does (``docs/bench/throughput.json``). With ``--ingest-workers N`` that work
runs in N processes, the way torch's DataLoader workers feed a trainer: the records of event
partition ``p`` go to worker ``p mod N``, which owns an :class:`~updater.ingest.Ingest` for
its partitions (ledger, dedup, join) and hands back samples as columns, one list a field (a
pickle of a few lists, not of an object a sample). The join decides by partition (see
:mod:`updater.joiner`): each worker labels its impressions as the single process would, the
quiet-partition rule included (each worker is told how far the others' partitions got).

The items topic is read here, once: its ledger, its dead letters, and the catalogue exports
read. Every update the catalogue takes goes to every worker with its next records, so an
impression is filled alike whichever worker joins it; the attributes an event carries update
its worker's catalogue and come back with its answer (the last of each item in a fetch), for
this catalogue and, with their next records, the other workers.

Exactly once: every worker answers for a fetch before the updater learns its samples or sends
the next one, so when the updater checkpoints (its queue drained) nothing is in flight, and the
states the workers send then describe the point the weights do. A checkpoint keeps one state a
worker; restored with another worker count, or from a single-process checkpoint (and back),
the states are merged and split again by partition. A worker that dies fails the consume task:
the updater stops, and its restart resumes every worker from the last checkpoint, as after a
crash of the updater itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from rankcore.errors import FreshrankError
from rankcore.items import ItemUpdate
from rankcore.sample import Sample
from updater.ingest import (
    WORKERS_STATE,
    DeadLetter,
    Ingest,
    IngestCounts,
    Ingested,
    RawRecord,
    Record,
    label_order,
    split_state,
)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
# A fetch takes a worker milliseconds and a checkpoint's state seconds at most (a large join).
DEFAULT_ANSWER_S = 60.0
DEFAULT_STALLED_AFTER_S = 10.0
_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))
_COUNT_FIELDS = tuple(f.name for f in fields(IngestCounts) if f.name != "dead_letters_by_reason")

Columns = tuple[list[Any], ...]


class IngestWorkerFailed(FreshrankError):
    """An ingest worker died or raised; the last checkpoint stands."""


def to_columns(samples: Sequence[Sample]) -> Columns:
    return tuple([getattr(s, name) for s in samples] for name in _SAMPLE_FIELDS)


def from_columns(columns: Columns) -> list[Sample]:
    return list(map(Sample, *columns))


# ----------------------------------------------------------------- the worker process


def _answer(ingest: Ingest, message: tuple[Any, ...]) -> Any:
    op = message[0]
    if op == "process":
        _, records, updates, now_ms, behind, elsewhere = message
        for update in updates:
            ingest.catalogue.apply(update)
        ingest.applied = []
        out = ingest.process((Record(*r) for r in records), now_ms, behind, elsewhere)
        # The last update of each item in this fetch (titles on every impression: one an item).
        applied = list({u.item_id: u for u in ingest.applied or []}.values())
        ingest.applied = None
        counts = asdict(ingest.counts)
        return (
            to_columns(out.trained),
            to_columns(out.held_out),
            [tuple(getattr(d, f.name) for f in fields(DeadLetter)) for d in out.dead],
            to_columns(out.opened),
            counts,
            ingest.ledger.state(),
            ingest.pending,
            applied,
            ingest.joiner.sources(),
        )
    if op == "open_holdout":
        return to_columns(ingest.open_holdout())
    if op == "state":
        return ingest.state()
    if op == "restore":
        ingest.restore(message[1])
        return None
    raise ValueError(f"expected an ingest worker request, got {op!r}")


def serve(conn: Connection, settings: dict[str, Any]) -> None:
    """A worker's loop: one request in, one answer out, until told to stop or the updater is gone.

    Ctrl-C and a stop signal sent to the whole process group (a terminal, systemd) are the
    updater's to handle: its graceful stop still asks this worker for its state."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    ingest = Ingest(**settings)
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the updater is gone (a crash, a SIGKILL): nothing here outlives it
        if message[0] == "stop":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", _answer(ingest, message)))
        except Exception:  # noqa: BLE001 - every failure goes back to the updater, which stops
            conn.send(("error", traceback.format_exc()))


# ----------------------------------------------------------------- the updater's side


class _Worker:
    def __init__(
        self, index: int, settings: dict[str, Any], threads: ThreadPoolExecutor, answer_s: float
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        self.index = index
        self.threads = threads
        self.answer_s = answer_s
        self.asked_at: float | None = None  # monotonic; while a request waits for its answer
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=serve, args=(child, settings), name=f"freshrank-ingest-{index}", daemon=True
        )
        self.process.start()
        child.close()
        # What this worker last reported.
        self.counts: dict[str, Any] = asdict(IngestCounts())
        self.ledger: dict[str, Any] = {"ranges": {}, "redelivered": 0}
        self.pending = 0
        self.sources: dict[str, tuple[int, int | None]] = {}
        self.forward: list[ItemUpdate] = []  # catalogue updates for its next request

    @property
    def name(self) -> str:
        return f"ingest worker {self.index} (pid {self.process.pid})"

    def waiting_s(self, now: float) -> float | None:
        """How long the request in hand has waited (None: none is)."""
        asked = self.asked_at
        return None if asked is None else now - asked

    def _exchange(self, message: tuple[Any, ...]) -> Any:
        self.asked_at = time.monotonic()
        try:
            self.conn.send(message)
            if not self.conn.poll(self.answer_s):
                # Stalled (stopped, looping, swapping): it cannot be trusted with the state any
                # more, and its late answer would be read as the next one's. Ended here.
                self.process.kill()
                self.process.join(STOP_TIMEOUT_S)  # reaped: no zombie left behind
                raise IngestWorkerFailed(
                    f"{self.name} did not answer within {self.answer_s:.0f} s; stopped it"
                )
            kind, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.process.join(0.5)
            raise IngestWorkerFailed(f"{self.name} died (exit code {self.process.exitcode})") from exc
        finally:
            self.asked_at = None
        if kind == "error":
            raise IngestWorkerFailed(f"{self.name} failed:\n{payload}")
        return payload

    async def call(self, *message: Any) -> Any:
        exchange = asyncio.get_running_loop().run_in_executor(self.threads, self._exchange, message)
        # The thread's own deadline starts once the request is sent; a worker that stopped
        # reading leaves a large request blocked in send(): this one covers both.
        done, _ = await asyncio.wait({exchange}, timeout=self.answer_s)
        if not done:
            self.process.kill()  # the blocked send() then fails, and the thread ends
            with contextlib.suppress(IngestWorkerFailed):
                await exchange
            await asyncio.to_thread(self.process.join, STOP_TIMEOUT_S)
            raise IngestWorkerFailed(f"{self.name} did not answer within {self.answer_s:.0f} s; stopped it")
        return exchange.result()

    def call_now(self, *message: Any) -> Any:
        return self._exchange(message)

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
            raise IngestWorkerFailed(f"{self.name} did not start within {timeout_s:.0f} s")
        try:
            self.conn.recv()
        except EOFError as exc:
            code = self.process.exitcode
            raise IngestWorkerFailed(f"{self.name} died at start (exit code {code})") from exc

    def stop(self, timeout_s: float) -> None:
        if self.asked_at is not None:
            # A request is in hand (its caller was cancelled, or it stalled): the pipe is its
            # thread's; this worker's state is not wanted any more.
            self.process.kill()
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
                if self.conn.poll(timeout_s):
                    self.conn.recv()
            except (EOFError, OSError) as exc:  # it died meanwhile: joined (or killed) below
                log.debug("%s did not take the stop request: %s", self.name, exc)
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        self.conn.close()


class IngestWorkers:
    """:class:`~updater.ingest.Ingest`'s work over ``workers`` processes (see the module)."""

    def __init__(
        self,
        workers: int,
        items_topic: str = "",
        answer_s: float = DEFAULT_ANSWER_S,
        stalled_after_s: float = DEFAULT_STALLED_AFTER_S,
        **settings: Any,
    ) -> None:
        if workers < 1:
            raise ValueError(f"expected at least one ingest worker, got {workers!r}")
        self.items_topic = items_topic
        # Here: the items topic only (no event ever reaches this one's joiner).
        self.items = Ingest(**settings, items_topic=items_topic)
        self.items.applied = []
        self.catalogue = self.items.catalogue
        self.window_ms = self.items.joiner.window_ms
        self._count = workers
        self.answer_s = answer_s
        self.stalled_after_s = stalled_after_s
        self._settings = {**settings, "items_topic": ""}
        self._workers: list[_Worker] = []
        # One thread a worker waits for its answer (the default executor is shared and small).
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="ingest-call")

    def start_now(self) -> None:
        """Start the processes (each imports the consumer path: about a second); idempotent."""
        if self._workers:
            return
        self._workers = [_Worker(i, self._settings, self._threads, self.answer_s) for i in range(self._count)]
        try:
            for w in self._workers:
                w.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self._stop_all()
            raise
        log.info("%d ingest workers started (pids %s)", self._count, self.pids())

    async def start(self) -> None:
        await asyncio.to_thread(self.start_now)

    def pids(self) -> list[int | None]:
        return [w.process.pid for w in self._workers]

    def describe(self) -> list[dict[str, Any]]:
        """Each worker for the status: its pid, whether it runs, how long the request in hand has
        waited, and ``stalled`` once that is past ``stalled_after_s`` (the updater stops it at
        ``answer_s``)."""
        now = time.monotonic()
        out = []
        for w in self._workers:
            waiting = w.waiting_s(now)
            out.append(
                {
                    "worker": w.index,
                    "pid": w.process.pid,
                    "alive": w.process.is_alive(),
                    "waiting_s": None if waiting is None else round(waiting, 3),
                    "stalled": waiting is not None and waiting > self.stalled_after_s,
                }
            )
        return out

    def stalled(self) -> list[str]:
        """The workers whose answer is overdue, by name."""
        return [
            f"{w.name}: no answer for {d['waiting_s']:.1f} s"
            for w, d in zip(self._workers, self.describe(), strict=True)
            if d["stalled"]
        ]

    # ----------------------------------------------------------------- what the updater reads

    @property
    def counts(self) -> IngestCounts:
        parts = [self.items.counts, *(IngestCounts(**w.counts) for w in self._workers)]
        by_reason: dict[str, int] = {}
        for c in parts:
            for reason, n in c.dead_letters_by_reason.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        return IngestCounts(
            **{name: sum(getattr(c, name) for c in parts) for name in _COUNT_FIELDS},
            dead_letters_by_reason=by_reason,
        )

    @property
    def positions(self) -> dict[str, int]:
        return {k: int(r["next"]) for k, r in self.ledger_state()["ranges"].items()}

    @property
    def pending(self) -> int:
        return sum(w.pending for w in self._workers)

    def ledger_state(self) -> dict[str, Any]:
        """The ledger of every partition, as one :class:`~updater.ledger.Ledger`'s state."""
        own = self.items.ledger_state()
        ranges = dict(own["ranges"])
        redelivered = int(own["redelivered"])
        for w in self._workers:
            ranges.update(w.ledger["ranges"])
            redelivered += int(w.ledger["redelivered"])
        return {"ranges": ranges, "redelivered": redelivered}

    # ----------------------------------------------------------------- the consumer path

    def _route(self, partition: int) -> _Worker:
        return self._workers[partition % len(self._workers)]

    async def aprocess(
        self, records: Iterable[RawRecord], now_ms: int, behind: Collection[str] | None = ()
    ) -> Ingested:
        """:meth:`Ingest.process` over the workers: every worker gets its partitions' records
        (and the time, so windows close in the quiet ones too), all answer before this returns."""
        self.start_now()
        parts: list[list[tuple[Any, ...]]] = [[] for _ in self._workers]
        items: list[RawRecord] = []
        n = len(self._workers)
        items_topic = self.items_topic
        heard: set[str] = set()
        for rec in records:
            if rec.topic == items_topic:
                items.append(rec)
            else:
                parts[rec.partition % n].append((rec.topic, rec.partition, rec.offset, rec.key, rec.value))
                heard.add(f"{rec.topic}:{rec.partition}")
        dead: list[DeadLetter] = []
        if items:
            dead.extend(self.items.process(items, now_ms, behind).dead)
            updates, self.items.applied = self.items.applied or [], []
            for w in self._workers:
                w.forward.extend(updates)
        behind_list = None if behind is None else sorted(behind)
        calls = []
        # What the other workers last reported, with the partitions of this fetch heard now (their
        # watermarks only lag: a lower one closes windows later, never earlier).
        known = {
            s: (ts, now_ms if s in heard else at) for w in self._workers for s, (ts, at) in w.sources.items()
        }
        for w, mine in zip(self._workers, parts, strict=True):
            elsewhere = {s: v for s, v in known.items() if s not in w.sources}
            forward, w.forward = w.forward, []
            calls.append(w.call("process", mine, forward, now_ms, behind_list, elsewhere))
        answers = await asyncio.gather(*calls)
        trained: list[Sample] = []
        held: list[Sample] = []
        opened: list[Sample] = []
        for w, answer in zip(self._workers, answers, strict=True):
            trained_c, held_c, dead_rows, opened_c, counts, ledger, pending, applied, sources = answer
            trained.extend(from_columns(trained_c))
            held.extend(from_columns(held_c))
            opened.extend(from_columns(opened_c))
            dead.extend(DeadLetter(*row) for row in dead_rows)
            w.counts, w.ledger, w.pending, w.sources = counts, ledger, pending, sources
            for update in applied:
                self.catalogue.apply(update)
                for other in self._workers:
                    if other is not w:
                        other.forward.append(update)
        trained.sort(key=label_order(self.window_ms))  # each worker's are in order: merged runs
        return Ingested(trained, held, dead, opened)

    async def aopen_holdout(self) -> list[Sample]:
        self.start_now()
        answers = await asyncio.gather(*(w.call("open_holdout") for w in self._workers))
        return [s for columns in answers for s in from_columns(columns)]

    # ----------------------------------------------------------------- checkpoints

    async def state_capture(self) -> Callable[[], dict[str, Any]]:
        """Every worker's state, asked for now (nothing is in flight: see the module)."""
        self.start_now()
        states = await asyncio.gather(*(w.call("state") for w in self._workers))
        # The items topic's part is built in the checkpoint's thread (a large catalogue takes a
        # while); nothing ingests until the checkpoint is written.
        return lambda: {WORKERS_STATE: {"items": self.items.state(), "workers": list(states)}}

    def restore(self, state: dict[str, Any]) -> None:
        """A checkpoint's ingest state, whatever worker count (or none) wrote it."""
        self.start_now()
        saved = state.get(WORKERS_STATE)
        if saved is not None and len(saved["workers"]) == len(self._workers):
            items, workers = saved["items"], saved["workers"]
        else:
            # Through one Ingest first: it reads every older checkpoint layout (and merges workers').
            single_ingest = Ingest(**{**self._settings, "items_topic": self.items_topic})
            single_ingest.restore(state)
            items, workers = split_state(single_ingest.state(), len(self._workers), self.items_topic)
            log.info(
                "ingest state of %s split over %d workers by partition",
                f"{len(saved['workers'])} workers" if saved is not None else "one process",
                len(self._workers),
            )
        self.items.restore(items)
        for w, ws in zip(self._workers, workers, strict=True):
            w.call_now("restore", ws)
            w.ledger = ws["ledger"]
            w.counts = {**ws["ingest_counts"], "dead_letters_by_reason": dict(ws["dead_by_reason"])}
            w.pending = len(ws["joiner"]["pending"])
            w.sources = {k: (int(ts), at) for k, ts, at in ws["joiner"].get("sources", [])}

    async def close(self) -> None:
        await asyncio.to_thread(self._stop_all)

    def _stop_all(self) -> None:
        for w in self._workers:  # kept: what they last reported stays readable (status, summaries)
            w.stop(STOP_TIMEOUT_S)
        self._threads.shutdown(wait=False)
