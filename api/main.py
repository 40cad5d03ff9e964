"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.main:app`` serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.deps import AppState
from api.limits import BodyLimit
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import health, sessions, turns
from shared.nudge import AsyncNudger, is_redis_broker
from shared.redis import async_client
from shared.scripts import Scripts
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; clients are opened by the lifespan, not here (no I/O at build time)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings.redis_url)
        broker_url = settings.effective_broker_url
        broker = None
        if is_redis_broker(broker_url):
            broker = client if broker_url == settings.redis_url else async_client(broker_url)
        nudger = AsyncNudger(settings, broker)
        app.state.chatlane = AppState(
            settings=settings,
            redis=client,
            scripts=Scripts.register(client),
            nudger=nudger,
            metrics=metrics,
        )
        try:
            yield
        finally:
            nudger.close()
            if broker is not None and broker is not client:
                await broker.aclose()
            await client.aclose()

    metrics = ApiMetrics()
    app = FastAPI(
        title="chatlane",
        version="1",
        summary="Queue-based chat turns: isolated, exactly once, in order per session.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    problems.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(turns.router)
    app.include_router(sessions.router)
    app.include_router(health.router)
    return app


app = create_app()
