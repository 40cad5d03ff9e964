"""Who is calling: the tenant a request acts for, from its API key alone.

A key is read from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, never from
the URL (where proxies and browser histories keep it). Without keys (``CHATLANE_AUTH``
``auto`` and none ever made) the one anonymous tenant is served to loopback clients
only. Every authenticated request spends one from the tenant's request budget.
"""

from __future__ import annotations

from fastapi import Request

from api.state import AppState, state_of
from shared.addresses import is_loopback
from shared.errors import NotAuthenticated

NO_KEYS_TRUSTED_S = 1.0  # "no key exists yet" is asked again after this long

# Query parameters that look like a credential: refused, so a key never sits in a URL.
CREDENTIAL_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "access_token", "token", "x-api-key", "auth"}
)


def presented_key(request: Request) -> str | None:
    """The key the request carries in its headers; raises when it carries one ambiguously."""
    if CREDENTIAL_PARAMS.intersection(k.lower() for k in request.query_params):
        raise NotAuthenticated(
            "API keys are accepted only in the Authorization or X-API-Key header, never in the URL."
        )
    headers = request.headers
    authorization = headers.getlist("authorization")
    api_key = headers.getlist("x-api-key")
    if len(authorization) + len(api_key) > 1:
        raise NotAuthenticated("Send one API key, in one header.")
    if api_key:
        return api_key[0].strip()
    if authorization:
        scheme, _, credentials = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise NotAuthenticated("Authorization must read `Bearer <API key>`.")
        return credentials.strip()
    return None


async def tenant_of(request: Request, state: AppState) -> str:
    """The tenant a request acts for; raises ``NotAuthenticated`` (a 401) otherwise."""
    settings = state.settings
    key = presented_key(request)
    if key is not None:
        tenant = await state.keyring.tenant_of(key)
        if tenant is None:
            raise NotAuthenticated("The API key is not valid (unknown, malformed or revoked).")
        return tenant
    if settings.auth == "open":
        return settings.default_tenant
    if settings.auth == "keys" or await state.keyring.configured(max_age_s=NO_KEYS_TRUSTED_S):
        raise NotAuthenticated("An API key is required.")
    client = request.client.host if request.client else None
    if is_loopback(client):
        return settings.default_tenant
    raise NotAuthenticated(
        "An API key is required: without API keys this server serves loopback clients only "
        "(create one with `chatlane keys create --tenant NAME`)."
    )


async def authenticate(request: Request) -> str:
    """The caller's tenant, once its request has been counted against its budget."""
    state = state_of(request)
    tenant = await tenant_of(request, state)
    await state.quotas.spend_request(tenant)
    return tenant
