"""Waiting with a time limit in loops that run until cancelled.

On Python 3.11, a cancel that one of the libraries below us catches and drops leaves the
task's cancel request counted but undelivered; from then on every ``asyncio.timeout``
the task enters records that count and turns each of its own expiries into
``TimeoutError``, so a ``while True`` loop that polls with a timeout never stops. The
loops that run for a process's lifetime (the delta batcher, the webhook sender) wait
here instead, and ``stop_if_cancelled`` turns a dropped cancel back into one.
"""

from __future__ import annotations

import asyncio


async def event_set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """True once ``event`` is set, False when ``timeout_s`` passes first. A cancel of the
    caller always propagates: no timer of ours ever cancels the caller's task."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait((waiter,), timeout=timeout_s)
    finally:
        waiter.cancel()
    return bool(done)


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop and that request
    was never delivered (some awaited library code swallowed it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
