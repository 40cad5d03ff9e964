"""Stop notices: how a worker hears, within milliseconds, that an attempt it runs was
made void (its turn was cancelled, or a message joined its coalesced group).

The scripts that stop an attempt move the session's stop generation on and announce
``<tenant>:<session> <generation>`` on one channel every worker listens to. A notice is
only a hurry-up: commits, token deltas and lease renewals of an attempt from an older
generation are refused in Redis, so a missed notice costs at most a third of a lease
(the next renewal reports it), never a write.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from shared.aio import stop_if_cancelled
from shared.store import EventHub, Heartbeat

log = logging.getLogger(__name__)

RECHECK_S = 30.0


async def follow_stops(hub: EventHub, channel: str, heartbeat: Heartbeat) -> None:
    """Stop the attempts the notices on ``channel`` name, until cancelled; after a gap in
    the subscription (a reconnect), ask every lease's generation at once."""
    while True:
        stop_if_cancelled()
        try:
            async with hub.watch(channel) as watcher:
                await heartbeat.beat()  # notices sent before the subscription
                while True:
                    stop_if_cancelled()
                    if not await watcher.wait(RECHECK_S):
                        continue
                    notices, stale = watcher.take_notices()
                    for notice in notices:
                        member, _, generation = notice.rpartition(" ")
                        if generation.isdigit():
                            heartbeat.stop(member, int(generation))
                    if stale:
                        await heartbeat.beat()
        except (RedisError, OSError):
            log.warning("stop notices unavailable; retrying", exc_info=True)
            await asyncio.sleep(1)
