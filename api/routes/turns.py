"""``/v1/sessions/{session_id}/turns``: accept, read, list and cancel turns."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from api.deps import Keys, State, TurnId, Wait
from api.openapi import (
    HISTORY_FULL,
    IDEMPOTENCY_KEY_REUSED,
    MAILBOX_FULL,
    MESSAGE_TOO_LONG,
    SESSION_ACTIVE,
    SESSION_NOT_FOUND,
    TOO_MANY_WAITERS,
    TURN_FINISHED,
    TURN_NOT_FOUND,
    WEBHOOK_URL_REFUSED,
    problems,
    turn_answer,
)
from api.problems import problem
from api.schemas import TurnIn, TurnsPage
from api.state import AppState
from api.waiting import accepted_turn, answer_unless_gone
from shared.addresses import TargetRefused, parse
from shared.errors import SessionActive
from shared.intake import submit, wake
from shared.keys import SessionKeys
from shared.store import Cancelled, Turn, wait_for_turn

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
    responses={
        200: turn_answer("The turn finished within `wait` seconds.", replayable=True),
        202: turn_answer("Queued (or, without `wait`, whatever state it is in).", replayable=True),
        **problems(
            HISTORY_FULL,
            MESSAGE_TOO_LONG,
            WEBHOOK_URL_REFUSED,
            IDEMPOTENCY_KEY_REUSED,
            SESSION_ACTIVE,
            MAILBOX_FULL,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TurnIn.model_json_schema()}},
        }
    },
)
async def create_turn(
    keys: Keys,
    body: Annotated[TurnIn, Depends(turn_body)],
    state: State,
    response: Response,
    wait: Wait,
    request: Request,
    idempotency_key: IdempotencyKey = None,
    cancel_on_disconnect: Annotated[
        bool,
        Query(
            description=(
                "With `wait`: cancel the turn if the client closes the connection before "
                "the answer. Without it, a client that goes away leaves the turn running."
            )
        ),
    ] = False,
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
        await state.outbox.signing_secrets(keys.tenant, create=True)
    defaults = await state.defaults.get(keys.tenant)
    announce = await state.outbox.subscribed(keys.tenant, "turn.cancelled")
    estimate = state.quotas.turn_estimate(body.content)
    await state.quotas.reserve_tokens(keys.tenant, estimate)
    try:
        submitted = await submit(
            state.store,
            state.wake_ups,
            keys,
            input_doc={"content": body.content},
            idempotency_key=idempotency_key,
            webhook=body.webhook,
            strategy=body.strategy,
            debounce_s=body.debounce_s,
            defaults=defaults,
            announce_cancel=announce,
        )
    except BaseException as refused:
        await refund(state, keys.tenant, estimate)
        if isinstance(refused, SessionActive):
            state.metrics.rejected.inc()
        raise
    accepted = submitted.accepted
    if accepted.replayed:
        await refund(state, keys.tenant, estimate)
    if accepted.cancelled:  # their reservations go back; their webhook events are due
        for _, chars in accepted.cancelled:
            await refund(state, keys.tenant, state.quotas.turn_estimate(chars))
        await note_outbox(state, keys)
    if cancel_on_disconnect and wait > 0 and not accepted.replayed:
        answer = await answer_unless_gone(state, keys, submitted, wait, response, request)
        if answer is None:
            with suppress(RedisError):
                await asyncio.shield(cancel(state, keys, accepted.turn_id, "disconnected"))
            raise ClientDisconnect()
        return answer
    return await accepted_turn(state, keys, submitted, wait, response)


async def refund(state: AppState, tenant: str, estimate: int) -> None:
    """Give back a reservation for a turn that was not queued (or was queued before, or
    was cancelled before its model call could be counted)."""
    with suppress(RedisError):
        await state.quotas.settle_tokens(tenant, estimate, 0)


async def note_outbox(state: AppState, keys: SessionKeys) -> None:
    """A script may have written webhook events (``turn.cancelled``): have a sender look
    (the sweeper would find them too, a sweep later)."""
    with suppress(RedisError):
        await state.outbox.note(keys)


async def cancel(
    state: AppState,
    keys: SessionKeys,
    turn_id: str,
    reason: Literal["requested", "disconnected"] = "requested",
) -> Cancelled:
    """Cancel a turn and settle what that owes: its token reservation back, its
    ``turn.cancelled`` webhook event, a wake-up for turns left undrained."""
    announce = await state.outbox.subscribed(keys.tenant, "turn.cancelled")
    cancelled = await state.store.cancel(keys, turn_id, announce=announce, reason=reason)
    turn = cancelled.turn
    if cancelled.changed:
        state.metrics.cancelled.labels(reason).inc()
        if turn.kind == "message":  # a clear reserved nothing
            content = (turn.input or {}).get("content", "")
            await refund(state, keys.tenant, state.quotas.turn_estimate(content))
        await note_outbox(state, keys)
        if cancelled.orphaned:
            await wake(state.wake_ups, keys)
    return cancelled


@router.post(
    "/{turn_id}/cancel",
    response_model=Turn,
    responses=problems(TURN_NOT_FOUND, TURN_FINISHED),
)
async def cancel_turn(keys: Keys, turn_id: TurnId, state: State) -> Turn | Response:
    """Cancel a queued or running turn: nothing of it is kept (its message does not
    enter history), and the session's next turn runs at once. A running turn's model
    call is stopped within a second. Repeating the call answers the same; a turn that
    had already completed or failed is left as it was (``409 turn-finished``)."""
    cancelled = await cancel(state, keys, turn_id)
    turn = cancelled.turn
    if not cancelled.changed and turn.status != "cancelled":
        return problem(
            409,
            "Turn already finished",
            f"The turn had already {turn.status}; it was left as it was.",
            kind="turn-finished",
            turn_id=turn.id,
            turn_status=turn.status,
        )
    return turn


@router.get("", response_model=TurnsPage, responses=problems(SESSION_NOT_FOUND))
async def list_turns(
    keys: Keys,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query(description="By sequence number.")] = "asc",
    after: Annotated[
        int | None, Query(ge=0, le=2**53, description="Start after this sequence number.")
    ] = None,
) -> TurnsPage:
    """The session's turns, in sequence order (or the reverse)."""
    page = await state.store.list_turns(keys, limit=limit, order=order, after=after)
    turns: list[Turn] = page.items
    return TurnsPage(
        data=turns,
        total=page.total,
        has_more=page.has_more,
        next_after=turns[-1].seq if page.has_more and turns else None,
    )


@router.get("/{turn_id}", response_model=Turn, responses=problems(TURN_NOT_FOUND, TOO_MANY_WAITERS))
async def get_turn(keys: Keys, turn_id: TurnId, state: State, wait: Wait) -> Turn:
    """The turn; with ``wait``, long-polls until it is terminal or the time is up."""
    return await wait_for_turn(state.store, state.hub, keys, turn_id, wait)
