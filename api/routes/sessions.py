"""``/v1/sessions/{session_id}``: history and deletion."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import SessionId, State, session_keys
from api.enqueue import accept
from api.turns import accepted_turn
from shared.schemas import Message, MessagesPage, Turn

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["sessions"])


@router.get("/messages", response_model=MessagesPage)
async def list_messages(
    session_id: SessionId,
    state: State,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MessagesPage:
    """The session's history, oldest first."""
    keys = session_keys(state, session_id)
    pipe = state.redis.pipeline(transaction=True)
    pipe.lrange(keys.history, offset, offset + limit - 1)
    pipe.llen(keys.history)
    raw, total = await pipe.execute()
    return MessagesPage(
        data=[Message.model_validate(json.loads(doc)) for doc in raw],
        offset=offset,
        limit=limit,
        total=total,
        has_more=offset + len(raw) < total,
    )


@router.delete("", status_code=202, response_model=Turn)
async def delete_session(
    session_id: SessionId,
    state: State,
    response: Response,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
) -> Turn:
    """Clear the session's history after every turn accepted before this request.

    Queued as a ``clear`` turn on the session's mailbox, so it is ordered with the
    session's pending turns; turns accepted later start from an empty history.
    """
    keys = session_keys(state, session_id)
    accepted = await accept(state, keys, kind="clear", input_doc=None, idempotency_key=None)
    turn = await accepted_turn(state, keys, accepted, "clear", None, wait)
    response.headers["Location"] = f"/v1/sessions/{session_id}/turns/{turn.id}"
    if turn.is_terminal and wait > 0:
        response.status_code = 200
    return turn
