"""The sweeper: re-nudges sessions that have pending turns and no live lock holder.

Recovery therefore waits at most one lock lease plus one sweep interval (plus the
grace below), never the broker's visibility timeout. One sweeper runs at a time across
all workers, elected by a short-lived lock of its own. Re-nudges back off per session
(``renudge.lua``), so a queue that is merely backed up is not flooded.
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
MAX_RENUDGE_WAIT_MS = 15 * 60 * 1000
BATCH = 500


def _raw_score(value: bytes | str) -> str:
    """The score exactly as Redis printed it, as ``forget.lua`` will see it from ZSCORE."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Sweep:
    """One sweeper's memory between passes: sessions seen idle, by the score they had."""

    def __init__(self, client: Any, scripts: Any, settings: Settings, nudge: Nudge) -> None:
        self._client = client
        self._scripts = scripts
        self._settings = settings
        self._nudge = nudge
        self._idle: dict[str, str] = {}

    def once(self) -> int:
        """One pass over the sessions not accepted into lately; returns how many were nudged.

        Sessions accepted into within the grace period are not even read: their own
        wake-up is fresh. A session leaves the index only when two passes in a row saw it
        idle (no lock, nothing pending) with the same score, and ``forget.lua`` confirms
        the score is still unchanged: no clock comparison between hosts is involved.
        """
        client, scripts, settings = self._client, self._scripts, self._settings
        index = GlobalKeys(settings.key_prefix).active
        cutoff = now_ms() - int(settings.sweep_interval_s * 1000) * 2
        idle: dict[str, str] = {}
        forget: list[tuple[str, str]] = []
        stalled: list[SessionKeys] = []
        offset = 0
        while True:
            batch = client.zrange(
                index, "-inf", cutoff, byscore=True, offset=offset, num=BATCH,
                withscores=True, score_cast_func=_raw_score,
            )  # fmt: skip
            offset += len(batch)
            sessions = [SessionKeys(settings.key_prefix, *parse_member(m)) for m, _ in batch]
            pipe = client.pipeline(transaction=False)
            for keys in sessions:
                pipe.exists(keys.lock)
                pipe.llen(keys.mailbox)
            states = pipe.execute() if sessions else []
            for i, (member, score) in enumerate(batch):
                locked, pending = states[2 * i], states[2 * i + 1]
                if locked:
                    continue  # a live holder drains it
                if pending:
                    stalled.append(sessions[i])
                elif self._idle.get(member) == score:
                    forget.append((member, score))
                else:
                    idle[member] = score
            if len(batch) < BATCH:
                break
        self._idle = idle
        pipe = client.pipeline(transaction=False)
        for member, score in forget:
            scripts.forget(keys=[index], args=[member, score], client=pipe)
        for keys in stalled:
            scripts.renudge(
                keys=[keys.nudged, keys.meta],
                args=[settings.lock_ttl_ms, MAX_RENUDGE_WAIT_MS],
                client=pipe,
            )
        results = pipe.execute() if forget or stalled else []
        nudged = 0
        for keys, allowed in zip(stalled, results[len(forget) :], strict=True):
            if allowed:
                self._nudge(keys.tenant, keys.session)
                nudged += 1
        return nudged


class Sweeper:
    """Runs ``Sweep.once`` every ``sweep_interval_s`` in a daemon thread, when elected."""

    def __init__(self, client: Any, scripts: Any, settings: Settings, nudge: Nudge) -> None:
        self._client = client
        self._settings = settings
        self._sweep = Sweep(client, scripts, settings, nudge)
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
                    nudged = self._sweep.once()
                    if nudged:
                        log.info("sweeper re-nudged %d stalled sessions", nudged)
            except Exception:
                log.warning("sweep failed; retrying next interval", exc_info=True)
