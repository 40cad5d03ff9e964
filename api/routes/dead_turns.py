"""``/v1/turns/dead-letters``: a tenant's poison turns, failed because every worker that
started them died on them (``attempts_exhausted``); their sessions have moved on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from api.deps import Before, PageLimit, State, Tenant
from api.openapi import NO_DEAD_TURN, problems
from api.problems import problem
from shared.store.dead_turns import DeadTurn

router = APIRouter(prefix="/v1/turns/dead-letters", tags=["turns"])


class DeadTurnsPage(BaseModel):
    object: str = "list"
    next_before: str | None = Field(
        default=None, description="Pass as `before` for the next page (when `has_more`)."
    )
    data: list[DeadTurn]
    has_more: bool


@router.get("", response_model=DeadTurnsPage)
async def dead_turns(
    state: State, tenant: Tenant, limit: PageLimit = 20, before: Before = None
) -> DeadTurnsPage:
    """Poison turns, newest first: each failed after its workers died on it
    `CHATLANE_MAX_TURN_ATTEMPTS` times. To try one again, send its input as a new turn."""
    found, more = await state.dead_turns.page(tenant, limit=limit, before=before)
    return DeadTurnsPage(
        data=found, has_more=more, next_before=found[-1].cursor if more and found else None
    )


@router.delete("/{turn_id}", status_code=204, responses=problems(NO_DEAD_TURN))
async def forget_dead_turn(
    turn_id: Annotated[str, Path(max_length=200)], state: State, tenant: Tenant
) -> Response:
    """Take a poison turn off the list (the turn itself stays, failed)."""
    if await state.dead_turns.take(tenant, turn_id) is None:
        return problem(404, "Not found", f"No dead turn {turn_id}.", kind="not-found")
    return Response(status_code=204)
