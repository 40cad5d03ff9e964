"""Waiting in tests for something another task or process does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Return once ``predicate()`` holds; fail the test after ``timeout_s``.

    Polling is the point here: the condition is set by code that offers no event.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)
