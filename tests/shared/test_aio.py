"""Loops that run until cancelled stop when cancelled, whatever the code they await does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.aio import event_set_within, stop_if_cancelled
from shared.store import SessionStore
from shared.store.deltas import DeltaBatcher


async def test_an_event_set_in_time_is_seen_and_one_never_set_times_out() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, event.set)
    assert await event_set_within(event, 5.0) is True
    event.clear()
    started = asyncio.get_running_loop().time()
    assert await event_set_within(event, 0.05) is False
    assert asyncio.get_running_loop().time() - started >= 0.05


async def test_a_cancel_on_the_tick_the_wait_times_out_still_stops_the_waiter() -> None:
    raced = 0
    for _ in range(40):
        waiter = asyncio.create_task(event_set_within(asyncio.Event(), 0.01))
        await asyncio.sleep(0)  # it is waiting now; its timer fires 10 ms from here
        delivered: list[bool] = []

        def cancel(waiter: asyncio.Task[bool] = waiter, delivered: list[bool] = delivered) -> None:
            if not waiter.done():  # a busy loop may have let the wait end first: no race
                delivered.append(True)
                waiter.cancel()

        asyncio.get_running_loop().call_later(0.01, cancel)
        try:
            await waiter
        except asyncio.CancelledError:
            raced += 1
            continue
        assert not delivered, "a cancel delivered on the tick was swallowed"
    assert raced >= 10  # most rounds raced the cancel against the timer


async def test_a_swallowed_cancel_is_raised_again_at_the_next_check() -> None:
    async def body() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # what a careless library does
            await asyncio.sleep(1)
        stop_if_cancelled()
        return "went on"

    with pytest.raises(asyncio.CancelledError):
        await body()


async def test_a_batcher_whose_flush_swallows_its_cancel_still_stops(
    store: SessionStore,
) -> None:
    batcher = DeltaBatcher(store, flush_s=0.01)
    flushing = asyncio.Event()

    async def swallowing_flush(only: object = None) -> None:
        flushing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)

    batcher.flush = swallowing_flush  # type: ignore[method-assign]
    task = asyncio.create_task(batcher.run())
    await asyncio.wait_for(flushing.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=2.0)
    assert done, "the batcher went on after it was cancelled"
    assert task.cancelled()
