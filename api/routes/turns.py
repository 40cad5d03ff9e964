"""``/v1/sessions/{session_id}/turns``: accept a turn, read a turn."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import SessionId, State, session_keys
from api.enqueue import accept
from api.problems import problem
from api.turns import TURN_ID_PATTERN, accepted_turn, read_turn_waiting
from shared.schemas import Turn, TurnIn

router = APIRouter(prefix="/v1/sessions/{session_id}/turns", tags=["turns"])

Wait = Annotated[
    float, Query(ge=0, le=60, description="Seconds to wait for a terminal status (0–60).")
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,255}$"),
]


async def turn_body(request: Request) -> TurnIn:
    """The JSON body, whatever the Content-Type (``curl -d`` sends a form type)."""
    try:
        return TurnIn.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


@router.post(
    "",
    status_code=202,
    response_model=Turn,
    responses={200: {"description": "The turn finished within `wait` seconds."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TurnIn.model_json_schema()}},
        }
    },
)
async def create_turn(
    session_id: SessionId,
    body: Annotated[TurnIn, Depends(turn_body)],
    state: State,
    response: Response,
    wait: Wait = 0,
    idempotency_key: IdempotencyKey = None,
) -> Turn | Response:
    """Accept a chat turn; it runs after every earlier turn of the session."""
    limit = state.settings.max_message_chars
    if len(body.content) > limit:
        return problem(
            422,
            "Message too long",
            f"content is {len(body.content)} characters; the limit is {limit}.",
            kind="message-too-long",
        )
    keys = session_keys(state, session_id)
    input_doc = {"content": body.content}
    accepted = await accept(
        state, keys, kind="message", input_doc=input_doc, idempotency_key=idempotency_key
    )
    turn = await accepted_turn(state, keys, accepted, "message", input_doc, wait)
    response.headers["Location"] = f"/v1/sessions/{session_id}/turns/{turn.id}"
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if turn.is_terminal and wait > 0:
        response.status_code = 200
    return turn


@router.get("/{turn_id}", response_model=Turn)
async def get_turn(
    session_id: SessionId,
    turn_id: Annotated[str, Path(pattern=TURN_ID_PATTERN)],
    state: State,
    wait: Wait = 0,
) -> Turn:
    """The turn; with ``wait``, long-polls until it is terminal or the time is up."""
    return await read_turn_waiting(state, session_keys(state, session_id), turn_id, wait)
