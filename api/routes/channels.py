"""``/v1/channels``: messaging channel endpoints (a tenant's bots), the platforms'
webhooks that feed them, and the replies that could not be sent (dead letters).

A platform's webhook is verified, then each message it carries is accepted as a turn of
its chat's session, with the platform's message id as the idempotency key (remembered
as long as the session lives: a platform's redeliveries become no second turn), and
the platform is answered at once; the model runs later like any turn.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import Before, PageLimit, State, Tenant
from api.openapi import (
    CHANNEL_FORBIDDEN,
    CHANNEL_NO_HANDSHAKE,
    CHANNEL_NOT_FOUND,
    CHANNEL_PAYLOAD,
    CHANNEL_REFUSED,
    CHANNEL_REFUSED_URL,
    problems,
)
from api.problems import problem
from api.routes.turns import note_outbox, refund
from api.state import AppState
from shared.addresses import TargetRefused, parse, resolve
from shared.channels.endpoints import (
    DEFAULT_DEBOUNCE_S,
    DEFAULT_FAILURE_REPLY,
    ENDPOINT_ID_PATTERN,
    PLATFORMS,
    ChannelEndpoint,
    new_endpoint_id,
    new_token,
)
from shared.channels.lane import Reply
from shared.channels.platform import ChannelName, Incoming, Malformed, Message, Refused
from shared.errors import IdempotencyConflict, SessionActive
from shared.intake import submit
from shared.settings import Strategy
from shared.store.records import ChannelRoute, now_ms

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/channels", tags=["channels"])
EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN)]
Credential = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]


CLEARABLE = {
    "unsupported_reply": None,
    "failure_reply": None,
    "api_base": None,
    "public_url": None,
    "per_second": None,
}


class ChannelSettings(BaseModel):
    """What an endpoint does with its messages; every field may be changed later."""

    model_config = ConfigDict(extra="forbid")

    api_base: str | None = Field(
        default=None,
        max_length=2048,
        description="The platform's API, if not its public one (a proxy, a test double).",
    )
    public_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Twilio: the webhook URL exactly as configured there (Twilio signs it); "
        "needed when a proxy stands between Twilio and chatlane.",
    )
    strategy: Strategy | None = Field(
        default=None, description="Double texting for the chats; by default `coalesce`."
    )
    debounce_s: float | None = Field(
        default=None, ge=0, le=60, description=f"By default {DEFAULT_DEBOUNCE_S} s."
    )
    unsupported_reply: Text | None = Field(
        default=None,
        description="Sent (once) for a message the bot cannot read: a photo, a sticker, a "
        "file. By default nothing is sent.",
    )
    failure_reply: Text | None = Field(
        default=None, description=f"Sent when a turn fails; by default {DEFAULT_FAILURE_REPLY!r}."
    )
    per_second: int | None = Field(
        default=None, ge=1, le=1000, description="The most messages the bot sends per second."
    )


class _Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TelegramCredentials(_Credentials):
    bot_token: Credential = Field(description="From @BotFather.")
    secret_token: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")] | None = Field(
        default=None,
        description="Give it to `setWebhook` as `secret_token`; made when omitted.",
    )


class SlackCredentials(_Credentials):
    bot_token: Credential = Field(description="The app's bot token, `xoxb-…`.")
    signing_secret: Credential = Field(description="Basic Information → Signing Secret.")


class WhatsAppCredentials(_Credentials):
    access_token: Credential = Field(description="A system user's access token.")
    app_secret: Credential = Field(description="App settings → Basic → App Secret.")
    phone_number_id: Credential = Field(description="The business number's id.")
    verify_token: Credential | None = Field(
        default=None, description="Give it to Meta as the Verify Token; made when omitted."
    )


class TwilioCredentials(_Credentials):
    account_sid: Credential = Field(description="`AC…`.")
    auth_token: Credential = Field(description="The account's auth token (it signs webhooks).")


class TelegramIn(ChannelSettings):
    channel: Literal["telegram"]
    credentials: TelegramCredentials


class SlackIn(ChannelSettings):
    channel: Literal["slack"]
    credentials: SlackCredentials


class WhatsAppIn(ChannelSettings):
    channel: Literal["whatsapp"]
    credentials: WhatsAppCredentials


class TwilioIn(ChannelSettings):
    channel: Literal["twilio"]
    credentials: TwilioCredentials


CREDENTIALS: dict[ChannelName, type[_Credentials]] = {
    "telegram": TelegramCredentials,
    "slack": SlackCredentials,
    "whatsapp": WhatsAppCredentials,
    "twilio": TwilioCredentials,
}
ChannelIn = Annotated[TelegramIn | SlackIn | WhatsAppIn | TwilioIn, Field(discriminator="channel")]


class ChannelPatch(ChannelSettings):
    credentials: dict[str, Credential] | None = Field(
        default=None, description="Credentials to replace (the others are kept)."
    )
    clear: list[str] = Field(
        default_factory=list,
        max_length=len(CLEARABLE),
        description="Optional settings to reset to their defaults: `unsupported_reply`, "
        "`failure_reply` (to send nothing), `api_base`, `public_url`, `per_second`.",
    )


class ChannelOut(BaseModel):
    id: str
    object: str = "channel_endpoint"
    channel: ChannelName
    webhook_url: str = Field(description="Register this URL with the platform.")
    credentials: dict[str, str] = Field(
        description="Secret ones by their last four characters; in full only in the answer "
        "that made them."
    )
    api_base: str | None
    public_url: str | None
    strategy: Strategy
    debounce_s: float
    unsupported_reply: str | None
    failure_reply: str | None
    per_second: int
    created_at: datetime

    @classmethod
    def of(cls, endpoint: ChannelEndpoint, base_url: str, *, reveal: bool = False) -> ChannelOut:
        return cls(
            id=endpoint.id,
            channel=endpoint.channel,
            webhook_url=base_url.rstrip("/") + endpoint.webhook_path,
            credentials=dict(endpoint.credentials) if reveal else endpoint.masked(),
            api_base=endpoint.api_base,
            public_url=endpoint.public_url,
            strategy=endpoint.strategy,
            debounce_s=endpoint.debounce_s,
            unsupported_reply=endpoint.unsupported_reply,
            failure_reply=endpoint.failure_reply,
            per_second=endpoint.per_second or endpoint.platform.per_second,
            created_at=datetime.fromtimestamp(endpoint.created_at / 1000, tz=UTC),
        )


class ChannelsPage(BaseModel):
    object: str = "list"
    data: list[ChannelOut]


class DeadRepliesPage(BaseModel):
    object: str = "list"
    next_before: str | None = Field(
        default=None, description="Pass as `before` for the next page (when `has_more`)."
    )
    data: list[Reply]
    has_more: bool


# -- dead letters (declared before /{endpoint_id}) ----------------------------------------


@router.get("/dead-letters", response_model=DeadRepliesPage)
async def dead_letters(
    state: State,
    tenant: Tenant,
    limit: PageLimit = 20,
    before: Before = None,
) -> DeadRepliesPage:
    """Replies that could not be sent, newest first, with the last error."""
    found, more = await state.outbox.lane.dead_letters(tenant, limit=limit, before=before)
    return DeadRepliesPage(
        data=found, has_more=more, next_before=found[-1].cursor if more and found else None
    )


@router.post(
    "/dead-letters/{reply_id}/replay",
    status_code=202,
    response_model=Reply,
    responses=problems(CHANNEL_NOT_FOUND),
)
async def replay(
    reply_id: Annotated[str, Path(max_length=300)], state: State, tenant: Tenant
) -> Reply | Response:
    """Send a dead reply again, from its first attempt, after whatever its chat was sent
    since."""
    reply = await state.outbox.lane.replay(tenant, reply_id)
    if reply is None:
        return problem(404, "Not found", f"No dead reply {reply_id}.", kind="not-found")
    return reply


# -- endpoints ------------------------------------------------------------------------------


@router.post(
    "", status_code=201, response_model=ChannelOut, responses=problems(CHANNEL_REFUSED_URL)
)
async def create_channel(
    body: ChannelIn, state: State, tenant: Tenant, request: Request
) -> ChannelOut | Response:
    """Connect a bot: the answer names the `webhook_url` to register with the platform,
    and shows the credentials in full this once (with any that were made for you)."""
    refused = await _refused_urls(state, body)
    if refused is not None:
        return refused
    platform = PLATFORMS[body.channel]
    given = body.credentials.model_dump(exclude_none=True)
    credentials = {name: new_token() for name in platform.generated} | given
    endpoint = ChannelEndpoint(
        id=new_endpoint_id(),
        tenant=tenant,
        channel=body.channel,
        credentials=credentials,
        created_at=now_ms(),
    )
    endpoint = _apply(endpoint, body, [])
    await state.outbox.directory.save(endpoint)
    return ChannelOut.of(endpoint, str(request.base_url), reveal=True)


@router.get("", response_model=ChannelsPage)
async def list_channels(state: State, tenant: Tenant, request: Request) -> ChannelsPage:
    found = await state.outbox.directory.of_tenant(tenant)
    return ChannelsPage(data=[ChannelOut.of(e, str(request.base_url)) for e in found])


@router.get("/{endpoint_id}", response_model=ChannelOut, responses=problems(CHANNEL_NOT_FOUND))
async def get_channel(
    endpoint_id: EndpointId, state: State, tenant: Tenant, request: Request
) -> ChannelOut | Response:
    endpoint = await _own(state, tenant, endpoint_id)
    if endpoint is None:
        return _no_endpoint(endpoint_id)
    return ChannelOut.of(endpoint, str(request.base_url))


@router.patch(
    "/{endpoint_id}",
    response_model=ChannelOut,
    responses=problems(CHANNEL_NOT_FOUND, CHANNEL_REFUSED_URL),
)
async def update_channel(
    endpoint_id: EndpointId, body: ChannelPatch, state: State, tenant: Tenant, request: Request
) -> ChannelOut | Response:
    """Change settings, or replace credentials (a rotated bot token); the webhook URL
    stays the same."""
    endpoint = await _own(state, tenant, endpoint_id)
    if endpoint is None:
        return _no_endpoint(endpoint_id)
    unknown = sorted(set(body.credentials or {}) - set(endpoint.credentials))
    bad_clear = sorted(set(body.clear) - set(CLEARABLE))
    if unknown or bad_clear:
        return problem(
            422,
            "Invalid request",
            f"unknown credentials {unknown}" if unknown else f"cannot clear {bad_clear}",
            kind="invalid-request",
        )
    refused = await _refused_urls(state, body)
    if refused is not None:
        return refused
    endpoint = _apply(endpoint, body, body.clear)
    if body.credentials:
        merged = endpoint.credentials | body.credentials
        try:
            CREDENTIALS[endpoint.channel].model_validate(merged)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", "credentials", *e["loc"])} for e in exc.errors()]
            ) from exc
        endpoint.credentials = merged
    await state.outbox.directory.save(endpoint)
    return ChannelOut.of(endpoint, str(request.base_url))


@router.delete("/{endpoint_id}", status_code=204, responses=problems(CHANNEL_NOT_FOUND))
async def delete_channel(endpoint_id: EndpointId, state: State, tenant: Tenant) -> Response:
    """Disconnect a bot: its webhook answers 404 (within 2 s on every API process), and
    replies still queued for its chats become dead letters."""
    if not await state.outbox.directory.remove(tenant, endpoint_id):
        return _no_endpoint(endpoint_id)
    return Response(status_code=204)


def _apply(endpoint: ChannelEndpoint, body: ChannelSettings, clear: list[str]) -> ChannelEndpoint:
    """``endpoint`` with the settings ``body`` gives, and those in ``clear`` reset."""
    given = body.model_dump(exclude_unset=True, exclude={"channel", "credentials", "clear"})
    given = {k: v for k, v in given.items() if k in ChannelSettings.model_fields}
    changes = {k: v for k, v in given.items() if v is not None}
    changes |= {name: CLEARABLE[name] for name in clear}
    return endpoint.model_copy(update=changes)


async def _own(state: AppState, tenant: str, endpoint_id: str) -> ChannelEndpoint | None:
    found = await state.outbox.directory.find(endpoint_id, fresh=True)
    return found if found is not None and found.tenant == tenant else None


async def _refused_urls(state: AppState, body: ChannelSettings) -> Response | None:
    try:
        if body.public_url is not None:
            parse(body.public_url)
        if body.api_base is not None:
            parse(body.api_base)
            if not state.settings.channel_allow_private:
                await resolve(body.api_base)
    except TargetRefused as refused:
        return problem(422, "Channel URL refused", str(refused), kind="channel-url-refused")
    return None


def _no_endpoint(endpoint_id: str) -> Response:
    return problem(404, "Not found", f"No channel endpoint {endpoint_id}.", kind="not-found")


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
        return _no_endpoint(endpoint_id)
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
        return _no_endpoint(endpoint_id)
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
    ``unsupported_reply``, once, or nothing. Returns the outcome, for the metrics."""
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
