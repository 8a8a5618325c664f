"""Zero-downtime swaps: 100 new versions loaded under steady HTTP and gRPC traffic, with deltas
applied in place between them; Triton's memory, stub processes and file descriptors stay flat
(``freshrank bench swaps`` runs the same churn for 500)."""

from __future__ import annotations

import pytest

from freshrank.bench.common import Progress
from freshrank.bench.swaps import churn_under_traffic, flatness
from freshrank.stack import EmbeddedStack

pytestmark = pytest.mark.e2e

SWAPS = 100
SAMPLE_EVERY = 10
WORKERS = 3  # per protocol


# A stack of its own: it measures Triton's memory, which other tests' models would add to.
async def test_hundred_swaps_under_load_drop_no_request(stack: EmbeddedStack) -> None:
    result = await churn_under_traffic(stack, SWAPS, SAMPLE_EVERY, Progress("test_swaps"), workers=WORKERS)
    before, samples = result["samples"][0], result["samples"][1:]

    growth = flatness(samples, warmup=SAMPLE_EVERY)
    print(
        f"{SWAPS} swaps in {result['seconds']:.0f} s, {result['requests']} requests "
        f"({result['requests_per_s']:.0f}/s), {result['failed']} failed, Triton RSS "
        f"{before['rss_mb']} -> {samples[-1]['rss_mb']} MB, growth {growth}"
    )
    assert result["failed"] == 0, result["failures"]
    assert result["backwards"] == 0
    # Deltas were served in place (a state past its version's cut), on most versions.
    assert result["versions_served_with_deltas_in_place"] > SWAPS // 2
    assert result["requests"] > SWAPS * 10
    # Bounded, and not growing with every swap: no stub, fd or thread left behind by a swap.
    assert samples[-1]["rss_mb"] < before["rss_mb"] + 300
    assert samples[-1]["rss_mb"] < samples[4]["rss_mb"] + 100
    assert samples[-1]["stubs"] <= max(before["stubs"], 1) + 1, samples
    assert growth["fds"][1] <= growth["fds"][0] + 8, samples
    assert samples[-1]["threads"] <= samples[0]["threads"] + 8, samples
