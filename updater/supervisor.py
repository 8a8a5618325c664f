"""The supervisor: the updater's named tasks, owned, watched and closed in order.

As aiojobs' scheduler does: every task is spawned through it and kept by name, work that
must not be cut short is spawned as a tracked shield (its caller may be cancelled, the work
goes on and :meth:`Supervisor.finish` still waits for it), and :meth:`Supervisor.close`
cancels what is left and reports what failed. The service decides the order (drain,
checkpoint, commit, close); the supervisor gives each step its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if name in self._tasks and not self._tasks[name].done():
            coro.close()
            raise RuntimeError(f"a task named {name!r} is already running")
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Watch a task a component owns (it stays that component's to close)."""
        self._tasks[task.get_name()] = task

    async def shield(self, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` as a tracked task that the caller's cancellation does not stop."""
        return await asyncio.shield(self.spawn(name, coro))

    def get(self, name: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def failure(self) -> tuple[str, BaseException] | None:
        """The first task that ended with an exception, if any."""
        for name, task in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                return name, task.exception()  # type: ignore[return-value]
        return None

    async def wait(self, stopping: asyncio.Event) -> None:
        """Return when ``stopping`` is set or any task ends; raise a task's exception."""
        stop = asyncio.create_task(stopping.wait(), name="stop-requested")
        try:
            await asyncio.wait([stop, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await asyncio.wait([stop])
        failed = self.failure()
        if failed is not None:
            raise failed[1]

    async def finish(self, name: str, timeout_s: float) -> bool:
        """Wait for task ``name`` to end by itself; past ``timeout_s`` cancel it. True if it finished."""
        task = self._tasks.get(name)
        if task is None:
            return True
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if done:
            return True
        log.error("task %s still running after %.0f s; cancelling it", name, timeout_s)
        task.cancel()
        await asyncio.wait([task])
        return False

    async def cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def close(self) -> None:
        """Cancel every task still running, wait for all, and log each failure once."""
        for task in self._tasks.values():
            task.cancel()
        tasks = list(self._tasks.items())
        results = await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        for (name, _), result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("task %s failed: %s", name, result, exc_info=result)
        self._tasks.clear()
