"""Reading turns and waiting for them, for the routes."""

from __future__ import annotations

from api.deps import AppState
from shared.errors import TurnNotFound
from shared.events import wait_for_final
from shared.keys import SessionKeys
from shared.schemas import Turn

TURN_ID_PATTERN = r"^turn_[0-9a-f]{24}$"


async def read_turn(state: AppState, keys: SessionKeys, turn_id: str) -> Turn:
    record = await state.redis.hgetall(keys.turn(turn_id))
    if not record:
        raise TurnNotFound(f"No turn {turn_id} in session {keys.session}.")
    return Turn.from_record(record)


async def read_turn_waiting(
    state: AppState, keys: SessionKeys, turn_id: str, wait_s: float
) -> Turn:
    """The turn, after waiting up to ``wait_s`` seconds for it to reach a terminal status."""
    turn = await read_turn(state, keys, turn_id)
    wait_s = min(wait_s, state.settings.max_wait_s)
    if turn.is_terminal or wait_s <= 0:
        return turn
    if await wait_for_final(state.redis, keys, turn_id, wait_s):
        return await read_turn(state, keys, turn_id)
    return turn
