"""Reload hygiene under churn: 500 version swaps under steady gRPC and HTTP traffic.

Each swap is what the updater does between two versions: two deltas applied in place on the
version served, then the next version (cut after them) published, loaded and the older ones
pruned. Traffic never stops; every answer is checked (no failure, one state per request, never
an older state than the one before on the same client). Every ``SAMPLE_EVERY`` swaps the Triton
process tree is measured: the server's and the Python stubs' resident memory, how many stub
processes run, their open file descriptors and threads.

Flat means: after a warm-up, resident memory grows by less than ``TARGET_RSS_MB_PER_100`` MB per
100 swaps (a least-squares slope, so one sample's noise does not decide), the stub count and the
file descriptors end where they stood after the warm-up (within ``FD_SLACK``). The model is
small (the swaps, not a model's size, are what is measured; ``freshrank bench serving`` and
``snapshot`` cover size).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporter.delta import DELTA_DIR, DeltaLog, build_delta
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import MODEL_NAME, Publisher
from exporter.triton import TritonModel, contract_tensors
from freshrank.bench.common import SMALL_MODEL, Progress, request_columns
from freshrank.bench.snapshot import fit_line
from freshrank.stack import EmbeddedStack, free_port
from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from rankcore.sample import Sample
from updater.learner import Learner

SWAPS = 500
SAMPLE_EVERY = 25
WARMUP_SWAPS = 100  # the slope and the end counts are taken from here on
WORKERS = 2  # per protocol
CANDIDATES = 100
KEEP = 3  # versions kept in the repository, as the updater's default
TARGET_RSS_MB_PER_100 = 5.0
FD_SLACK = 4
STUB_NAME = "triton_python_backend_stub"


# ----------------------------------------------------------------------------- measuring


def process_tree(pid: int) -> dict[str, Any]:
    """Triton's server process and its Python stubs: memory (MB), stub count, fds, threads."""
    server = psutil.Process(pid)
    stubs = [p for p in server.children(recursive=True) if _is_stub(p)]
    sample: dict[str, Any] = {
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        "stub_rss_mb": 0.0,
        "stubs": 0,
        "fds": server.num_fds(),
        "threads": server.num_threads(),
    }
    for stub in stubs:
        try:
            rss, fds = stub.memory_info().rss, stub.num_fds()
        except psutil.NoSuchProcess:  # exited between the listing and the reading
            continue
        sample["stub_rss_mb"] = round(sample["stub_rss_mb"] + rss / 2**20, 1)
        sample["stubs"] += 1
        sample["fds"] += fds
    sample["rss_mb"] = round(sample["server_rss_mb"] + sample["stub_rss_mb"], 1)
    return sample


def _is_stub(proc: psutil.Process) -> bool:
    try:
        return STUB_NAME in proc.name() or any(STUB_NAME in part for part in proc.cmdline()[:1])
    except psutil.NoSuchProcess:
        return False


def flatness(samples: list[dict[str, Any]], warmup: int = WARMUP_SWAPS) -> dict[str, Any]:
    """Growth after the warm-up: the RSS slope (MB per 100 swaps) and the end against the start
    of the stub count and file descriptors; ``flat`` when all are within their targets."""
    after = [s for s in samples if s["swaps"] >= warmup]
    if len(after) < 3:
        raise ValueError(f"expected at least 3 samples from swap {warmup} on, got {len(after)}")
    first, last = after[0], after[-1]
    _, slope = fit_line([float(s["swaps"]) for s in after], [float(s["rss_mb"]) for s in after])
    growth = {
        "from_swap": first["swaps"],
        "to_swap": last["swaps"],
        "rss_mb_per_100_swaps": round(100 * slope, 2),
        "rss_mb": [first["rss_mb"], last["rss_mb"]],
        "stubs": [first["stubs"], last["stubs"]],
        "stubs_max": max(s["stubs"] for s in after),
        "fds": [first["fds"], last["fds"]],
        "threads": [first["threads"], last["threads"]],
    }
    growth["flat"] = (
        growth["rss_mb_per_100_swaps"] <= TARGET_RSS_MB_PER_100
        and last["stubs"] <= first["stubs"]
        and last["fds"] <= first["fds"] + FD_SLACK
    )
    return growth


