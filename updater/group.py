"""A data-parallel training group: N updaters learning one model in lockstep (torch.distributed).

Each rank consumes its own share of the partitions and learns its own samples. A step goes:

1. every rank sends the others what it has for this step (its samples, possibly none, and a
   few flags) in one ``all_gather``;
2. every rank encodes the whole step's samples, in rank order, through its own vocabularies:
   the same ids arrive in the same order everywhere, so every rank grows and recycles the same
   rows (no vocabulary protocol of its own: the ids travel with the samples);
3. each rank scores and back-propagates only its own rows, its loss scaled to its share of the
   step's mean (:meth:`updater.learner.Learner.learn` with ``share``);
4. the gradients are summed over the group (:meth:`TrainingGroup.sync`: one ``all_reduce`` of
   the dense weights' gradients flattened together, the way DDP's buckets go, and a sparse
   ``all_reduce`` per embedding table), and every rank takes the same optimiser step.

So every rank holds the same weights, optimiser state and vocabularies after every step, equal
(up to the order of float sums) to one process learning the whole step's batch. Embedding
tables are replicated, not sharded: each rank holds them whole (TorchRec's sharding is the way
past one host's memory; see the README). Collectives run on gloo, on the CPU (gradients of a
model on a GPU go through host memory).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from rankcore.errors import ConfigError
from rankcore.features import Batch, Vocabularies, encode
from rankcore.model import Ranker
from rankcore.sample import Sample
from updater.learner import Learner
from updater.trainer import DEFAULT_PAUSE_AFTER_S, Impressions, Job, Trainer

log = logging.getLogger(__name__)

DEFAULT_GROUP_TIMEOUT_S = 60.0
ROUND_KEY = "freshrank/round/"
BEAT_KEY = "freshrank/alive/"
BEAT_S = 0.5
STALE_BEAT_S = 2.0
# In a restart's choice of the checkpoint every rank holds: the state before any checkpoint.
START = ""
READ_TIMEOUT_S = 1.0
# An idle round this often keeps the group in step when no rank has samples.
DEFAULT_TICK_S = 0.01


class TrainingGroup:
    """This process's membership of the group: rank ``rank`` of ``world_size``."""

    def __init__(
        self, rank: int, world_size: int, init_method: str, timeout_s: float = DEFAULT_GROUP_TIMEOUT_S
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"expected 0 <= rank < world size, got rank {rank} of {world_size}")
        if not dist.is_available() or not dist.is_gloo_available():
            raise ConfigError("this torch build has no torch.distributed gloo backend")
        self.rank = rank
        self.world_size = world_size
        self.init_method = init_method
        self.timeout_s = timeout_s
        self._group: Any = None
        self._store: Any = None
        self._reader: Any = None  # the store again, for status: a short timeout (see behind())

    @property
    def leader(self) -> bool:
        """Rank 0: the one that holds the writer lease and publishes."""
        return self.rank == 0

    def start(self) -> None:
        """Join the group; returns once every rank has (or raises after ``timeout_s``)."""
        timeout = datetime.timedelta(seconds=self.timeout_s)
        url = urlparse(self.init_method)
        # The rendezvous store is this object's, so the ranks can also leave their round number
        # in it: a rank that stops answering is then named (see behind()).
        if url.scheme == "tcp" and url.hostname and url.port:
            self._store = dist.TCPStore(
                url.hostname, url.port, self.world_size, is_master=self.rank == 0, timeout=timeout
            )
            self._reader = dist.TCPStore(
                url.hostname,
                url.port,
                is_master=False,
                timeout=datetime.timedelta(seconds=READ_TIMEOUT_S),
                wait_for_workers=False,
            )
        elif url.scheme == "file" and url.path:
            self._store = self._reader = dist.FileStore(url.path, self.world_size)
        else:
            raise ConfigError(
                f"expected --group-init as tcp://HOST:PORT or file:///PATH, got {self.init_method!r}"
            )
        dist.init_process_group(
            "gloo", store=self._store, rank=self.rank, world_size=self.world_size, timeout=timeout
        )
        self._group = dist.group.WORLD

        self._beating = threading.Event()
        threading.Thread(target=self._beat, name="group-heartbeat", daemon=True).start()

    def enter(self, round_number: int) -> None:
        """Leave the number of the round this rank enters in the store (one small write a round)."""
        if self._store is not None:
            self._store.set(f"{ROUND_KEY}{self.rank}", str(round_number))

    def _beat(self) -> None:
        """This process is alive (a rank frozen or stopped leaves its time behind)."""
        while not self._beating.wait(BEAT_S):
            store = self._store
            if store is None:
                return
            try:
                store.set(f"{BEAT_KEY}{self.rank}", repr(time.time()))
            except RuntimeError as exc:  # the store (rank 0) is gone: the next round fails on its own
                log.warning("the group's heartbeat stopped: %s", exc)
                return

    def late(self, round_number: int) -> list[int]:
        """The other ranks that have not entered round ``round_number`` or whose heartbeat is
        more than 2 s old. Read with a 1-s timeout: the store is on rank 0, which may be one."""
        store, out = self._reader, list[int]()
        if store is None:
            return out
        now = time.time()
        try:
            for rank in range(self.world_size):
                if rank == self.rank:
                    continue
                keys = [f"{ROUND_KEY}{rank}", f"{BEAT_KEY}{rank}"]
                entered = int(store.get(keys[0])) if store.check(keys[:1]) else -1
                beat = float(store.get(keys[1])) if store.check(keys[1:]) else 0.0
                if entered < round_number or now - beat > STALE_BEAT_S:
                    out.append(rank)
        except (RuntimeError, ValueError):  # the store did not answer in time: nothing known
            return []
        return out

    def close(self) -> None:
        if self._group is not None:
            self._group = None
            dist.destroy_process_group()
        if hasattr(self, "_beating"):
            self._beating.set()
        self._store = self._reader = None

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled; for samples and flags, not tensors)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sync(self, model: Ranker) -> None:
        """Sum every gradient of ``model`` over the group (a missing one counts as zero).

        In three collectives whatever the tables: each rank's row counts per table, then one
        float vector (the dense gradients flattened, then every table's changed rows) and one
        index vector, each padded to the longest rank's. Sums run in rank order on every rank,
        so every rank gets the same bits."""
        tables = model.sparse_parameters()
        dense = [p for p in model.parameters() if not any(p is t for t in tables)]
        sparse = [_coalesced(t) for t in tables]
        widths = [int(t[0].numel()) for t in tables]  # floats a row
        counts = torch.tensor([g._nnz() for g in sparse], dtype=torch.long)
        every_counts = [torch.zeros_like(counts) for _ in range(self.world_size)]
        dist.all_gather(every_counts, counts)
        floats = torch.cat(
            [
                (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).cpu()
                for p in dense
            ]
            + [g.values().reshape(-1) for g in sparse]
        )
        rows = torch.cat([g.indices()[0] for g in sparse])
        n_dense = sum(p.numel() for p in dense)
        lengths = [n_dense + sum(int(c[k]) * widths[k] for k in range(len(tables))) for c in every_counts]
        every_floats = _all_gather_padded(floats, max(lengths))
        every_rows = _all_gather_padded(rows, max(int(c.sum()) for c in every_counts))
        device = tables[0].device
        total = torch.stack([f[:n_dense] for f in every_floats]).sum(0)
        offset = 0
        for p in dense:
            n = p.numel()
            p.grad = total[offset : offset + n].view_as(p).to(p.device)
            offset += n
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in tables]
        for r, c in enumerate(every_counts):
            at_float, at_row = n_dense, 0
            for k, table in enumerate(tables):
                n = int(c[k])
                values = every_floats[r][at_float : at_float + n * widths[k]].view(n, *table.shape[1:])
                parts[k].append((every_rows[r][at_row : at_row + n], values))
                at_float, at_row = at_float + n * widths[k], at_row + n
        for k, table in enumerate(tables):
            index = torch.cat([i for i, _ in parts[k]]).unsqueeze(0)
            values = torch.cat([v for _, v in parts[k]])
            grad = torch.sparse_coo_tensor(index, values, table.shape, check_invariants=False)
            table.grad = grad.coalesce().to(device)


