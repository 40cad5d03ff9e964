"""What the engine's senders (webhooks, channel replies) share: an HTTP client session
for outgoing calls, the loop that runs a sender's pass on a wake-up or a poll, the sends
in flight, and the backoff between a send's tries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from shared.aio import event_set_within, stop_if_cancelled

log = logging.getLogger(__name__)


def client_session(
    timeout_s: float, in_flight: int, user_agent: str, *, reuse: bool = True
) -> aiohttp.ClientSession:
    """Connect within at most 5 s, finish a call within ``timeout_s``; ``reuse``: keep
    connections alive between calls (to one platform's API, say)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=in_flight, force_close=not reuse),
        timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0)),
        headers={"user-agent": user_agent},
    )


async def keep_passing(
    one_pass: Callable[[], Awaitable[bool]], wake: asyncio.Event, poll_s: float, what: str
) -> None:
    """Run ``one_pass`` whenever ``wake`` is set, and every ``poll_s`` anyway, until
    cancelled; again at once while it answers True (it had a full batch). A pass that
    fails is logged and tried again a second later."""
    while True:
        stop_if_cancelled()
        await event_set_within(wake, poll_s)
        wake.clear()
        try:
            while await one_pass():
                pass
        except Exception:
            log.warning("%s failed; retrying", what, exc_info=True)
            await asyncio.sleep(1)


def backoff_s(attempts: int, first_s: float, max_s: float) -> float:
    """The pause after ``attempts`` failed tries: ``first_s``, doubling with each try,
    ±50 % jitter, at most ``max_s``."""
    return float(min(first_s * 2.0 ** (attempts - 1) * (0.5 + random.random()), max_s))


class InFlight:
    """A sender's sends, each a task of its own, at most ``limit`` at once: a peer slow to
    answer holds up its own send, never the sender's next pass. Claim ``room(batch)``
    at a time and ``start`` what was claimed; a send ending wakes the sender when the last
    claim filled every place (more may be waiting)."""

    def __init__(self, limit: int, wake: asyncio.Event, what: str) -> None:
        self._limit = limit
        self._wake = wake
        self._what = what
        self._tasks: set[asyncio.Task[None]] = set()
        self._full = False

    def room(self, batch: int) -> int:
        return min(batch, self._limit - len(self._tasks))

    def start(self, sends: list[Coroutine[Any, Any, None]], room: int) -> None:
        """Run ``sends``, claimed for ``room`` places."""
        self._full = len(sends) == room
        for send in sends:
            task = asyncio.create_task(send)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._full:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed", self._what, exc_info=task.exception())

    async def close(self) -> None:
        """Cancel the sends still running and wait for them (their claims run out)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
