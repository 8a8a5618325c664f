"""The supervisor: named tasks, tracked shields, failures surfaced, closed with deadlines."""

from __future__ import annotations

import asyncio

import pytest

from updater.supervisor import Supervisor


async def test_wait_returns_on_stop_and_raises_a_task_failure() -> None:
    sup = Supervisor()
    stopping = asyncio.Event()
    sup.spawn("idle", asyncio.sleep(3600))
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    await asyncio.wait_for(sup.wait(stopping), 2)  # returns: stop requested, nothing failed

    async def boom() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("broker gone")

    sup.spawn("boom", boom())
    with pytest.raises(RuntimeError, match="broker gone"):
        await asyncio.wait_for(sup.wait(asyncio.Event()), 2)
    failure = sup.failure()
    assert failure is not None and failure[0] == "boom"
    await sup.close()
    assert sup.names == []


async def test_a_name_runs_once_at_a_time() -> None:
    sup = Supervisor()
    sup.spawn("consume", asyncio.sleep(3600))
    with pytest.raises(RuntimeError, match="already running"):
        sup.spawn("consume", asyncio.sleep(0))
    await sup.close()


async def test_a_shield_outlives_its_cancelled_caller_and_finish_waits_for_it() -> None:
    sup = Supervisor()
    done: list[str] = []

    async def checkpoint() -> None:
        await asyncio.sleep(0.2)
        done.append("written")

    async def consume() -> None:
        await sup.shield("final-checkpoint", checkpoint())

    sup.spawn("consume", consume())
    await asyncio.sleep(0.05)
    assert await sup.finish("consume", 0.01) is False  # consume is cancelled after its deadline...
    assert done == []
    assert await sup.finish("final-checkpoint", 2.0) is True  # ...the shielded work goes on
    assert done == ["written"]
    await sup.close()


async def test_finish_cancels_after_the_deadline_and_close_logs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor()
    sup.spawn("stuck", asyncio.sleep(3600))

    async def fails() -> None:
        raise ValueError("bad state")

    task = sup.spawn("fails", fails())
    await asyncio.wait([task])
    assert await sup.finish("stuck", 0.05) is False
    stuck = sup.get("stuck")
    assert stuck is not None and stuck.cancelled()
    await sup.close()
    assert "task fails failed: bad state" in caplog.text
