"""Progress bars: counts, rate and time left on a terminal; nothing when quiet or not a terminal."""

from __future__ import annotations

import io
import time

from rich.console import Console

from freshrank.progress import Bars


def draw(quiet: bool, terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    with Bars(quiet=quiet, console=console) as bars:
        bar = bars.add("replaying", total=1_000, unit="events")
        for _ in range(10):
            bar.advance(100)
            time.sleep(0.01)
    return out.getvalue()


def test_a_bar_shows_the_count_the_rate_and_the_time_left_on_a_terminal() -> None:
    shown = draw(quiet=False, terminal=True)
    assert "replaying" in shown and "1000/1000" in shown
    assert "events/s" in shown and "eta" in shown


def test_quiet_or_not_a_terminal_draws_nothing() -> None:
    assert draw(quiet=True, terminal=True) == ""
    assert draw(quiet=False, terminal=False) == ""
