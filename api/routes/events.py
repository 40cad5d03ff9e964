"""``…/events``: a turn's or a whole session's events as Server-Sent Events."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from api.deps import Keys, State, TurnId
from api.openapi import TOO_MANY_WAITERS, TURN_NOT_FOUND, problems
from api.sse import EVENTS_DOC, LastEventIdHeader, LastEventIdQuery, open_stream, resume_point

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["events"])


@router.get(
    "/turns/{turn_id}/events",
    response_class=StreamingResponse,
    responses={**EVENTS_DOC, **problems(TURN_NOT_FOUND, TOO_MANY_WAITERS)},
)
async def turn_events(
    keys: Keys,
    turn_id: TurnId,
    state: State,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> StreamingResponse:
    """The turn's events as they happen, ending with its `completed`, `failed` or
    `cancelled` event; a `404` problem for an unknown turn."""
    after = resume_point(last_event_id, last_event_id_query)
    turn = await state.store.read_turn(keys, turn_id)
    return await open_stream(
        state.store, state.hub, keys, after, turn=turn, idle_s=state.settings.keepalive_s
    )


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={**EVENTS_DOC, **problems(TOO_MANY_WAITERS)},
)
async def session_events(
    keys: Keys,
    state: State,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> StreamingResponse:
    """Every event of every turn of the session, in order, for as long as the client
    listens (a chat UI keeps one per conversation). A session with no turns yet is
    listened to all the same: its first turn's events arrive as they happen."""
    after = resume_point(last_event_id, last_event_id_query)
    return await open_stream(state.store, state.hub, keys, after, idle_s=state.settings.keepalive_s)
