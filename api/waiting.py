"""Answering with a turn, after waiting for it if the client asked to."""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request, Response

from api.state import AppState
from shared.errors import TooManyWaiters
from shared.intake import Submitted
from shared.keys import SessionKeys
from shared.store import Turn, wait_for_turn

log = logging.getLogger(__name__)


async def accepted_turn(
    state: AppState, keys: SessionKeys, submitted: Submitted, wait_s: float, response: Response
) -> Turn:
    """The turn a ``POST`` (or ``DELETE``) that queued it answers with, with its
    ``Location``; after ``wait_s`` seconds at most for it to finish.

    Once a turn is accepted the answer is never an error: a wait that fails for any
    reason (the waiter cap, Redis, anything) answers with the turn as last known, so a
    client never retries into a duplicate.
    """
    accepted = submitted.accepted
    state.metrics.count_submitted(submitted)
    turn = accepted.turn
    if turn is None:  # a replay: the turn is whatever became of it
        turn = await state.store.read_turn(keys, accepted.turn_id)
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/sessions/{keys.session}/turns/{turn.id}"
    if wait_s > 0 and not turn.is_terminal:
        try:
            turn = await wait_for_turn(state.store, state.hub, keys, turn.id, wait_s, known=turn)
        except Exception as exc:
            if not isinstance(exc, TooManyWaiters):
                log.warning("waiting for %s failed; answering 202", turn.id, exc_info=True)
            state.metrics.waits_abandoned.inc()
    if turn.is_terminal and wait_s > 0:
        response.status_code = 200
    return turn


async def answer_unless_gone(
    state: AppState,
    keys: SessionKeys,
    submitted: Submitted,
    wait_s: float,
    response: Response,
    request: Request,
) -> Turn | None:
    """``accepted_turn``, unless the client goes away first: None then (the caller
    cancels the turn: nobody is left to read it)."""
    answering = asyncio.ensure_future(accepted_turn(state, keys, submitted, wait_s, response))
    watching = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((answering, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not answering.done() and not watching.done():  # this request itself was cancelled
            answering.cancel()
    if answering.done():
        return answering.result()
    answering.cancel()
    return None


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
