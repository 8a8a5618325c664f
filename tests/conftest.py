"""Shared test fixtures: fail any test that leaves an unhandled exception on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(None)
    assert not errors, f"unhandled event-loop errors: {errors}"
