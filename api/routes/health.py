"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from api.deps import State
from api.metrics import CONTENT_TYPE
from api.problems import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> PlainTextResponse:
    """Prometheus metrics of this API process."""
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/readyz", response_model=None)
async def readyz(state: State) -> dict[str, str] | Response:
    """Redis and the broker both answer."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), timeout=2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(state.nudger.check(), timeout=3)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", **checks}
    return problem(
        503, "Not ready", "A dependency is unreachable.", kind="not-ready", checks=checks
    )
