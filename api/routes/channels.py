"""``/v1/channels``: a tenant's messaging channel endpoints (its bots), and the replies
that could not be sent (dead letters). The platforms' webhooks are
``api.routes.channel_webhooks``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.channel_schemas import (
    CLEARABLE,
    ChannelIn,
    ChannelOut,
    ChannelPatch,
    ChannelSettings,
    ChannelsPage,
    DeadRepliesPage,
)
from api.deps import Before, PageLimit, State, Tenant
from api.openapi import CHANNEL_NOT_FOUND, CHANNEL_REFUSED_URL, problems
from api.problems import problem
from api.state import AppState
from shared.addresses import TargetRefused, check, parse
from shared.channels.credentials import checked, completed
from shared.channels.endpoints import (
    ENDPOINT_ID_PATTERN,
    ChannelEndpoint,
    new_endpoint_id,
)
from shared.channels.lane import Reply
from shared.store.records import now_ms

router = APIRouter(prefix="/v1/channels", tags=["channels"])
EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN)]


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
    credentials = completed(body.channel, body.credentials.model_dump(exclude_none=True))
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
        return no_endpoint(endpoint_id)
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
        return no_endpoint(endpoint_id)
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
            checked(endpoint.channel, merged)
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
        return no_endpoint(endpoint_id)
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
            await check(body.api_base, allow_private=state.settings.channel_allow_private)
    except TargetRefused as refused:
        return problem(422, "Channel URL refused", str(refused), kind="channel-url-refused")
    return None


def no_endpoint(endpoint_id: str) -> Response:
    return problem(404, "Not found", f"No channel endpoint {endpoint_id}.", kind="not-found")