# ----------------------------------------------------------------------------- the traffic


class Traffic:
    """Blocking gRPC and HTTP clients, one per thread, sending until stopped; every answer is
    checked against the one before it on the same client."""

    def __init__(self, grpc_url: str, http_url: str, workers: int = WORKERS, model: str = MODEL_NAME) -> None:
        self.grpc_url, self.http_url, self.model = grpc_url, http_url, model
        self.ok = 0
        self.failed: list[str] = []
        self.backwards = 0
        self.states: set[tuple[int, int]] = set()  # (version, delta) that answered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=worker, daemon=True, name=f"traffic-{worker.__name__}-{k}")
            for worker in (self._grpc, self._http)
            for k in range(workers)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError(f"a traffic thread did not finish within {timeout_s:.0f} s of the stop")

    def _saw(self, last: tuple[int, int], version: int, result: Any) -> tuple[int, int]:
        state = result.as_numpy("model_state").reshape(-1, 2)
        first = (int(state[0, 0]), int(state[0, 1]))
        with self._lock:
            self.ok += 1
            if not (state == state[0]).all():
                self.failed.append(f"one request scored by more than one state: {state.tolist()}")
            if first[0] != version:
                self.failed.append(f"model_state {first} from version {version}")
            if first < last:
                self.backwards += 1
            self.states.add(first)
        return max(last, first)

    def _failed(self, message: str) -> None:
        with self._lock:
            self.failed.append(message)

    def _grpc(self) -> None:
        client = grpcclient.InferenceServerClient(self.grpc_url)
        inputs = contract_tensors(grpcclient, request_columns(CANDIDATES))
        last = (0, 0)
        try:
            while not self._stop.is_set():
                try:
                    result = client.infer(self.model, inputs, client_timeout=10)
                    last = self._saw(last, int(result.get_response().model_version), result)
                except InferenceServerException as exc:
                    self._failed(f"grpc: {exc}")
        finally:
            client.close()

    def _http(self) -> None:
        # tritonclient's HTTP client (gevent) must be used from the thread that made it.
        client = httpclient.InferenceServerClient(self.http_url, network_timeout=10.0)
        inputs = contract_tensors(httpclient, request_columns(CANDIDATES))
        last = (0, 0)
        try:
            while not self._stop.is_set():
                try:
                    result = client.infer(self.model, inputs)
                    last = self._saw(last, int(result.get_response()["model_version"]), result)
                except InferenceServerException as exc:
                    self._failed(f"http: {exc}")
        finally:
            client.close()


# ----------------------------------------------------------------------------- the churn


class Churn:
    """The updater's cycle without the stream: learn, write a delta (twice), publish the next
    version cut after them; the repository and the delta log are pruned as the updater does."""

    def __init__(self, repository: Path, config: RankerConfig = SMALL_MODEL, keep: int = KEEP) -> None:
        self.config = config
        self.learner, self.vocabs = Learner(config, device="cpu"), Vocabularies(config)
        self.learner.tracking = True
        self.vocabs.track_changes()
        self.samples = [
            Sample(f"u{i % 7}", "red shoes", f"i{i}", "shoes", "acme", 20.0, i % 2, 0, 0) for i in range(200)
        ]
        self.publisher = Publisher(repository, keep=keep)
        self.log = DeltaLog(self.publisher.model_dir / DELTA_DIR)
        self.cuts: dict[int, int] = {}  # version -> the last delta it was cut after

    def _learn(self) -> None:
        self.learner.learn(encode(self.samples, self.vocabs, self.config.max_tokens))

    def next_version(self) -> int:
        """Two deltas on the version served, then the next version; returns its number."""
        for _ in range(2):
            self._learn()
            touched, changes = self.learner.take_touched(), self.vocabs.take_changes()
            self.log.write(build_delta(self.log.last() + 1, self.learner.model, touched, changes, {}))
        self._learn()
        model, cut, number = self.learner.frozen_copy(), self.log.last(), self.publisher.next_version()
        vocabs = self.vocabs
        version = self.publisher.publish(
            number, lambda d: write_onnx(build_onnx(model, vocabs, version=number, delta_seq=cut), d)
        ).version
        self.cuts[version] = cut
        return version

    def prune(self, served: int) -> None:
        self.publisher.prune(protect={served})
        self.log.prune(min(self.cuts[v] for v in self.publisher.versions()))


