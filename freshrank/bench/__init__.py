"""freshrank's benchmarks: ``freshrank bench <name> [--json] [--out DIR]``.

Each benchmark is a module here with ``run(out: Path, progress: Progress) -> dict``; it prints
its progress to stderr, returns one JSON-able result and writes PNGs into ``out`` where a
picture helps. Numbers are compared within one run (ratios), since shared machines are noisy.
They are never run as timed tests.
"""

from __future__ import annotations

NAMES = (
    "throughput",
    "freshness",
    "snapshot",
    "serving",
    "swaps",
    "quality",
    "replay",
    "gate",
    "vocab",
    "text",
)
