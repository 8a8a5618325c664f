"""``freshrank up``: the embedded stack, the updater and the simulator in one process tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from exporter.triton import TritonModel
from freshrank.simulator import ProduceStats, SimulatorConfig, produce
from freshrank.stack import (
    DEFAULT_HOST,
    DEFAULT_KAFKA_PORT,
    DEFAULT_TRITON_GRPC_PORT,
    DEFAULT_TRITON_HTTP_PORT,
    DEFAULT_TRITON_METRICS_PORT,
    LOOPBACK_HOSTS,
    EmbeddedStack,
    free_port,
)
from rankcore.errors import ConfigError
from updater.service import Updater
from updater.settings import DEFAULT_ITEMS_TOPIC, DEFAULT_PUBLISH_INTERVAL_S, DEFAULT_TOPIC, UpdaterSettings
from updater.source import ensure_topic
from updater.status import STATUS_FILE, read_status
from updater.web import DEFAULT_METRICS_PORT

log = logging.getLogger(__name__)

STATE_MARKER = ".freshrank-state"
STACK_FILE = "stack.json"
CATALOGUE_FILE = "catalogue.json"
TOPIC = DEFAULT_TOPIC
ITEMS_TOPIC = DEFAULT_ITEMS_TOPIC
PARTITIONS = 3


@dataclass
class UpOptions:
    state_dir: Path
    duration_s: float = 0.0
    rate: float = 1000.0
    simulator: bool = True
    seed: int = 7
    kafka_port: int = DEFAULT_KAFKA_PORT
    triton_http_port: int = DEFAULT_TRITON_HTTP_PORT
    triton_grpc_port: int = DEFAULT_TRITON_GRPC_PORT
    triton_metrics_port: int = DEFAULT_TRITON_METRICS_PORT
    # The updater's /metrics and dashboard, on loopback (0: a free port).
    metrics_port: int = DEFAULT_METRICS_PORT
    # Where the broker and Triton listen: loopback unless asked (e.g. "0.0.0.0" for every interface).
    listen_host: str = DEFAULT_HOST
    publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    poison_at_s: float = 0.0
    poison_for_s: float = 0.0
    ingest_workers: int = 0
    # Updaters in a training group (--world-size): rank 0 here, ranks 1.. as `freshrank updater`
    # processes with state directories of their own.
    workers: int = 1


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """``proc``'s exit status, or None when it had to be killed after ``timeout_s``."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def fresh_state_dir(path: Path) -> None:
    """Start from an empty state directory: the embedded broker keeps events in memory only,
    so offsets and models from an earlier run would not match the new event log."""
    if path.exists() and any(path.iterdir()):
        if not (path / STATE_MARKER).exists():
            raise ConfigError(
                f"expected --state-dir {str(path)!r} to be empty or a freshrank state directory "
                f"(with {STATE_MARKER}); refusing to delete its contents"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_MARKER).write_text("freshrank up state; deleted and recreated by each 'freshrank up'\n")


def rank_command(settings: UpdaterSettings, rank: int, state_dir: Path, metrics_port: int = 0) -> list[str]:
    """``freshrank updater`` as rank ``rank`` of the group ``settings`` describe (their stream,
    consumer group, cadence and holdout; the rest at their defaults), its metrics on
    ``metrics_port`` (0: off)."""
    s = settings
    return [
        sys.executable, "-m", "freshrank.cli", "updater", "--bootstrap", s.bootstrap, "--pg-dsn", s.pg_dsn,
        "--model-repository", str(s.repository), "--state-dir", str(state_dir), "--topic", s.topic,
        "--items-topic", s.items_topic, "--group", s.group, "--ingest-workers", str(s.ingest_workers),
        "--publish-interval", str(s.publish_interval_s), "--holdout-every", str(s.holdout_every),
        "--world-size", str(s.world_size), "--rank", str(rank), "--group-init", s.group_init,
        "--metrics-host", s.metrics_host, "--metrics-port", str(metrics_port),
    ]  # fmt: skip