def _coalesced(table: torch.Tensor) -> torch.Tensor:
    """The table's sparse gradient, summed per row, on the CPU (an empty one when it has none)."""
    grad = table.grad
    if grad is None:
        empty = torch.zeros((1, 0), dtype=torch.long)
        return torch.sparse_coo_tensor(
            empty, torch.zeros((0, *table.shape[1:])), table.shape, check_invariants=True
        )
    return grad.detach().coalesce().cpu()


def _all_gather_padded(tensor: torch.Tensor, length: int) -> list[torch.Tensor]:
    """Every rank's 1-D ``tensor`` (padded to ``length``, the longest rank's, for the collective)."""
    padded = torch.zeros(length, dtype=tensor.dtype)
    padded[: len(tensor)] = tensor
    out = [torch.zeros_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(out, padded)
    return out


def step_batch(
    parts: list[list[Sample]], rank: int, vocabs: Vocabularies, max_tokens: int
) -> tuple[Batch, slice] | None:
    """The whole step's batch (every rank's samples, in rank order, through ``vocabs``) and
    the rows of it that are ``rank``'s own; None when no rank had any."""
    union = [s for part in parts for s in part]
    if not union:
        return None
    start = sum(len(part) for part in parts[:rank])
    return encode(union, vocabs, max_tokens), slice(start, start + len(parts[rank]))


# ----------------------------------------------------------------------------- the rounds


@dataclass(frozen=True, slots=True)
class Barrier:
    """A point every rank comes to with nothing left to learn: the group's weights then stand
    still until every rank has done what the barrier is for (a checkpoint; its last one)."""

    number: int
    checkpoint: bool = False
    stop: bool = False
    # Names the group checkpoint taken at this barrier: every rank's says it, so a restart finds
    # the newest state all ranks hold (a number alone repeats after a restart).
    token: str = ""


@dataclass(frozen=True, slots=True)
class Round:
    """What one rank tells the others in a round."""

    samples: list[Sample]
    arrived: int | None = None  # the barrier this rank waits at: its queue empty, its consumer held
    barrier: Barrier | None = None  # the leader's: the barrier every rank is to come to
    stop: bool = False  # this rank asks the group to stop
    note: Any = None  # what this rank brings to the barrier it waits at (its offsets, say)


Encoder = Callable[[list[list[Sample]], int], "tuple[Batch, slice] | None"]


class GroupTrainer(Trainer):
    """One rank's trainer: it learns in rounds with the rest of the group.

    The queue holds this rank's samples (lists of :class:`Sample`, encoded in the round that
    learns them, with every rank's) and impressions to score (local). Each round every rank
    sends a :class:`Round`: when none has samples the round learns nothing (an idle round every
    ``tick_s`` keeps the group in step). The leader asks for a :class:`Barrier`
    (:meth:`request`); each rank's consumer, seeing :attr:`barrier`, stops feeding the queue and
    :meth:`arrive`\\ s; once every rank has arrived in the same round, :meth:`arrive` returns every
    rank's note on each of them, and no rank learns again until each has called :meth:`release`.
    A stop barrier ends the rounds after its release. A collective that fails (a rank died, or
    did not answer within the group's timeout) fails the task, as a failed step does.
    """

    def __init__(
        self,
        learner: Learner,
        group: TrainingGroup,
        encode_step: Encoder,
        queue_batches: int,
        on_learned: Callable[[Batch], None] = lambda batch: None,
        pause_after_s: float = DEFAULT_PAUSE_AFTER_S,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        super().__init__(learner, queue_batches, on_learned, pause_after_s)
        self.group = group
        self.encode_step = encode_step
        self.tick_s = tick_s
        self.rounds = 0
        self.barrier: Barrier | None = None  # the newest barrier the leader asked for
        self.passed = 0  # the number of the last barrier the group passed
        self._requested: Barrier | None = None  # the leader's, until a round carries it
        self._numbers = 0
        self._stop_asked = False
        self._arrival: tuple[int, Any, asyncio.Future[list[Any]]] | None = None
        self._released = asyncio.Event()
        self.waiting_since: float | None = None  # monotonic time this rank's current round began
        self.in_round = 0  # the number of that round

    def describe(self, stalled_after_s: float) -> dict[str, Any]:
        """For status: where this rank is, and who the group waits for when a round takes long."""
        group = self.group
        waiting = None if self.waiting_since is None else time.monotonic() - self.waiting_since
        out: dict[str, Any] = {
            "rank": group.rank,
            "world_size": group.world_size,
            "rounds": self.rounds,
            "barriers_passed": self.passed,
            "round_waiting_s": round(waiting, 3) if waiting is not None else None,
        }
        if waiting is not None and waiting >= stalled_after_s:
            late = group.late(self.in_round)
            out["stalled"] = (
                f"round {self.in_round} has waited {waiting:.1f} s for rank(s) {late or 'unknown'}"
            )
        return out

    def request(self, checkpoint: bool = False, stop: bool = False) -> Barrier:
        """(The leader) ask every rank to come to a new barrier; then :meth:`arrive` at it."""
        if not self.group.leader:
            raise RuntimeError("only the leader (rank 0) asks for barriers")
        if self.barrier is not None and self.barrier.number > self.passed:
            raise RuntimeError(f"barrier {self.barrier.number} is not passed yet")
        self._numbers = max(self._numbers, self.passed) + 1
        self._requested = Barrier(self._numbers, checkpoint=checkpoint, stop=stop, token=uuid.uuid4().hex)
        self.barrier = self._requested
        return self._requested

    @property
    def pending(self) -> Barrier | None:
        """The barrier the leader asked for that the group has not passed yet."""
        barrier = self.barrier
        return barrier if barrier is not None and barrier.number > self.passed else None

    def ask_stop(self) -> None:
        """Ask the group to stop (the leader then asks for a last checkpoint barrier)."""
        self._stop_asked = True

    async def arrive(self, note: Any = None) -> list[Any]:
        """Wait at :attr:`barrier` with nothing more queued; every rank's note, once all are here."""
        barrier = self.pending
        if barrier is None:
            raise RuntimeError("no barrier to arrive at")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._arrival = (barrier.number, note, future)
        await self.while_training(asyncio.shield(future))
        return future.result()

    def release(self) -> None:
        """This rank is done at the barrier it arrived at: learning goes on."""
        self._released.set()

    async def _next(self) -> Job | None:
        if self._arrival is not None and self._queue.empty():
            return None
        try:
            async with asyncio.timeout(self.tick_s):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _run(self) -> None:
        group = self.group
        while True:
            job = await self._next()
            if isinstance(job, Impressions):
                await asyncio.to_thread(self.learner.expect, job.batch)
                self._queue.task_done()
                continue
            if isinstance(job, Batch):
                raise TypeError("expected a rank's samples (a group encodes them in the round), got a batch")
            samples: list[Sample] = job if job is not None else []
            arrival = self._arrival if job is None else None
            mine = Round(
                samples,
                arrived=arrival[0] if arrival is not None else None,
                barrier=self._requested if group.leader else None,
                stop=self._stop_asked,
                note=arrival[1] if arrival is not None else None,
            )
            self.waiting_since = time.monotonic()  # the round's collectives: the gather, the sums
            self.in_round = self.rounds + 1
            try:
                rounds: list[Round] = await asyncio.to_thread(self._gather, mine)
                self.rounds += 1
                self._heard(rounds)
                step = self.encode_step([r.samples for r in rounds], group.rank)
                if step is not None:
                    batch, share = step
                    await asyncio.to_thread(self.learner.learn, batch, share, group.sync)
            finally:
                self.waiting_since = None
            if job is not None:
                self.queued_samples -= len(samples)
                if step is not None and samples:
                    self.on_learned(step[0].rows(step[1]))
                self._queue.task_done()
            number = rounds[0].arrived
            at_barrier = number is not None and all(r.arrived == number for r in rounds)
            if at_barrier and await self._hold(number, rounds):  # type: ignore[arg-type]
                return

    def _gather(self, mine: Round) -> list[Round]:
        self.group.enter(self.in_round)
        return self.group.gather(mine)

    def _heard(self, rounds: list[Round]) -> None:
        """The leader's barrier, and (on the leader) any rank's wish to stop."""
        leader = rounds[0]
        if leader.barrier is not None and leader.barrier.number > self.passed:
            self.barrier = leader.barrier
            if self.group.leader:
                self._requested = None  # every rank has it now
        if self.group.leader and any(r.stop for r in rounds) and not self.pending:
            self.request(checkpoint=True, stop=True)

    async def _hold(self, number: int, rounds: list[Round]) -> bool:
        """Every rank is at barrier ``number``: hand the notes over, wait for the release.
        True when it was a stop barrier (no more rounds)."""
        assert self._arrival is not None and self._arrival[0] == number
        barrier = self.barrier
        self._released.clear()
        _, _, future = self._arrival
        self._arrival = None
        self.passed = number
        future.set_result([r.note for r in rounds])
        await self._released.wait()
        return barrier is not None and barrier.number == number and barrier.stop
