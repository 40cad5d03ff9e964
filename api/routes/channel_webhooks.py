"""``/v1/channels/{channel}/{endpoint_id}/webhook``: where the platforms send a bot's
messages.

A platform's webhook is verified, then each message it carries is accepted as a turn of
its chat's session, with the platform's message id as the idempotency key (remembered
as long as the session lives: a platform's redeliveries become no second turn), and
the platform is answered at once; the model runs later like any turn.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request, Response

from api.deps import State
from api.openapi import (
    CHANNEL_FORBIDDEN,
    CHANNEL_NO_HANDSHAKE,
    CHANNEL_NOT_FOUND,
    CHANNEL_PAYLOAD,
    CHANNEL_REFUSED,
    problems,
)
from api.problems import problem
from api.routes.channels import EndpointId, no_endpoint
from api.routes.turns import note_outbox, refund
from api.state import AppState
from shared.channels.endpoints import ChannelEndpoint
from shared.channels.lane import Reply
from shared.channels.platform import ChannelName, Incoming, Malformed, Message, Refused
from shared.errors import IdempotencyConflict, SessionActive
from shared.intake import submit
from shared.store.records import ChannelRoute, now_ms

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/channels", tags=["channels"])
# A message is remembered (its id as an idempotency key) as long as its session lives; one
# sent longer ago than most of that could be a replay chatlane can no longer tell apart.
STALE_FRACTION = 0.9


# -- the platforms' webhooks ----------------------------------------------------------------

WEBHOOK_ANSWERS = problems(CHANNEL_NOT_FOUND, CHANNEL_REFUSED, CHANNEL_FORBIDDEN, CHANNEL_PAYLOAD)


@router.post("/{channel}/{endpoint_id}/webhook", responses=WEBHOOK_ANSWERS)
async def webhook(
    channel: ChannelName, endpoint_id: EndpointId, state: State, request: Request
) -> Response:
    """Where the platform sends the bot's messages (no API key: the platform's signature
    is checked). Each message becomes a turn of its chat's session; the answer comes at
    once, and the reply goes back through the platform's API."""
    endpoint = await state.outbox.directory.find(endpoint_id)
    if endpoint is None or endpoint.channel != channel:
        return no_endpoint(endpoint_id)
    incoming = await _incoming(request)
    platform = endpoint.platform
    counted = state.metrics.channel_messages
    try:
        platform.verify(endpoint, incoming, time.time())
        parsed = platform.parse(endpoint, incoming)
    except Refused as refused:
        counted.labels(channel, "refused").inc()
        return _refusal(refused)
    except Malformed as malformed:
        counted.labels(channel, "refused").inc()
        return problem(400, "Malformed payload", str(malformed), kind="malformed-payload")
    if not parsed.messages:
        counted.labels(channel, "ignored").inc()
    for message in parsed.messages:
        counted.labels(channel, await _take(state, endpoint, message)).inc()
    return Response(parsed.answer.body, media_type=parsed.answer.media_type)


@router.get(
    "/{channel}/{endpoint_id}/webhook",
    responses=problems(CHANNEL_NOT_FOUND, CHANNEL_FORBIDDEN, CHANNEL_NO_HANDSHAKE),
)
async def handshake(
    channel: ChannelName, endpoint_id: EndpointId, state: State, request: Request
) -> Response:
    """The platform's check that the URL is the bot's (WhatsApp: `hub.challenge`)."""
    endpoint = await state.outbox.directory.find(endpoint_id)
    if endpoint is None or endpoint.channel != channel:
        return no_endpoint(endpoint_id)
    try:
        answer = endpoint.platform.handshake(endpoint, await _incoming(request))
    except Refused as refused:
        return _refusal(refused)
    return Response(answer.body, media_type=answer.media_type)


async def _incoming(request: Request) -> Incoming:
    return Incoming(
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
        query=dict(request.query_params),
    )


def _refusal(refused: Refused) -> Response:
    return problem(
        refused.status, "Request refused", refused.detail, kind="channel-request-refused"
    )


async def _take(state: AppState, endpoint: ChannelEndpoint, message: Message) -> str:
    """Accept one platform message as a turn of its chat's session (once, however often
    the platform delivers it); a message the bot cannot read gets the endpoint's
    ``unsupported_reply``, once, or nothing. A message older than chatlane remembers
    messages is acknowledged and dropped. Returns the outcome, for the metrics."""
    horizon_s = state.settings.session_ttl_s * STALE_FRACTION
    if message.sent_at is not None and time.time() - message.sent_at > horizon_s:
        return "stale"  # older than what chatlane remembers of it: maybe a replay
    session = endpoint.session_for(message.chat, message.thread, message.via)
    keys = state.store.keys(endpoint.tenant, session)
    if message.text is None:
        if endpoint.unsupported_reply:
            reply = Reply(
                id=f"{endpoint.channel}:{message.id}:1",
                tenant=endpoint.tenant,
                session=session,
                endpoint_id=endpoint.id,
                chat=message.chat,
                thread=message.thread,
                via=message.via,
                text=endpoint.unsupported_reply,
                created_at=now_ms(),
            )
            await state.outbox.lane.reply_once(keys, message.id, reply)
        return "unanswerable"
    content = message.text[: state.settings.max_message_chars]
    estimate = state.quotas.turn_estimate(content)
    await state.quotas.reserve_tokens(endpoint.tenant, estimate)
    route = ChannelRoute(
        endpoint_id=endpoint.id,
        chat=message.chat,
        thread=message.thread,
        via=message.via,
        message=message.id,
    )
    announce = await state.outbox.subscribed(endpoint.tenant, "turn.cancelled")
    try:
        submitted = await submit(
            state.store,
            state.wake_ups,
            keys,
            input_doc={"content": content},
            idempotency_key=f"{endpoint.channel}:{message.id}",
            strategy=endpoint.strategy,
            debounce_s=endpoint.debounce_s,
            channel=route,
            idempotency_ttl_s=state.settings.session_ttl_s,
            announce_cancel=announce,
        )
    except (IdempotencyConflict, SessionActive) as dropped:
        # The same message id with other settings (the endpoint changed meanwhile) is
        # still the same message; strategy "reject" drops what arrives while busy.
        await refund(state, endpoint.tenant, estimate)
        log.info("channel message %s not queued: %s", message.id, type(dropped).__name__)
        return "redelivered" if isinstance(dropped, IdempotencyConflict) else "rejected"
    except BaseException:
        await refund(state, endpoint.tenant, estimate)
        raise
    state.metrics.count_submitted(submitted)
    accepted = submitted.accepted
    if accepted.replayed:
        await refund(state, endpoint.tenant, estimate)
    if accepted.cancelled:
        for _, chars in accepted.cancelled:
            await refund(state, endpoint.tenant, state.quotas.turn_estimate(chars))
        await note_outbox(state, keys)
    return "redelivered" if accepted.replayed else "accepted"