async def swap(churn: Churn, triton: TritonModel) -> int:
    """One swap: the next version published and loaded; it is served when this returns."""
    version = await asyncio.to_thread(churn.next_version)
    await triton.load()
    served = await triton.served_version()
    if served != version:
        raise RuntimeError(f"Triton serves version {served} after loading {version}")
    churn.prune(version)
    return version


# ----------------------------------------------------------------------------- the run


async def churn_under_traffic(
    stack: EmbeddedStack, swaps: int, sample_every: int, progress: Progress, workers: int = WORKERS
) -> dict[str, Any]:
    """``swaps`` swaps under traffic (``workers`` clients per protocol); Triton's process tree
    before the first (``samples[0]``) and every ``sample_every`` swaps."""
    a = stack.addresses
    pid = stack.triton.process.proc.pid  # type: ignore[union-attr]
    churn = Churn(Path(a.repository))
    async with TritonModel(a.triton_grpc, key=stack.triton.key) as triton:
        await asyncio.to_thread(churn.next_version)
        await triton.load()
        traffic = Traffic(a.triton_grpc, a.triton_http, workers=workers)
        samples = [{"swaps": 0, "seconds": 0.0, "requests": 0, **process_tree(pid)}]
        started = time.perf_counter()
        traffic.start()
        try:
            for n in range(1, swaps + 1):
                await swap(churn, triton)
                if n % sample_every == 0:
                    samples.append(
                        {
                            "swaps": n,
                            "seconds": round(time.perf_counter() - started, 1),
                            "requests": traffic.ok,
                            **process_tree(pid),
                        }
                    )
                    s = samples[-1]
                    progress(
                        f"{n}/{swaps} swaps, {s['seconds']:.0f} s, {traffic.ok:,} requests "
                        f"({len(traffic.failed)} failed), Triton RSS {s['rss_mb']} MB "
                        f"({s['stubs']} stubs, {s['fds']} fds, {s['threads']} threads)"
                    )
        finally:
            await asyncio.to_thread(traffic.stop)
        elapsed = time.perf_counter() - started
    in_place = {v for v, seq in traffic.states if seq > churn.cuts.get(v, seq)}
    return {
        "swaps": swaps,
        "seconds": round(elapsed, 1),
        "seconds_per_swap": round(elapsed / swaps, 3),
        "requests": traffic.ok,
        "requests_per_s": round(traffic.ok / elapsed, 1),
        "failed": len(traffic.failed),
        "failures": traffic.failed[:10],
        "backwards": traffic.backwards,
        "versions_answered": len({v for v, _ in traffic.states}),
        "versions_served_with_deltas_in_place": len(in_place),
        "samples": samples,
    }


def run(out: Path, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-swaps-") as tmp:
        stack = EmbeddedStack(
            Path(tmp), kafka_port=free_port(), triton_http_port=free_port(), triton_grpc_port=free_port()
        )
        progress("starting the embedded stack (broker, PostgreSQL, Triton)")
        stack.start()
        try:
            result = asyncio.run(churn_under_traffic(stack, SWAPS, SAMPLE_EVERY, progress))
        finally:
            stack.stop()
    growth = flatness(result["samples"])
    result["growth"] = growth
    result["targets"] = {
        "no_failed_request": {"target": 0, "measured": result["failed"], "met": result["failed"] == 0},
        "rss_mb_per_100_swaps": {
            "target": TARGET_RSS_MB_PER_100,
            "measured": growth["rss_mb_per_100_swaps"],
            "met": growth["rss_mb_per_100_swaps"] <= TARGET_RSS_MB_PER_100,
        },
        "stubs_and_fds_flat": {
            "target": f"stubs not above, fds within {FD_SLACK} of swap {growth['from_swap']}",
            "measured": {"stubs": growth["stubs"], "fds": growth["fds"]},
            "met": growth["stubs"][1] <= growth["stubs"][0]
            and growth["fds"][1] <= growth["fds"][0] + FD_SLACK,
        },
    }
    return result
