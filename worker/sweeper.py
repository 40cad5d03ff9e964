"""The sweeper: re-nudges sessions that have pending turns and no live lock holder.

Recovery therefore waits at most one lock lease plus one sweep interval, never the
broker's visibility timeout. One sweeper runs at a time across all workers, elected
by a short-lived lock of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shared.keys import GlobalKeys, SessionKeys, parse_member
from shared.schemas import now_ms
from shared.settings import Settings

log = logging.getLogger(__name__)

Nudge = Callable[[str, str], None]


def sweep_once(client: Any, scripts: Any, settings: Settings, nudge: Nudge) -> int:
    """One pass over the active-session index; returns how many sessions were nudged.

    A session with no pending turn and no lock leaves the index, unless a turn was
    accepted since this pass read its score (``forget.lua`` compares the score).
    """
    index = GlobalKeys(settings.key_prefix).active
    grace_ms = int(settings.sweep_interval_s * 1000) * 2
    now = now_ms()
    nudged = 0
    cursor = 0
    while True:
        cursor, batch = client.zscan(index, cursor=cursor, count=500, score_cast_func=str)
        if batch:
            sessions = [SessionKeys(settings.key_prefix, *parse_member(m)) for m, _ in batch]
            pipe = client.pipeline(transaction=False)
            for keys in sessions:
                pipe.exists(keys.lock)
                pipe.llen(keys.mailbox)
            states = pipe.execute()
            for i, (member, score) in enumerate(batch):
                locked, pending = states[2 * i], states[2 * i + 1]
                if locked or now - int(float(score)) <= grace_ms:
                    continue  # a live holder drains it, or its own nudge is still fresh
                keys = sessions[i]
                if not pending:
                    scripts.forget(keys=[index], args=[member, score])
                # At most one re-nudge per lease, so a backed-up queue is not flooded.
                elif client.set(keys.nudged, "1", nx=True, px=settings.lock_ttl_ms):
                    nudge(keys.tenant, keys.session)
                    nudged += 1
        if cursor == 0:
            return nudged


class Sweeper:
    """Runs ``sweep_once`` every ``sweep_interval_s`` in a daemon thread, when elected."""

    def __init__(self, client: Any, scripts: Any, settings: Settings, nudge: Nudge) -> None:
        self._client = client
        self._scripts = scripts
        self._settings = settings
        self._nudge = nudge
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatlane-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self._settings.sweep_interval_s
        election = GlobalKeys(self._settings.key_prefix).sweeper_lock
        while not self._stop.wait(interval):
            try:
                # Held for most of an interval: other workers' sweepers skip this beat.
                if self._client.set(election, "1", nx=True, px=int(interval * 900)):
                    nudged = sweep_once(self._client, self._scripts, self._settings, self._nudge)
                    if nudged:
                        log.info("sweeper re-nudged %d stalled sessions", nudged)
            except Exception:
                log.warning("sweep failed; retrying next interval", exc_info=True)
