"""The sweeper: sends wake-ups to sessions that have pending turns and no live lock holder.

Recovery therefore waits at most one lock lease plus one sweep interval (plus the
grace the store applies), never the broker's visibility timeout. One sweeper runs at a
time across all workers, elected for each interval; wake-ups back off per session
(``rewake.lua``), so a queue that is merely backed up is not flooded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shared.aio import stop_if_cancelled
from shared.store import SessionStore, Sweep
from shared.wakeup import WakeUps

log = logging.getLogger(__name__)


async def run_sweeper(
    store: SessionStore,
    wake_ups: WakeUps,
    held: Callable[[], frozenset[str]],
    renudged: Callable[[], None] = lambda: None,
) -> None:
    """Sweep every ``CHATLANE_SWEEP_INTERVAL_S`` when elected, until cancelled. ``held``:
    the sessions this process drains (they need no probe); ``renudged`` is called for
    each wake-up sent."""
    interval = store.settings.sweep_interval_s
    sweep = Sweep(store)
    while True:
        stop_if_cancelled()  # a stop that Redis's client swallowed mid-sweep (shared/aio.py)
        await asyncio.sleep(interval)
        try:
            # Held for most of an interval: other workers' sweepers skip this beat.
            if not await sweep.elect(int(interval * 900)):
                continue
            stalled = await sweep.once(held())
            for keys in stalled:
                await wake_ups.send(keys.tenant, keys.session)
                renudged()
            if stalled:
                log.info("sweeper woke %d stalled sessions", len(stalled))
        except Exception:
            log.warning("sweep failed; retrying next interval", exc_info=True)