def _start_rank(settings: UpdaterSettings, rank: int, state: Path) -> subprocess.Popen[bytes]:
    """Another rank of the group as a process, its log in ``updater-<rank>.log``, its metrics
    on a free port (in the log)."""
    with open(state / f"updater-{rank}.log", "wb") as log_file:
        return subprocess.Popen(
            rank_command(settings, rank, state / f"updater-{rank}", metrics_port=free_port()),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _group_trained(state: Path, ranks: int) -> int:
    """Samples the other ranks have learned, from their status files."""
    return sum(
        int(read_status(state / f"updater-{r}" / STATUS_FILE).get("samples_trained") or 0)
        for r in range(1, ranks)
    )


def _summary(
    updater: Updater, produced: ProduceStats, served: int | None, started: float, others: int = 0
) -> dict[str, Any]:
    status = updater.status()
    elapsed = time.monotonic() - started
    keys = (
        "events_consumed",
        "samples_trained",
        "dead_letters",
        "duplicates",
        "versions_published",
        "versions_rejected",
        "live_version",
        "served_holdout_auc",
        "prequential_auc",
        "prequential_logloss",
        "freshness_p50_s",
        "freshness_p95_s",
        "consumer_lag",
        "dead_letters_by_reason",
        "last_export",
        "rollbacks",
        "last_rollback",
        "serving",
        "deltas",
    )
    out = {k: status[k] for k in keys}
    out["served_version"] = served
    out["events_produced"] = produced.events
    out["duration_s"] = round(elapsed, 1)
    if updater.group is not None:
        # The group's samples: rank 0's here, the other ranks' from their status files.
        out["samples_trained"] = status["samples_trained"] + others
        out["samples_trained_by_rank_0"] = status["samples_trained"]
    out["samples_trained_per_s"] = round(out["samples_trained"] / elapsed, 1) if elapsed else None
    return out


async def run_up(
    opts: UpOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole loop until ``duration_s`` passes (0: forever) or SIGINT/SIGTERM."""
    state = opts.state_dir.resolve()
    fresh_state_dir(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = EmbeddedStack(
        state,
        opts.kafka_port,
        opts.triton_http_port,
        opts.triton_grpc_port,
        host=opts.listen_host,
        triton_metrics_port=opts.triton_metrics_port,
    )
    metrics_port = opts.metrics_port or free_port()
    if opts.listen_host not in LOOPBACK_HOSTS:
        log.warning(
            "the broker and Triton (model control included) listen on %s, without authentication",
            opts.listen_host,
        )
    produced = ProduceStats()
    started = time.monotonic()
    try:
        async with stack:
            addr = stack.addresses
            # The updater's endpoint stays on loopback whatever --listen-host says: its dashboard
            # and metrics are for this machine (a scraper elsewhere: `freshrank updater --metrics-host`).
            web = f"http://127.0.0.1:{metrics_port}/"
            ready = {**addr.__dict__, "dashboard": web, "metrics": f"{web}metrics"}
            (state / STACK_FILE).write_bytes(orjson.dumps(ready, option=orjson.OPT_INDENT_2))
            if on_ready is not None:
                on_ready(ready)
            await ensure_topic(addr.bootstrap, TOPIC, PARTITIONS)
            await ensure_topic(addr.bootstrap, ITEMS_TOPIC, PARTITIONS)
            settings = UpdaterSettings(
                bootstrap=addr.bootstrap,
                pg_dsn=addr.pg_dsn,
                repository=Path(addr.repository),
                state_dir=state / "updater",
                triton_grpc=addr.triton_grpc,
                topic=TOPIC,
                items_topic=ITEMS_TOPIC,
                publish_interval_s=opts.publish_interval_s,
                ingest_workers=opts.ingest_workers,
                world_size=opts.workers,
                group_init=f"tcp://127.0.0.1:{free_port()}" if opts.workers > 1 else "",
                metrics_port=metrics_port,
            )
            updater = Updater.from_settings(settings)
            sim_task: asyncio.Task[ProduceStats] | None = None
            # The group's other ranks, each a process; they stop with rank 0 (at its last
            # checkpoint barrier) and a dead one fails rank 0's next round.
            ranks = [_start_rank(settings, r, state) for r in range(1, opts.workers)]
            others = lambda: _group_trained(state, opts.workers)  # noqa: E731
            try:
                await updater.start()
                if opts.simulator:
                    sim_task = asyncio.create_task(
                        produce(
                            addr.bootstrap,
                            TOPIC,
                            opts.rate,
                            0,
                            SimulatorConfig(
                                seed=opts.seed,
                                poison_start_s=opts.poison_at_s,
                                poison_duration_s=opts.poison_for_s,
                            ),
                            stop=stop,
                            catalogue_path=state / CATALOGUE_FILE,
                            stats=produced,
                            items_topic=ITEMS_TOPIC,
                        ),
                        name="simulator",
                    )
                watch = asyncio.create_task(updater.wait(), name="updater-watch")
                try:
                    while not stop.is_set() and not watch.done():
                        if opts.duration_s and time.monotonic() - started >= opts.duration_s:
                            break
                        if sim_task is not None and sim_task.done():
                            sim_task.result()  # raises if the simulator failed
                        if progress is not None:
                            progress(_summary(updater, produced, updater.served_version, started, others()))
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                await stop.wait()
                finally:
                    stop.set()
                    if watch.done():
                        watch.result()
                    else:
                        watch.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await watch
                if sim_task is not None:
                    await sim_task
            finally:
                await updater.stop()
                for proc in ranks:
                    if await asyncio.to_thread(_wait, proc, 60) is None:
                        log.error("rank process %d did not stop within 60 s; killed", proc.pid)
            async with TritonModel(addr.triton_grpc) as triton:
                served = await triton.served_version()
            return _summary(updater, produced, served, started, others())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
