"""The FastAPI application: ``create_app(settings)``; ``python -m api.server`` serves it
(``uvicorn api.main:app`` too, without the HTTP server's own limits)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import cors, openapi, problems
from api.guards import RequestGuards
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import (
    channel_webhooks,
    channels,
    dead_turns,
    defaults,
    events,
    health,
    page,
    sessions,
    turns,
    webhooks,
)
from api.state import AppState
from shared import heap
from shared.apikeys import KeyRing
from shared.errors import ConfigurationError
from shared.quotas import Quotas
from shared.redis import async_client, check_eviction_policy, pubsub_client
from shared.settings import Settings
from shared.store import EventHub, SessionStore
from shared.store.dead_turns import DeadTurns
from shared.store.defaults import TenantDefaults
from shared.store.outbox import Outbox
from shared.wakeup import open_wake_ups

log = logging.getLogger("chatlane.api")

START_CHECK_TIMEOUT_S = 3.0


async def eviction_checked(client: object, settings: Settings) -> bool:
    """Refuse to start on a Redis that evicts keys; True once checked (False when Redis
    did not answer: ``/readyz`` checks again)."""
    if settings.allow_eviction:
        return True
    try:
        async with asyncio.timeout(START_CHECK_TIMEOUT_S):
            await check_eviction_policy(client, settings.redis_url)
    except ConfigurationError as refused:
        log.error("chatlane api: %s", refused)
        raise
    except Exception as exc:
        log.warning("Redis did not answer at start (%s); /readyz will check it", exc)
        return False
    return True


async def announce_access(state: AppState) -> None:
    """Say at start who may call this API (the anonymous mode is easy to miss)."""
    mode = state.settings.auth
    if mode == "open":
        log.warning("CHATLANE_AUTH=open: every client is the anonymous tenant, with no API key")
        return
    try:
        async with asyncio.timeout(START_CHECK_TIMEOUT_S):
            configured = await state.keyring.configured()
    except Exception:
        return  # Redis did not answer; requests are checked one by one all the same
    if mode == "auto" and not configured:
        log.warning(
            "no API keys: serving one anonymous tenant (%s) to loopback clients only; "
            "`chatlane keys create --tenant NAME` makes a key and then every request needs one",
            state.settings.default_tenant,
        )
    else:
        log.info("API keys required")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; clients are opened by the lifespan, not here (no I/O at build time)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings.redis_url, max_connections=512, name="chatlane-api")
        hub_client = pubsub_client(settings.redis_url, name="chatlane-api-hub")
        try:
            checked = await eviction_checked(client, settings)
            hub = EventHub(hub_client, max_watchers=settings.max_waiters)
            await hub.start()
            metrics.waiters.set_function(lambda: hub.watching)
            try:
                async with open_wake_ups(settings, client) as wake_ups:
                    store = SessionStore(client, settings)
                    app.state.chatlane = AppState(
                        settings=settings,
                        store=store,
                        hub=hub,
                        wake_ups=wake_ups,
                        metrics=metrics,
                        outbox=Outbox(store),
                        keyring=KeyRing(client, settings.key_prefix),
                        quotas=Quotas(client, settings),
                        defaults=TenantDefaults(client, settings.key_prefix),
                        dead_turns=DeadTurns(client, settings.key_prefix),
                        eviction_checked=checked,
                    )
                    await announce_access(app.state.chatlane)
                    if settings.settle_heap:
                        heap.settle()
                    yield
            finally:
                await hub.close()
        finally:
            await hub_client.aclose()
            await client.aclose()

    metrics = ApiMetrics()
    app = FastAPI(
        title="chatlane",
        version="1",
        summary="Queue-based chat turns: isolated, exactly once, in order per session.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
    )
    app.state.metrics = metrics
    problems.install(app)
    # Outermost last: metrics see every answer, CORS headers go on refusals too.
    app.add_middleware(
        RequestGuards,
        max_bytes=settings.max_body_bytes,
        body_timeout_s=settings.http_body_timeout_s,
    )
    allowed_origins = cors.origins(settings.cors_origins)
    if allowed_origins:
        app.add_middleware(cors.ProblemCORS, allow_origins=allowed_origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(dead_turns.router)
    app.include_router(turns.router)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(channels.router)
    app.include_router(channel_webhooks.router)
    app.include_router(defaults.router)
    app.include_router(health.router)
    app.include_router(page.router)
    openapi.install(app, settings)
    return app


app = create_app()
