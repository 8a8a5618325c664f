"""The delta stream's own task: what it does with a delta it cannot write or that the guard refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from exporter.delta import Delta, DeltaLog
from exporter.freshness import Freshness
from exporter.records import AddDelta, ListSink
from exporter.stream import DeltaStream


async def settle(stream: DeltaStream) -> None:
    for _ in range(100):
        if not stream.busy:
            return
        await asyncio.sleep(0.01)


async def test_a_delta_that_cannot_be_written_is_counted_and_the_stream_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "deltas"
    blocked.write_text("a file where the directory should be")
    freshness = Freshness()
    stream = DeltaStream(DeltaLog(blocked), None, freshness)
    stream.start()
    try:
        assert stream.submit(Delta(1, 0, {"dense.w1": np.zeros(2, np.float32)}), [1_000])
        await settle(stream)
        assert stream.counters.failed == 1 and stream.counters.written == 0
        assert freshness.take() == [1_000]  # the actions wait for a state that has them
        assert stream.task is not None and not stream.task.done()
        # Refused by the guard: not written, and its number is used by the next one.
        assert stream.submit(Delta(1, 0, {"dense.w1": np.full(2, np.nan, np.float32)}), [])
        await settle(stream)
        assert stream.counters.refused == 1 and stream.next_seq == 1
    finally:
        await stream.close()


async def test_each_delta_written_is_recorded_with_the_offsets_it_learned(tmp_path: Path) -> None:
    sink = ListSink()
    stream = DeltaStream(DeltaLog(tmp_path / "deltas"), None, Freshness(), sink=sink)
    stream.start()
    try:
        delta = Delta(1, 1_700, {"dense.w1": np.zeros(2, np.float32)}, 640, {"events:0": 700})
        assert stream.submit(delta, [])
        assert stream.handed_seq == 1 and stream.counters.last_seq == 0  # handed over, not written yet
        await settle(stream)
        (op,) = sink.ops
        size = (tmp_path / "deltas" / "000000000001.npz").stat().st_size
        assert op == AddDelta(1, {"events:0": 700}, 640, 0, 0, size, 1_700)
        assert stream.handed_seq == 1 == stream.counters.last_seq
    finally:
        await stream.close()
