"""``/v1/sessions/{session_id}``: the session, its history, its defaults, and clearing it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import Keys, State, Wait
from api.openapi import MAILBOX_FULL, SESSION_NOT_FOUND, problems, turn_answer
from api.schemas import Defaults, Message, MessagesPage
from api.waiting import accepted_turn
from shared.intake import submit
from shared.store import Session, Turn, TurnDefaults

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["sessions"])


@router.get("", response_model=Session, responses=problems(SESSION_NOT_FOUND))
async def get_session(keys: Keys, state: State) -> Session:
    """The session's counters and timestamps; ``404`` when it has no turns."""
    return await state.store.read_session(keys)


@router.get("/messages", response_model=MessagesPage, responses=problems(SESSION_NOT_FOUND))
async def list_messages(
    keys: Keys,
    state: State,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MessagesPage:
    """The session's history, oldest first."""
    page = await state.store.messages(keys, offset=offset, limit=limit)
    return MessagesPage(
        data=[Message.model_validate(doc) for doc in page.items],
        offset=offset,
        limit=limit,
        total=page.total,
        has_more=page.has_more,
    )


@router.delete(
    "",
    status_code=202,
    response_model=Turn,
    responses={
        200: turn_answer("The clear finished within `wait` seconds.", replayable=False),
        202: turn_answer(
            "The clear is queued behind the session's pending turns.", replayable=False
        ),
        **problems(SESSION_NOT_FOUND, MAILBOX_FULL),
    },
)
async def clear_session(keys: Keys, state: State, response: Response, wait: Wait) -> Turn:
    """Clear the session's history after every turn accepted before this request.

    Queued as a ``clear`` turn on the session's mailbox, so it is ordered with the
    session's pending turns: they finish (and are answered) first, and turns accepted
    later start from an empty history. The session keeps its turns and sequence
    numbers until it expires. An unknown session is a ``404``.
    """
    submitted = await submit(state.store, state.wake_ups, keys, kind="clear", existing_only=True)
    return await accepted_turn(state, keys, submitted, wait, response)


@router.put("/defaults", response_model=Session)
async def set_session_defaults(keys: Keys, state: State, body: Defaults) -> Session:
    """Set the session's double-texting defaults: they apply to its turns that do not
    choose (a member left out or null falls back to the tenant's, then the
    deployment's). Creates the session if it was never used."""
    await state.store.set_defaults(keys, TurnDefaults(body.strategy, body.debounce_s))
    return await state.store.read_session(keys)
