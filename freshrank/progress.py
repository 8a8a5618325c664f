"""Progress bars for the long commands (bench, replay, warm start, dead-letter replay), with rich.

Each bar shows what is done of what there is, the rate and the time left, on stderr. They draw
only on a terminal and never with ``--json`` (``quiet``): a log file or a CI job keeps the
plain progress lines, and stdout carries nothing but the result.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """``1,234 events/s``: rich's speed over its recent window, in the bar's own unit."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if task.speed is None:
            return Text(f"– {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:,.0f} {unit}/s", style="progress.data.speed")


class Bar:
    """One task of :class:`Bars`: :meth:`advance` by what was done, or :meth:`update` to a count."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, completed: float, total: float | None = None) -> None:
        if total is None:
            self._progress.update(self._task, completed=completed)
        else:
            self._progress.update(self._task, completed=completed, total=total)

    def done(self) -> None:
        """Stop its clock where it is (what is done stays shown)."""
        self._progress.stop_task(self._task)


class Bars:
    """``with Bars(quiet) as bars: bar = bars.add("events", total=n)``."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.enabled,
            # Lines printed while it draws go above it; the bar stays at the bottom.
            redirect_stdout=True,
            redirect_stderr=True,
        )

    def __enter__(self) -> Bars:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def add(self, description: str, total: float | None = None, unit: str = "events") -> Bar:
        return Bar(self._progress, self._progress.add_task(description, total=total, unit=unit))
