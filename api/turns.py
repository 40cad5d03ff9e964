"""Reading turns and waiting for them, for the routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.deps import AppState
from shared.errors import TurnNotFound
from shared.events import wait_for_final
from shared.keys import SessionKeys
from shared.mailbox import Accepted
from shared.schemas import Turn

TURN_ID_PATTERN = r"^turn_[0-9a-f]{24}$"


async def read_turn(state: AppState, keys: SessionKeys, turn_id: str) -> Turn:
    record = await state.redis.hgetall(keys.turn(turn_id))
    if not record:
        raise TurnNotFound(f"No turn {turn_id} in session {keys.session}.")
    return Turn.from_record(record)


def fresh_turn(
    keys: SessionKeys, accepted: Accepted, kind: str, input_doc: dict[str, Any] | None
) -> Turn:
    """The record ``accept.lua`` just wrote, rebuilt without reading it back."""
    assert accepted.seq is not None
    return Turn(
        id=accepted.turn_id,
        session_id=keys.session,
        kind=kind,
        seq=accepted.seq,
        status="queued",
        attempt=0,
        input=input_doc,
        created_at=datetime.fromtimestamp(accepted.created_ms / 1000, tz=UTC),
    )


async def accepted_turn(
    state: AppState,
    keys: SessionKeys,
    accepted: Accepted,
    kind: str,
    input_doc: dict[str, Any] | None,
    wait_s: float,
) -> Turn:
    """The turn as the accepting request answers it, after waiting if asked to.

    A fresh turn is not read back: it is exactly what ``accept.lua`` wrote, and its
    final event carries everything the finished turn adds.
    """
    if accepted.replayed:
        return await read_turn_waiting(state, keys, accepted.turn_id, wait_s)
    return await _wait(state, keys, fresh_turn(keys, accepted, kind, input_doc), wait_s)


async def read_turn_waiting(
    state: AppState, keys: SessionKeys, turn_id: str, wait_s: float
) -> Turn:
    """The turn, after waiting up to ``wait_s`` seconds for it to reach a terminal status."""
    return await _wait(state, keys, await read_turn(state, keys, turn_id), wait_s)


async def _wait(state: AppState, keys: SessionKeys, turn: Turn, wait_s: float) -> Turn:
    wait_s = min(wait_s, state.settings.max_wait_s)
    if turn.is_terminal or wait_s <= 0:
        return turn
    final = await wait_for_final(state.redis, keys, turn.id, wait_s)
    return turn.finished_as(final) if final is not None else turn
