"""Shared test fixtures: fail any test that leaves an unhandled exception on the event loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    # Collect now, while this test's loop runs: a leaked connection is reported here, by the
    # test that leaked it, not by whichever later test happens to trigger a collection.
    gc.collect()
    loop.set_exception_handler(None)
    assert not errors, f"unhandled event-loop errors: {errors}"
