"""``/v1/sessions/{session_id}``: the session, its history, and clearing it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import SessionId, State, Wait, session_keys
from api.schemas import Message, MessagesPage
from api.waiting import accepted_turn
from shared.intake import submit
from shared.store import Session, Turn

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["sessions"])


@router.get("", response_model=Session)
async def get_session(session_id: SessionId, state: State) -> Session:
    """The session's counters and timestamps; ``404`` when it has no turns."""
    return await state.store.read_session(session_keys(state, session_id))


@router.get("/messages", response_model=MessagesPage)
async def list_messages(
    session_id: SessionId,
    state: State,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MessagesPage:
    """The session's history, oldest first."""
    page = await state.store.messages(session_keys(state, session_id), offset=offset, limit=limit)
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
    responses={200: {"description": "The clear finished within `wait` seconds."}},
)
async def clear_session(
    session_id: SessionId, state: State, response: Response, wait: Wait
) -> Turn:
    """Clear the session's history after every turn accepted before this request.

    Queued as a ``clear`` turn on the session's mailbox, so it is ordered with the
    session's pending turns: they finish (and are answered) first, and turns accepted
    later start from an empty history. The session keeps its turns and sequence
    numbers until it expires. An unknown session is a ``404``.
    """
    keys = session_keys(state, session_id)
    submitted = await submit(state.store, state.wake_ups, keys, kind="clear", existing_only=True)
    return await accepted_turn(state, keys, submitted, wait, response)
