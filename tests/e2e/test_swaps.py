"""Zero-downtime swaps: 100 new versions loaded under steady HTTP and gRPC traffic, with deltas
applied in place between them; Triton's memory, stub processes and file descriptors stay flat
(``freshrank bench swaps`` runs the same churn for 500)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from exporter.triton import TritonModel
from freshrank.bench.swaps import Churn, Traffic, flatness, process_tree, swap
from freshrank.stack import EmbeddedStack

pytestmark = pytest.mark.e2e

SWAPS = 100
SAMPLE_EVERY = 10
WORKERS = 3  # per protocol


# A stack of its own: it measures Triton's memory, which other tests' models would add to.
async def test_hundred_swaps_under_load_drop_no_request(stack: EmbeddedStack, tmp_path: Path) -> None:
    a = stack.addresses
    churn = Churn(Path(a.repository))
    pid = stack.triton.process.proc.pid  # type: ignore[union-attr]
    async with TritonModel(a.triton_grpc) as triton:
        await asyncio.to_thread(churn.next_version)
        await triton.load()
        before = process_tree(pid)
        traffic = Traffic(a.triton_grpc, a.triton_http, workers=WORKERS)
        samples = []
        started = time.monotonic()
        traffic.start()
        try:
            for n in range(1, SWAPS + 1):
                await swap(churn, triton)
                if n % SAMPLE_EVERY == 0:
                    samples.append({"swaps": n, **process_tree(pid)})
        finally:
            await asyncio.to_thread(traffic.stop)
        elapsed = time.monotonic() - started

    growth = flatness(samples, warmup=SAMPLE_EVERY)
    print(
        f"{SWAPS} swaps in {elapsed:.0f} s, {traffic.ok} requests ({traffic.ok / elapsed:.0f}/s), "
        f"{len(traffic.failed)} failed, Triton RSS {before['rss_mb']} -> {samples[-1]['rss_mb']} MB, "
        f"growth {growth}"
    )
    assert traffic.failed == []
    assert traffic.backwards == 0
    # Deltas were served in place (a state past its version's cut), on most versions.
    in_place = {v for v, seq in traffic.states if seq > churn.cuts.get(v, seq)}
    assert len(in_place) > SWAPS // 2, sorted(traffic.states)[-10:]
    assert traffic.ok > SWAPS * 10
    # Bounded, and not growing with every swap: no stub, fd or thread left behind by a swap.
    assert samples[-1]["rss_mb"] < before["rss_mb"] + 300
    assert samples[-1]["rss_mb"] < samples[4]["rss_mb"] + 100
    assert samples[-1]["stubs"] <= max(before["stubs"], 1) + 1, samples
    assert growth["fds"][1] <= growth["fds"][0] + 8, samples
    assert samples[-1]["threads"] <= samples[0]["threads"] + 8, samples
