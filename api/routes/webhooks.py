"""``/v1/webhooks``: where a tenant's turn events are sent, the secrets that sign them, and
the deliveries that gave up (dead letters), which can be sent again."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Before, PageLimit, State, Tenant
from api.openapi import NOT_FOUND, WEBHOOK_URL_REFUSED, problems
from api.problems import problem
from api.state import AppState
from shared.addresses import TargetRefused, check
from shared.signing import is_secret, new_secret
from shared.store.outbox import EVENTS, Delivery, Endpoint, EventName, Secret, rotated
from shared.store.records import now_ms

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
EndpointId = Annotated[str, Path(pattern=r"^ep_[0-9a-f]{16}$")]


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, examples=["https://example.com/chatlane"])
    events: list[EventName] = Field(default_factory=lambda: list(EVENTS), min_length=1)
    secret: str | None = Field(
        default=None, description="A `whsec_` secret of yours; one is made when omitted."
    )


class EndpointOut(BaseModel):
    id: str
    url: str
    events: list[EventName]
    disabled: bool
    disabled_reason: str | None
    created_at: datetime
    secret: str | None = Field(
        default=None, description="Shown once: when the endpoint is made or its secret rotated."
    )

    @classmethod
    def of(cls, endpoint: Endpoint, secret: str | None = None) -> EndpointOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=endpoint.events,
            disabled=endpoint.disabled,
            disabled_reason=endpoint.disabled_reason,
            created_at=datetime.fromtimestamp(endpoint.created_at / 1000, tz=UTC),
            secret=secret,
        )


class SecretsOut(BaseModel):
    """Secrets that verify signatures: the newest first; older ones sign until they
    expire, so receivers can switch without missing a delivery."""

    secrets: list[Secret]


class DeadLettersPage(BaseModel):
    object: str = "list"
    next_before: str | None = Field(
        default=None, description="Pass as `before` for the next page (when `has_more`)."
    )
    data: list[Delivery]
    has_more: bool


async def checked_url(state: AppState, url: str) -> Response | None:
    """A 422 problem when ``url`` may not receive webhooks, else None."""
    try:
        await check(url, allow_private=state.settings.webhook_allow_private)
    except TargetRefused as refused:
        return problem(422, "Webhook URL refused", str(refused), kind="webhook-url-refused")
    return None


@router.get("/signing-secret", response_model=SecretsOut)
async def signing_secret(state: State, tenant: Tenant) -> SecretsOut:
    """The secrets that sign deliveries to a turn's own `webhook` URL."""
    return SecretsOut(secrets=await state.outbox.signing_secrets(tenant, create=True))


@router.post("/signing-secret/rotate", response_model=SecretsOut)
async def rotate_signing_secret(state: State, tenant: Tenant) -> SecretsOut:
    """A new signing secret; the old ones keep signing for `CHATLANE_WEBHOOK_ROTATION_S`."""
    grace = state.settings.webhook_rotation_s * 1000
    return SecretsOut(secrets=await state.outbox.rotate_signing_secret(tenant, grace))


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointOut,
    responses=problems(WEBHOOK_URL_REFUSED),
)
async def create_endpoint(body: EndpointIn, state: State, tenant: Tenant) -> EndpointOut | Response:
    """Send this tenant's `turn.completed` / `turn.failed` events to a URL."""
    refused = await checked_url(state, body.url)
    if refused is not None:
        return refused
    if body.secret is not None and not is_secret(body.secret):
        return problem(
            422, "Invalid secret", "A secret is whsec_ and base64.", kind="invalid-request"
        )
    secret = body.secret or new_secret()
    endpoint = Endpoint(
        id=f"ep_{secrets.token_hex(8)}",
        url=body.url,
        events=sorted(set(body.events)),
        created_at=now_ms(),
        secrets=[Secret(value=secret)],
    )
    await state.outbox.save_endpoint(tenant, endpoint)
    return EndpointOut.of(endpoint, secret)


@router.get("/endpoints", response_model=list[EndpointOut])
async def list_endpoints(state: State, tenant: Tenant) -> list[EndpointOut]:
    endpoints = await state.outbox.endpoints(tenant, fresh=True)
    return [EndpointOut.of(e) for e in endpoints]


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, responses=problems(NOT_FOUND))
async def get_endpoint(
    endpoint_id: EndpointId, state: State, tenant: Tenant
) -> EndpointOut | Response:
    endpoint = await state.outbox.endpoint(tenant, endpoint_id)
    if endpoint is None:
        return _no_endpoint(endpoint_id)
    return EndpointOut.of(endpoint)


@router.delete("/endpoints/{endpoint_id}", status_code=204, responses=problems(NOT_FOUND))
async def delete_endpoint(endpoint_id: EndpointId, state: State, tenant: Tenant) -> Response:
    if not await state.outbox.remove_endpoint(tenant, endpoint_id):
        return _no_endpoint(endpoint_id)
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response_model=EndpointOut,
    responses=problems(NOT_FOUND),
)
async def rotate_endpoint_secret(
    endpoint_id: EndpointId, state: State, tenant: Tenant
) -> EndpointOut | Response:
    """A new secret for the endpoint; the old one keeps signing for a while."""
    endpoint = await state.outbox.endpoint(tenant, endpoint_id)
    if endpoint is None:
        return _no_endpoint(endpoint_id)
    secret = new_secret()
    grace_ms = state.settings.webhook_rotation_s * 1000
    endpoint.secrets = rotated(endpoint.secrets, secret, now_ms(), grace_ms)
    await state.outbox.save_endpoint(tenant, endpoint)
    return EndpointOut.of(endpoint, secret)


@router.post(
    "/endpoints/{endpoint_id}/enable", response_model=EndpointOut, responses=problems(NOT_FOUND)
)
async def enable_endpoint(
    endpoint_id: EndpointId, state: State, tenant: Tenant
) -> EndpointOut | Response:
    """Switch an endpoint back on (after a `410` switched it off)."""
    endpoint = await state.outbox.endpoint(tenant, endpoint_id)
    if endpoint is None:
        return _no_endpoint(endpoint_id)
    endpoint.disabled, endpoint.disabled_reason = False, None
    await state.outbox.save_endpoint(tenant, endpoint)
    return EndpointOut.of(endpoint)


@router.get("/dead-letters", response_model=DeadLettersPage)
async def dead_letters(
    state: State,
    tenant: Tenant,
    limit: PageLimit = 20,
    before: Before = None,
) -> DeadLettersPage:
    """Deliveries that gave up, newest first."""
    found, more = await state.outbox.dead_letters(tenant, limit=limit, before=before)
    return DeadLettersPage(
        data=found, has_more=more, next_before=found[-1].cursor if more and found else None
    )


@router.post(
    "/dead-letters/{delivery_id}/replay",
    status_code=202,
    response_model=Delivery,
    responses=problems(NOT_FOUND),
)
async def replay(
    delivery_id: Annotated[str, Path(max_length=200)], state: State, tenant: Tenant
) -> Delivery | Response:
    """Send a dead letter again, from its first attempt (with the same `webhook-id`)."""
    delivery = await state.outbox.replay(tenant, delivery_id)
    if delivery is None:
        return problem(404, "Not found", f"No dead letter {delivery_id}.", kind="not-found")
    return delivery


def _no_endpoint(endpoint_id: str) -> Response:
    return problem(404, "Not found", f"No webhook endpoint {endpoint_id}.", kind="not-found")
