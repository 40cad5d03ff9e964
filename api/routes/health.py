"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from api.deps import State
from api.metrics import CONTENT_TYPE
from api.openapi import NOT_READY, problems
from api.problems import problem
from shared.errors import ConfigurationError
from shared.redis import check_eviction_policy

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> PlainTextResponse:
    """Prometheus metrics of this API process."""
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/readyz", response_model=None, responses=problems(NOT_READY))
async def readyz(state: State) -> dict[str, str] | Response:
    """Redis answers (and never evicts keys), and so does the broker."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await state.store.client.ping()
            if not state.eviction_checked:
                await check_eviction_policy(state.store.client, state.settings.redis_url)
                state.eviction_checked = True
        checks["redis"] = "ok"
    except ConfigurationError as refused:
        checks["redis"] = f"unsafe: {refused}"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(3):
            await state.wake_ups.check()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", **checks}
    return problem(
        503, "Not ready", "A dependency is unreachable or unsafe.", kind="not-ready", checks=checks
    )
