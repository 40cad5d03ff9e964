"""What the engine's senders (webhooks, channel replies) share: an HTTP client session
for outgoing calls, and the loop that runs a sender's pass on a wake-up or a poll."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

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
