"""Zero-downtime swaps: 100 new versions loaded under steady HTTP and gRPC traffic, with deltas
applied in place between them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from exporter.delta import DELTA_DIR, DeltaLog, build_delta
from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import Publisher
from exporter.triton import TritonModel
from freshrank.stack import EmbeddedStack
from rankcore.features import Vocabularies, encode
from rankcore.sample import Sample
from tests.e2e.helpers import SMALL_MODEL, request_columns, request_tensors
from updater.learner import Learner

pytestmark = pytest.mark.e2e

SWAPS = 100
WORKERS = 3  # per protocol
CANDIDATES = 100


def tensors(module: object) -> list[object]:
    return request_tensors(module, request_columns(CANDIDATES))


def triton_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def state_of(result: object) -> tuple[int, int]:
    state = result.as_numpy("model_state").reshape(-1, 2)  # type: ignore[attr-defined]
    assert (state == state[0]).all(), f"one request scored by more than one state: {state}"
    return int(state[0, 0]), int(state[0, 1])


class Load:
    def __init__(self) -> None:
        self.ok = 0
        self.failed: list[str] = []
        self.backwards = 0
        self.states: set[tuple[int, int]] = set()  # (version, delta) that answered
        self.stop = asyncio.Event()

    def saw(self, last: tuple[int, int], version: int, state: tuple[int, int]) -> tuple[int, int]:
        """One answer: its version and state must never go back (per client)."""
        self.ok += 1
        if state[0] != version:
            self.failed.append(f"model_state {state} from version {version}")
        if state < last:
            self.backwards += 1
        self.states.add(state)
        return max(last, state)

    async def http_worker(self, url: str) -> None:
        client = httpaio.InferenceServerClient(url)
        last = (0, 0)
        try:
            while not self.stop.is_set():
                try:
                    result = await client.infer("ranker", tensors(httpclient))
                    version = int(result.get_response()["model_version"])
                    last = self.saw(last, version, state_of(result))
                except InferenceServerException as exc:
                    self.failed.append(f"http: {exc}")
        finally:
            await client.close()

    def grpc_worker(self, url: str) -> None:
        client = grpcclient.InferenceServerClient(url)
        last = (0, 0)
        try:
            while not self.stop.is_set():
                try:
                    result = client.infer("ranker", tensors(grpcclient), client_timeout=10)
                    version = int(result.get_response().model_version)
                    last = self.saw(last, version, state_of(result))
                except InferenceServerException as exc:
                    self.failed.append(f"grpc: {exc}")
        finally:
            client.close()


# A stack of its own: it measures Triton's memory, which other tests' models would add to.
async def test_hundred_swaps_under_load_drop_no_request(stack: EmbeddedStack, tmp_path: Path) -> None:
    a = stack.addresses
    learner, vocabs = Learner(SMALL_MODEL, device="cpu"), Vocabularies(SMALL_MODEL)
    samples = [
        Sample(f"u{i % 7}", "red shoes", f"i{i}", "shoes", "acme", 20.0, i % 2, 0, 0) for i in range(200)
    ]
    publisher = Publisher(Path(a.repository), keep=3)
    log = DeltaLog(publisher.model_dir / DELTA_DIR)
    learner.tracking = True
    vocabs.track_changes()
    cuts: dict[int, int] = {}

    def publish_next() -> int:
        """Two deltas on the version served, then the next version, cut after them."""
        for _ in range(2):
            learner.learn(encode(samples, vocabs, SMALL_MODEL.max_tokens))
            seq = log.last() + 1
            log.write(build_delta(seq, learner.model, learner.take_touched(), vocabs.take_changes(), {}))
        learner.learn(encode(samples, vocabs, SMALL_MODEL.max_tokens))
        model, cut, number = learner.frozen_copy(), log.last(), publisher.next_version()
        version = publisher.publish(
            number, lambda d: write_onnx(build_onnx(model, vocabs, version=number, delta_seq=cut), d)
        ).version
        cuts[version] = cut
        return version

    async with TritonModel(a.triton_grpc) as triton:
        await asyncio.to_thread(publish_next)
        await triton.load()
        triton_pid = stack.triton.process.proc.pid  # type: ignore[union-attr]
        rss_before = triton_rss(triton_pid)
        load = Load()
        workers = [asyncio.create_task(load.http_worker(a.triton_http)) for _ in range(WORKERS)]
        workers += [
            asyncio.create_task(asyncio.to_thread(load.grpc_worker, a.triton_grpc)) for _ in range(WORKERS)
        ]
        started = time.monotonic()
        rss: list[int] = []
        try:
            for _ in range(SWAPS):
                version = await asyncio.to_thread(publish_next)
                await triton.load()
                assert await triton.served_version() == version
                publisher.prune(protect={version})
                log.prune(min(cuts[v] for v in publisher.versions()))
                rss.append(triton_rss(triton_pid))
        finally:
            load.stop.set()
            await asyncio.gather(*workers)
        elapsed = time.monotonic() - started
        rss_after = triton_rss(triton_pid)

    print(
        f"{SWAPS} swaps in {elapsed:.0f} s, {load.ok} requests ({load.ok / elapsed:.0f}/s), "
        f"{len(load.failed)} failed, Triton RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )
    assert load.failed == []
    assert load.backwards == 0
    # Deltas were served in place (a state past its version's cut), on most versions.
    in_place = {v for v, seq in load.states if seq > cuts.get(v, seq)}
    assert len(in_place) > SWAPS // 2, sorted(load.states)[-10:]
    assert load.ok > SWAPS * 10
    assert rss_after < rss_before + 300 * 2**20  # bounded
    assert rss[99] < rss[49] + 100 * 2**20  # and not growing with every swap
