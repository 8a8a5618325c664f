"""``freshrank up``: the embedded stack, the updater and the simulator in one process tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
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
    LOOPBACK_HOSTS,
    EmbeddedStack,
)
from rankcore.errors import ConfigError
from updater.service import Updater
from updater.settings import DEFAULT_ITEMS_TOPIC, DEFAULT_PUBLISH_INTERVAL_S, DEFAULT_TOPIC, UpdaterSettings
from updater.source import ensure_topic

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
    # Where the broker and Triton listen: loopback unless asked (e.g. "0.0.0.0" for every interface).
    listen_host: str = DEFAULT_HOST
    publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    poison_at_s: float = 0.0
    poison_for_s: float = 0.0
    ingest_workers: int = 0


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


def _summary(updater: Updater, produced: ProduceStats, served: int | None, started: float) -> dict[str, Any]:
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
    out["samples_trained_per_s"] = round(status["samples_trained"] / elapsed, 1) if elapsed else None
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
        state, opts.kafka_port, opts.triton_http_port, opts.triton_grpc_port, host=opts.listen_host
    )
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
            (state / STACK_FILE).write_bytes(orjson.dumps(addr.__dict__, option=orjson.OPT_INDENT_2))
            if on_ready is not None:
                on_ready(addr.__dict__)
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
            )
            updater = Updater.from_settings(settings)
            sim_task: asyncio.Task[ProduceStats] | None = None
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
                            progress(_summary(updater, produced, updater.served_version, started))
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
            async with TritonModel(addr.triton_grpc) as triton:
                served = await triton.served_version()
            return _summary(updater, produced, served, started)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
