"""Taking a turn in: record it on the session's mailbox, then wake a worker if needed."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from shared.keys import SessionKeys
from shared.settings import Strategy
from shared.store import Accepted, SessionStore, TurnDefaults
from shared.store.records import ChannelRoute
from shared.wakeup import WakeUps

log = logging.getLogger(__name__)

WAKE_UP_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Submitted:
    accepted: Accepted
    woke: bool | None
    """True: a wake-up was sent; False: sending it failed; None: none was needed."""


async def submit(
    store: SessionStore,
    wake_ups: WakeUps,
    keys: SessionKeys,
    *,
    kind: Literal["message", "clear"] = "message",
    input_doc: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    existing_only: bool = False,
    webhook: str | None = None,
    strategy: Strategy | None = None,
    debounce_s: float | None = None,
    defaults: TurnDefaults | None = None,
    announce_cancel: bool = False,
    channel: ChannelRoute | None = None,
    idempotency_ttl_s: int | None = None,
) -> Submitted:
    """Accept a turn and wake a worker unless one already holds the session.

    A worker holding the lock checks the mailbox in the same script that would release
    it, so skipping the wake-up then loses nothing. A wake-up that cannot be sent is
    logged, not raised: the turn is safely queued (an error now would invite a retry
    that queues it twice), and the sweeper sends another. Raises what
    ``SessionStore.accept`` raises; then nothing was queued.
    """
    accepted = await store.accept(
        keys,
        kind=kind,
        input_doc=input_doc,
        idempotency_key=idempotency_key,
        existing_only=existing_only,
        webhook=webhook,
        strategy=strategy,
        debounce_s=debounce_s,
        defaults=defaults,
        announce_cancel=announce_cancel,
        channel=channel,
        idempotency_ttl_s=idempotency_ttl_s,
    )
    if accepted.lock_held:
        return Submitted(accepted, None)
    return Submitted(accepted, await wake(wake_ups, keys))


async def wake(wake_ups: WakeUps, keys: SessionKeys) -> bool:
    """Send a worker a wake-up for the session; False (logged) when it could not be sent:
    the sweeper sends another."""
    try:
        async with asyncio.timeout(WAKE_UP_TIMEOUT_S):
            await wake_ups.send(keys.tenant, keys.session)
    except Exception:
        log.warning(
            "wake-up for %s not sent; the sweeper will send one", keys.member, exc_info=True
        )
        return False
    return True
