"""``/v1/sessions/{session_id}/turns``: accept a turn, read a turn, list turns."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import SessionId, State, TurnId, Wait, resolve_tenant, session_keys
from api.problems import problem
from api.schemas import TurnIn, TurnsPage
from api.waiting import accepted_turn
from shared.addresses import TargetRefused, parse
from shared.intake import submit
from shared.store import Turn, wait_for_turn

router = APIRouter(prefix="/v1/sessions/{session_id}/turns", tags=["turns"])

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
    wait: Wait,
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
    if body.webhook is not None:
        try:
            parse(body.webhook)
        except TargetRefused as refused:
            return problem(422, "Webhook URL refused", str(refused), kind="webhook-url-refused")
        await state.outbox.signing_secrets(resolve_tenant(state), create=True)
    keys = session_keys(state, session_id)
    submitted = await submit(
        state.store,
        state.wake_ups,
        keys,
        input_doc={"content": body.content},
        idempotency_key=idempotency_key,
        webhook=body.webhook,
    )
    return await accepted_turn(state, keys, submitted, wait, response)


@router.get("", response_model=TurnsPage)
async def list_turns(
    session_id: SessionId,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query(description="By sequence number.")] = "asc",
    after: Annotated[
        int | None, Query(ge=0, le=2**53, description="Start after this sequence number.")
    ] = None,
) -> TurnsPage:
    """The session's turns, in sequence order (or the reverse)."""
    page = await state.store.list_turns(
        session_keys(state, session_id), limit=limit, order=order, after=after
    )
    turns: list[Turn] = page.items
    return TurnsPage(
        data=turns,
        total=page.total,
        has_more=page.has_more,
        next_after=turns[-1].seq if page.has_more and turns else None,
    )


@router.get("/{turn_id}", response_model=Turn)
async def get_turn(session_id: SessionId, turn_id: TurnId, state: State, wait: Wait) -> Turn:
    """The turn; with ``wait``, long-polls until it is terminal or the time is up."""
    keys = session_keys(state, session_id)
    return await wait_for_turn(state.store, state.hub, keys, turn_id, wait)
