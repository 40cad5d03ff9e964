"""Accepting a turn: one Lua script records and queues it, then a worker is nudged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import NoScriptError

from api.deps import AppState
from shared.keys import GlobalKeys, SessionKeys
from shared.mailbox import AcceptCall, Accepted

log = logging.getLogger(__name__)

NUDGE_TIMEOUT_S = 2.0


async def accept(
    state: AppState,
    keys: SessionKeys,
    *,
    kind: str,
    input_doc: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Accepted:
    """Record the turn (``queued``) on the session mailbox and wake a worker if needed.

    The session is marked active *before* the script runs, so the sweeper always knows
    of a session that may hold pending turns. The nudge is skipped when a worker holds
    the session lock: that worker checks the mailbox before it releases (same script).
    Raises ``IdempotencyConflict`` or ``MailboxFull``; then nothing was queued. Costs one
    round trip, plus one to the broker when a worker must be woken.
    """
    settings = state.settings
    call = AcceptCall.build(
        settings, keys, kind=kind, input_doc=input_doc, idempotency_key=idempotency_key
    )
    script = state.scripts.accept
    pipe = state.redis.pipeline(transaction=False)
    call.queue_on(pipe, script, GlobalKeys(settings.key_prefix).active, keys.member)
    try:
        reply = (await pipe.execute())[-1]
    except NoScriptError:  # the server restarted and lost its script cache
        reply = await script(keys=call.keys, args=call.args)
    accepted = call.parse(reply)
    if accepted.replayed:
        state.metrics.replayed.inc()
    else:
        state.metrics.accepted.labels(kind).inc()
    if accepted.needs_nudge:
        try:
            await asyncio.wait_for(state.nudger.nudge(keys.tenant, keys.session), NUDGE_TIMEOUT_S)
        except Exception:
            # The turn is already safely queued: answering an error now would invite a
            # retry that queues it twice. The sweeper re-sends the wake-up.
            log.warning(
                "wake-up for %s not sent; the sweeper will retry", keys.member, exc_info=True
            )
            state.metrics.wakeups_failed.inc()
        else:
            state.metrics.wakeups.inc()
    return accepted
